//! CPU reference speed, each op beside a baseline:
//! - GEMM: the row-blocked parallel `matmul` against one `matrixmultiply`
//!   call on one thread and (at a small size) a plain triple loop;
//! - attention: the attention op against a naive per-head scalar loop;
//! - attention_step: a training step's attention (forward + backward, with
//!   dropout) through the tiled f32 pass against the GEMM reference, at
//!   the sequence lengths of the presets' streams;
//! - layer_norm: the layer norm forward and backward and the residual add
//!   with its norm (`add_layer_norm`) over the small preset's token rows
//!   (2048 × 192); their baseline is the same command at an earlier commit
//!   (criterion's `--save-baseline` / `--baseline`);
//! - random: Philox words, dropout and GELU + dropout over an FFN
//!   activation of the small preset (2048 × 768).
//!
//! Shapes are the model's: the fused QKV projection and the MATB streams of
//! the `small` and `paper` presets (MODEL.md §9). Run: `cargo bench --bench cpu_ops`.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nemesis::autograd::Tape;
use nemesis::backend::cpu::attention::{self, AttnDropout, AttnShape};
use nemesis::backend::cpu::gemm::{gemm, matmul, MatRef};
use nemesis::backend::cpu::{attention_tiled, fused, layer_norm};
use nemesis::ops::AttentionOptions;
use nemesis::rng::RngStream;
use nemesis::tensor::SeqLayout;
use nemesis::Tensor;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    RngStream::new(seed, 0).fill_uniform(0, &mut v);
    v.iter_mut().for_each(|x| *x = 2.0 * *x - 1.0);
    v
}

fn naive_matmul(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f32;
            for p in 0..k {
                s += a[i * k + p] * b[j * k + p];
            }
            c[i * n + j] = s;
        }
    }
}

fn bench_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_x_wT");
    // (name, rows, in, out): y = x·Wᵀ as in `linear`.
    let shapes = [
        ("small_qkv", 2048, 192, 576),
        ("small_ffn1", 2048, 192, 768),
        ("paper_qkv", 4096, 768, 2304),
    ];
    for (name, m, k, n) in shapes {
        let (a, w) = (values(m * k, 1), values(n * k, 2));
        let mut y = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.bench_function(BenchmarkId::new("parallel_blocks", name), |bch| {
            bch.iter(|| {
                matmul(
                    1.0,
                    MatRef::rm(&a, m, k),
                    MatRef::rm(&w, n, k).t(),
                    0.0,
                    black_box(&mut y),
                )
            })
        });
        g.bench_function(BenchmarkId::new("one_thread", name), |bch| {
            bch.iter(|| {
                gemm(
                    1.0,
                    MatRef::rm(&a, m, k),
                    MatRef::rm(&w, n, k).t(),
                    0.0,
                    black_box(&mut y),
                    n,
                    1,
                )
            })
        });
        if m * k * n <= 2048 * 192 * 576 {
            g.bench_function(BenchmarkId::new("naive_loop", name), |bch| {
                bch.iter(|| naive_matmul(&a, &w, black_box(&mut y), m, k, n))
            });
        }
    }
    g.finish();
}

/// One (sequence, head) at a time with scalar loops: the obvious baseline.
fn naive_attention(qkv: &[f32], layout: &SeqLayout, heads: usize, e: usize, out: &mut [f32]) {
    let dh = e / heads;
    let l = layout.len;
    let scale = 1.0 / (dh as f32).sqrt();
    let mut p = vec![0.0f32; l];
    for s in 0..layout.num_seqs() {
        for h in 0..heads {
            for i in 0..l {
                let qi = layout.row(s, i) * 3 * e + h * dh;
                for (j, pj) in p.iter_mut().enumerate() {
                    let kj = layout.row(s, j) * 3 * e + e + h * dh;
                    *pj = (0..dh).map(|c| qkv[qi + c] * qkv[kj + c]).sum::<f32>() * scale;
                }
                let m = p.iter().cloned().fold(f32::MIN, f32::max);
                let z: f32 = p
                    .iter_mut()
                    .map(|x| {
                        *x = (*x - m).exp();
                        *x
                    })
                    .sum();
                let o = layout.row(s, i) * e + h * dh;
                out[o..o + dh].iter_mut().for_each(|v| *v = 0.0);
                for (j, &pj) in p.iter().enumerate() {
                    let vj = layout.row(s, j) * 3 * e + 2 * e + h * dh;
                    for c in 0..dh {
                        out[o + c] += pj / z * qkv[vj + c];
                    }
                }
            }
        }
    }
}

