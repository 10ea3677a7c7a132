//! The CUDA kernels, run on the CPU by the emulator, against the CPU reference.

mod common;

use common::{rand_values, rel_err};
use nemesis::autograd::Tape;
use nemesis::backend::cpu::elementwise;
use nemesis::backend::emu;
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
        let y = emu::gelu_forward(&x);
        assert!(rel_err(&to64(&y), &to64(&elementwise::gelu(&x))) < 1e-6, "n {n}");
        let dx = emu::gelu_backward(&g, &x).unwrap();
        assert!(
            rel_err(&to64(&dx), &to64(&elementwise::gelu_backward(&g, &x))) < 1e-6,
            "n {n}"
        );
    }
    assert!(emu::gelu_backward(&[1.0], &[1.0, 2.0]).is_err());
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
        assert_eq!(emu::dropout_forward(&x, p, rng), want, "n {n} p {p}");
    }
}

#[test]
fn gate_mix_matches() {
    let (x, y) = (f32s(333, 4, 1.0), f32s(333, 5, 1.0));
    let got = emu::gate_mix_forward(&x, &y, 0.3).unwrap();
    assert_eq!(got, elementwise::gate_mix(&x, &y, 0.3f32));
}

#[test]
fn layer_norm_forward_matches() {
    for (rows, cols) in [(1, 1), (3, 7), (5, 64), (2, 97), (4, 768)] {
        let x: Vec<f32> = f32s(rows * cols, 6, 3.0).iter().map(|v| v + 1.5).collect();
        let w: Vec<f32> = f32s(cols, 7, 1.0).iter().map(|v| v + 1.0).collect();
        let b = f32s(cols, 8, 1.0);
        let (y, mean, rstd) = emu::layer_norm_forward(&x, &w, &b, cols, 1e-5).unwrap();
        let (want, stats) = nemesis::backend::cpu::layer_norm::forward(&x, &w, &b, cols, 1e-5);
        assert!(rel_err(&to64(&y), &to64(&want)) < 1e-5, "{rows}×{cols}");
        assert!(rel_err(&to64(&mean), &to64(&stats.mean)) < 1e-5);
        assert!(rel_err(&to64(&rstd), &to64(&stats.rstd)) < 1e-5);
    }
    assert!(emu::layer_norm_forward(&[1.0; 6], &[1.0; 4], &[0.0; 4], 4, 1e-5).is_err());
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
            let got =
                emu::superpatch_input(&hu, b, c.superpatch_size, c.patch_size, mask.ids_keep(), sigma, noise).unwrap();
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
    let e = emu::superpatch_input(&[0; 8], 1, [2, 2, 2], [1, 1, 1], &[8], 0.0, RngStream::new(0, 0)).unwrap_err();
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
        let (out, lse) = emu::attention_forward(&qkv, layout, heads, e, dropout).unwrap();
        let grad = emu::attention_backward(&qkv, &out, &dout, &lse, layout, heads, e, dropout).unwrap();

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
