//! The CUDA kernels, run on the CPU by the emulator, against the CPU reference.

mod common;

use common::{rand_values, rel_err};
use nemesis::autograd::Tape;
use nemesis::backend::cpu::elementwise;
use nemesis::backend::emu::EmuDevice;
use nemesis::backend::launch;

fn dev() -> EmuDevice {
    EmuDevice::new()
}
use nemesis::data::hu_window;
use nemesis::model::{add_noise, patchify, DualMask, ModelConfig};
use nemesis::rng::RngStream;
use nemesis::Tensor;

fn f32s(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    rand_values(n, seed).iter().map(|&v| v as f32 * scale).collect()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn gelu_forward_and_backward() {
    for n in [1, 63, 64, 1000, 4097] {
        let x = f32s(n, 1, 4.0);
        let g = f32s(n, 2, 1.0);
        let y = launch::gelu_forward(&dev(), &x).unwrap();
        assert!(rel_err(&to64(&y), &to64(&elementwise::gelu(&x))) < 1e-6, "n {n}");
        let dx = launch::gelu_backward(&dev(), &g, &x).unwrap();
        assert!(
            rel_err(&to64(&dx), &to64(&elementwise::gelu_backward(&g, &x))) < 1e-6,
            "n {n}"
        );
    }
    assert!(launch::gelu_backward(&dev(), &[1.0], &[1.0, 2.0]).is_err());
}

#[test]
fn dropout_mask_is_the_cpu_mask_exactly() {
    for (n, p) in [(1usize, 0.5), (777, 0.1), (5000, 0.3)] {
        let x = f32s(n, 3, 1.0);
        let rng = RngStream::new(11, 22);
        let tape = Tape::inference();
        let want = tape
            .dropout(&tape.constant(Tensor::from_vec(x.clone(), [n]).unwrap()), p, rng)
            .unwrap()
            .value()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(
            launch::dropout_forward(&dev(), &x, p, rng).unwrap(),
            want,
            "n {n} p {p}"
        );
    }
}

#[test]
fn gate_mix_matches() {
    let (x, y) = (f32s(333, 4, 1.0), f32s(333, 5, 1.0));
    let got = launch::gate_mix_forward(&dev(), &x, &y, 0.3).unwrap();
    assert_eq!(got, elementwise::gate_mix(&x, &y, 0.3f32));
}

#[test]
fn layer_norm_forward_matches() {
    for (rows, cols) in [(1, 1), (3, 7), (5, 64), (2, 97), (4, 768)] {
        let x: Vec<f32> = f32s(rows * cols, 6, 3.0).iter().map(|v| v + 1.5).collect();
        let w: Vec<f32> = f32s(cols, 7, 1.0).iter().map(|v| v + 1.0).collect();
        let b = f32s(cols, 8, 1.0);
        let (y, mean, rstd) = launch::layer_norm_forward(&dev(), &x, &w, &b, cols, 1e-5).unwrap();
        let (want, stats) = nemesis::backend::cpu::layer_norm::forward(&x, &w, &b, cols, 1e-5);
        assert!(rel_err(&to64(&y), &to64(&want)) < 1e-5, "{rows}×{cols}");
        assert!(rel_err(&to64(&mean), &to64(&stats.mean)) < 1e-5);
        assert!(rel_err(&to64(&rstd), &to64(&stats.rstd)) < 1e-5);
    }
    assert!(launch::layer_norm_forward(&dev(), &[1.0; 6], &[1.0; 4], &[0.0; 4], 4, 1e-5).is_err());
}

#[test]
fn fused_superpatch_input_equals_window_noise_patchify_gather() {
    // Tiny preset (32³, 8³ patches) and an odd-shaped config, batch 2.
    let odd = ModelConfig {
        superpatch_size: [6, 10, 12],
        patch_size: [2, 5, 3],
        ..ModelConfig::tiny()
    };
    for c in [ModelConfig::tiny(), odd] {
        let b = 2;
        let voxels = b * c.voxels();
        let hu: Vec<i16> = rand_values(voxels, 9)
            .iter()
            .map(|v| (v * 1200.0 - 200.0) as i16)
            .collect();
        let mask = DualMask::sample(&c, b, RngStream::new(1, 2));
        for sigma in [0.0, 0.03] {
            let noise = RngStream::new(5, 6);
            let got = launch::superpatch_input(
                &dev(),
                &hu,
                b,
                c.superpatch_size,
                c.patch_size,
                mask.ids_keep(),
                sigma,
                noise,
            )
            .unwrap();
            // The reference path: window, add_noise, patchify, gather.
            let windowed: Vec<f32> = hu.iter().map(|&v| hu_window(v as f32)).collect();
            let [d, h, w] = c.superpatch_size;
            let x = Tensor::from_vec(windowed, [b, 1, d, h, w]).unwrap();
            let noisy = add_noise(&x, sigma, noise).unwrap();
            let tape = Tape::inference();
            let patches = tape.constant(patchify(&c, &noisy).unwrap());
            let want = tape
                .gather_rows(&patches, mask.ids_keep())
                .unwrap()
                .value()
                .to_vec::<f32>()
                .unwrap();
            assert_eq!(got.len(), want.len());
            assert!(
                got == want,
                "{:?} σ {sigma}: the fused kernel differs from the reference",
                c.superpatch_size
            );
        }
    }
    let e = launch::superpatch_input(
        &dev(),
        &[0; 8],
        1,
        [2, 2, 2],
        [1, 1, 1],
        &[8],
        0.0,
        RngStream::new(0, 0),
    )
    .unwrap_err();
    assert!(e.to_string().contains("out of range"));
}

#[test]
fn attention_forward_and_backward_match_the_cpu_op() {
    use nemesis::autograd::ParamStore;
    use nemesis::ops::{AttentionOptions, AttnDropout};
    use nemesis::tensor::SeqLayout;
    let cases = [
        (SeqLayout::spatial(2, 3, 5), 2, 12, None),
        (SeqLayout::depth(2, 3, 5), 2, 12, None),
        (SeqLayout::depth(1, 4, 3), 3, 4, Some(0.2)),
        (SeqLayout::contiguous(3, 7), 1, 96, Some(0.1)),
        (SeqLayout::contiguous(2, 1), 2, 3, None),
    ];
    for (k, (layout, heads, dh, p)) in cases.into_iter().enumerate() {
        let e = heads * dh;
        let rows = layout.num_rows();
        let qkv = f32s(rows * 3 * e, 20 + k as u64, 1.5);
        let dout = f32s(rows * e, 40 + k as u64, 1.0);
        let rng = RngStream::new(k as u64, 9);
        let dropout = p.map(|p| (p, rng));
        let (out, lse) = launch::attention_forward(&dev(), &qkv, layout, heads, e, dropout).unwrap();
        let grad = launch::attention_backward(&dev(), &qkv, &out, &dout, &lse, layout, heads, e, dropout).unwrap();

        let tape = Tape::new();
        let x = tape.input(Tensor::from_vec(qkv.clone(), [rows, 3 * e]).unwrap(), true);
        let opts = AttentionOptions {
            layout,
            heads,
            dropout: p.map(|p| AttnDropout { p, rng }),
        };
        let y = tape.attention(&x, &opts).unwrap();
        let want_out = y.value().to_vec::<f32>().unwrap();
        let mut store = ParamStore::new();
        let g = tape
            .backward_with(&y, Tensor::from_vec(dout.clone(), [rows, e]).unwrap(), &mut store)
            .unwrap();
        let want_grad = g.get(&x).unwrap().to_vec::<f32>().unwrap();
        let fe = rel_err(&to64(&out), &to64(&want_out));
        let ge = rel_err(&to64(&grad), &to64(&want_grad));
        assert!(fe < 1e-5, "case {k}: forward {fe:e}");
        assert!(ge < 1e-4, "case {k}: backward {ge:e}");
    }
}

#[test]
fn layer_norm_backward_matches() {
    for (rows, cols) in [(1, 1), (3, 7), (6, 64), (2, 97)] {
        let x: Vec<f32> = f32s(rows * cols, 60, 2.0).iter().map(|v| v + 0.5).collect();
        let w: Vec<f32> = f32s(cols, 61, 1.0).iter().map(|v| v + 1.0).collect();
        let b = f32s(cols, 62, 1.0);
        let g = f32s(rows * cols, 63, 1.0);
        let (_, stats) = nemesis::backend::cpu::layer_norm::forward(&x, &w, &b, cols, 1e-5);
        let (dx, dw, db) = launch::layer_norm_backward(&dev(), &g, &x, &w, &stats.mean, &stats.rstd, cols).unwrap();
        let (wx, ww, wb) = nemesis::backend::cpu::layer_norm::backward(&g, &x, &w, &stats, cols);
        if cols > 1 {
            assert!(rel_err(&to64(&dx), &to64(&wx)) < 1e-5, "{rows}×{cols} dx");
        }
        assert!(rel_err(&to64(&dw), &to64(&ww)) < 1e-5, "{rows}×{cols} dw");
        assert!(rel_err(&to64(&db), &to64(&wb)) < 1e-5, "{rows}×{cols} db");
    }
}

#[test]
fn token_gather_and_mask_scatter_with_positions() {
    let c = ModelConfig::tiny();
    let (b, n, e) = (2, c.num_tokens(), 64);
    let mask = DualMask::sample(&c, b, RngStream::new(3, 3));
    let nv = mask.visible();
    let x = f32s(b * n * e, 70, 1.0);
    let got = launch::gather_rows(&dev(), &x, mask.ids_keep(), b, n, e).unwrap();
    let tape = Tape::inference();
    let xv = tape.constant(Tensor::from_vec(x.clone(), [b, n, e]).unwrap());
    assert_eq!(
        got,
        tape.gather_rows(&xv, mask.ids_keep())
            .unwrap()
            .value()
            .to_vec::<f32>()
            .unwrap()
    );

    let latent = f32s(b * nv * e, 71, 1.0);
    let token = f32s(e, 72, 1.0);
    let pe: Vec<f32> = nemesis::model::positional_table(&c).iter().map(|&v| v as f32).collect();
    let s = 0.7f32;
    let got = launch::scatter_mask_pe(&dev(), &latent, mask.ids_keep(), &token, &pe, s, b, n).unwrap();
    let lat = tape.constant(Tensor::from_vec(latent, [b, nv, e]).unwrap());
    let fill = tape.constant(Tensor::from_vec(token, [e]).unwrap());
    let y = tape.scatter_rows(&lat, mask.ids_keep(), n, &fill).unwrap();
    let scaled = tape
        .scale(&tape.constant(Tensor::from_vec(pe, [n, e]).unwrap()), s as f64)
        .unwrap();
    let want = tape.add(&y, &scaled).unwrap().value().to_vec::<f32>().unwrap();
    assert!(rel_err(&to64(&got), &to64(&want)) < 1e-7);
    assert!(launch::gather_rows(&dev(), &x, &[n, 0], 2, n, e).is_err());
}

#[test]
fn adamw_and_grad_norm_match_the_cpu_optimizer() {
    use nemesis::autograd::ParamStore;
    use nemesis::train::{grad_norm, AdamW, AdamWConfig};
    let n = 1001;
    let w0 = f32s(n, 80, 1.0);
    let g = f32s(n, 81, 0.5);
    assert!(
        (launch::grad_sq_sum(&dev(), &g).unwrap().sqrt() / {
            let mut s = ParamStore::new();
            let id = s.add("w", Tensor::from_vec(w0.clone(), [n]).unwrap()).unwrap();
            s.accumulate_grad(id, Tensor::from_vec(g.clone(), [n]).unwrap())
                .unwrap();
            grad_norm(&s).unwrap()
        } - 1.0)
            .abs()
            < 1e-6
    );
    let cfg = AdamWConfig {
        betas: (0.9, 0.95),
        eps: 1e-8,
        weight_decay: 0.05,
    };
    let mut store = ParamStore::new();
    let id = store.add("w", Tensor::from_vec(w0.clone(), [n]).unwrap()).unwrap();
    let mut opt = AdamW::new(cfg, &store);
    let (mut w, mut m, mut v) = (w0.clone(), vec![0.0f32; n], vec![0.0f32; n]);
    for t in 1..=3u64 {
        store.zero_grad();
        store
            .accumulate_grad(id, Tensor::from_vec(g.clone(), [n]).unwrap())
            .unwrap();
        opt.update(&mut store, 1e-3).unwrap();
        launch::adamw_step(
            &dev(),
            &mut w,
            &g,
            &mut m,
            &mut v,
            1e-3,
            (0.9, 0.95),
            1e-8,
            0.05,
            t,
            1.0,
        )
        .unwrap();
    }
    let want = store.get(id).value.to_vec::<f32>().unwrap();
    assert!(rel_err(&to64(&w), &to64(&want)) < 1e-6);
    assert!(rel_err(&to64(&m), &to64(&opt.m[0])) < 1e-6);
}

#[test]
fn the_device_trait_on_the_emulator() {
    use nemesis::device::{Arg, DeviceApi, DeviceVec, Gemm, Launch};
    let d = dev();
    // Copies round-trip; a freed buffer is an error, not a crash.
    let v = DeviceVec::from_slice(&d, &[1.0f32, 2.0, 3.0]).unwrap();
    assert_eq!(v.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
    let gone = d.alloc(8).unwrap();
    d.free(&gone);
    assert!(d.upload(&gone, &[0u8; 8]).is_err());
    assert!(d.upload(&v.buf, &[0u8; 64]).is_err(), "larger than the buffer");
    // GEMM with and without transposes against the CPU.
    let (m, n, k) = (5, 7, 3);
    let a = f32s(m * k, 90, 1.0);
    let b = f32s(k * n, 91, 1.0);
    let bias = f32s(n, 92, 1.0);
    let round = |v: f32| half::bf16::from_f32(v).to_f32() as f64;
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        for (with_bias, bf16) in [(false, false), (true, false), (true, true)] {
            let (da, db, dbias) = (
                DeviceVec::from_slice(&d, &a).unwrap(),
                DeviceVec::from_slice(&d, &b).unwrap(),
                DeviceVec::from_slice(&d, &bias).unwrap(),
            );
            let dc = DeviceVec::from_slice(&d, &vec![1.0f32; m * n]).unwrap();
            let g = Gemm {
                alpha: 2.0,
                beta: 0.5,
                bf16,
                ..Gemm::new(m, n, k, ta, tb)
            };
            d.gemm(&g, &da.buf, &db.buf, &dc.buf, with_bias.then_some(&dbias.buf))
                .unwrap();
            // The expected product from the operands as the GEMM must see them.
            let op = |v: f32| if bf16 { round(v) } else { v as f64 };
            let at = |i: usize, p: usize| op(if ta { a[p * m + i] } else { a[i * k + p] });
            let bt = |p: usize, j: usize| op(if tb { b[j * k + p] } else { b[p * n + j] });
            let want: Vec<f64> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    let bias = if with_bias { bias[j] as f64 } else { 0.0 };
                    2.0 * (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f64>() + 0.5 + bias
                })
                .collect();
            let got = to64(&dc.to_vec::<f32>().unwrap());
            assert!(rel_err(&got, &want) < 1e-6, "{ta} {tb} bias {with_bias} bf16 {bf16}");
        }
    }
    // Launch by name checks the kernel, the number of arguments and their kinds.
    let cfg = Launch::linear(1, 32, 0);
    let e = d.launch("no_such_kernel", &cfg, &[]).unwrap_err().to_string();
    assert!(e.contains("no_such_kernel"), "{e}");
    let e = d.launch("gelu_forward", &cfg, &[v.arg()]).unwrap_err().to_string();
    assert!(e.contains("takes 3 arguments"), "{e}");
    let e = d
        .launch("gelu_forward", &cfg, &[Arg::I32(1), v.arg(), Arg::U64(3)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("argument 0"), "{e}");
}