fn bench_attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention_fwd");
    // (name, layout, heads, E): batch 1 of each preset's masked encoder.
    let cases = [
        ("small_spatial_T8_L16", SeqLayout::spatial(1, 8, 16), 6, 192),
        ("small_depth_T8_L16", SeqLayout::depth(1, 8, 16), 6, 192),
        ("paper_spatial_T16_L64", SeqLayout::spatial(1, 16, 64), 8, 768),
        ("paper_depth_T16_L64", SeqLayout::depth(1, 16, 64), 8, 768),
    ];
    for (name, layout, heads, e) in cases {
        let rows = layout.num_rows();
        let qkv = Tensor::from_vec(values(rows * 3 * e, 3), [rows, 3 * e]).expect("sizes agree");
        let opts = AttentionOptions {
            layout,
            heads,
            dropout: None,
        };
        let flops = 4 * layout.num_seqs() * layout.len * layout.len * e;
        g.throughput(Throughput::Elements(flops as u64));
        g.bench_function(BenchmarkId::new("op", name), |bch| {
            bch.iter(|| {
                let tape = Tape::inference();
                black_box(
                    tape.attention(&tape.constant(qkv.clone()), &opts)
                        .expect("valid shapes"),
                );
            })
        });
        let raw = qkv.to_vec::<f32>().expect("f32");
        let mut out = vec![0.0f32; rows * e];
        g.bench_function(BenchmarkId::new("naive_loop", name), |bch| {
            bch.iter(|| naive_attention(&raw, &layout, heads, e, black_box(&mut out)))
        });
    }
    g.finish();
}

fn bench_attention_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention_step");
    // (name, layout, heads, E): the training step's streams, batch 4 at
    // small (the decoder's 8 × 64 grid), batch 1 at paper (16 × 256), and a
    // length between.
    let cases = [
        ("small_spatial_L64", SeqLayout::spatial(4, 8, 64), 6, 192),
        ("small_depth_L8", SeqLayout::depth(4, 8, 64), 6, 192),
        ("small_encoder_depth_L4", SeqLayout::depth(4, 4, 32), 6, 192),
        ("paper_depth_L16", SeqLayout::depth(1, 16, 256), 8, 768),
        ("mid_spatial_L128", SeqLayout::spatial(1, 16, 128), 8, 768),
        ("paper_spatial_L256", SeqLayout::spatial(1, 16, 256), 8, 768),
    ];
    for (name, layout, heads, e) in cases {
        let rows = layout.num_rows();
        let qkv = values(rows * 3 * e, 3);
        let grad = values(rows * e, 4);
        let sh = AttnShape {
            layout,
            heads,
            width: e,
        };
        let drop = AttnDropout {
            p: 0.1,
            rng: RngStream::new(5, 6),
        };
        let (mut y, mut d) = (vec![0.0f32; rows * e], vec![0.0f32; rows * 3 * e]);
        g.bench_function(BenchmarkId::new("gemm_reference", name), |bch| {
            bch.iter(|| {
                attention::forward_plain_into(&qkv, &sh, Some(&drop), &mut y);
                attention::backward_plain_into(&grad, &qkv, &sh, Some(&drop), &mut d);
                black_box((&y, &d));
            })
        });
        g.bench_function(BenchmarkId::new("tiled", name), |bch| {
            bch.iter(|| {
                let saved = attention_tiled::forward_into(&qkv, &sh, Some(&drop), &mut y);
                attention_tiled::backward_into(&grad, &qkv, &sh, Some(&drop), &saved, &mut d);
                black_box((&y, &d));
            })
        });
    }
    g.finish();
}

fn bench_layer_norm(c: &mut Criterion) {
    let mut g = c.benchmark_group("layer_norm");
    let (rows, cols) = (2048, 192);
    let (x, a, gy) = (
        values(rows * cols, 11),
        values(rows * cols, 12),
        values(rows * cols, 13),
    );
    let (w, b) = (values(cols, 14), values(cols, 15));
    g.throughput(Throughput::Elements((rows * cols) as u64));
    g.bench_function("forward", |bch| {
        bch.iter(|| black_box(layer_norm::forward(&x, &w, &b, cols, 1e-6)))
    });
    let (_, stats) = layer_norm::forward(&x, &w, &b, cols, 1e-6);
    g.bench_function("backward", |bch| {
        bch.iter(|| black_box(layer_norm::backward(&gy, &x, &w, &stats, cols)))
    });
    g.bench_function("add_layer_norm", |bch| {
        bch.iter(|| black_box(fused::add_layer_norm(&x, &a, 0.5, &w, &b, cols, 1e-6)))
    });
    g.finish();
}

fn bench_random(c: &mut Criterion) {
    let mut g = c.benchmark_group("random");
    let n = 2048 * 768;
    let x = values(n, 7);
    let rng = RngStream::new(8, 9);
    g.throughput(Throughput::Elements(n as u64));
    let mut words = vec![0u32; n];
    g.bench_function("philox_fill_bits_one_thread", |bch| {
        bch.iter(|| rng.fill_bits(0, black_box(&mut words)))
    });
    g.bench_function("dropout", |bch| bch.iter(|| black_box(fused::dropout(&x, 0.1, rng))));
    g.bench_function("gelu_dropout", |bch| {
        bch.iter(|| black_box(fused::gelu_dropout(&x, 0.1, rng)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench_gemm, bench_attention, bench_attention_step, bench_layer_norm, bench_random
}
criterion_main!(benches);
