//! Forward values against numbers computed independently (by hand or with
//! the closed forms below), and the attention op against a naive per-head loop.

mod common;

use approx::assert_relative_eq;
use common::{rand_tensor, rel_err};
use nemesis::autograd::Tape;
use nemesis::ops::{psnr, AttentionOptions, AttnDropout};
use nemesis::rng::RngStream;
use nemesis::tensor::SeqLayout;
use nemesis::{DType, Tensor};

fn input(tape: &Tape, v: &[f64], shape: &[usize], dtype: DType) -> nemesis::Var {
    tape.constant(Tensor::from_f64_slice(v, shape.to_vec(), dtype).unwrap())
}

#[test]
fn gelu_known_values() {
    // x·Φ(x), Φ the standard normal CDF; values from Python's math.erf.
    let x = [-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0];
    let want = [
        -0.004049694094890,
        -0.158655253931457,
        -0.154268769362993,
        0.0,
        0.345731230637007,
        0.841344746068543,
        1.954499736103642,
    ];
    for dtype in [DType::F64, DType::F32] {
        let tape = Tape::inference();
        let y = tape
            .gelu(&input(&tape, &x, &[7], dtype))
            .unwrap()
            .value()
            .to_f64_vec()
            .unwrap();
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-6 };
        for (a, b) in y.iter().zip(want) {
            assert_relative_eq!(*a, b, epsilon = tol, max_relative = tol);
        }
    }
}

#[test]
fn softmax_known_values() {
    let tape = Tape::inference();
    let x = input(&tape, &[1.0, 2.0, 3.0, 1000.0, 1000.0, 1000.0], &[2, 3], DType::F64);
    let y = tape.softmax(&x).unwrap().value().to_f64_vec().unwrap();
    let want = [
        0.090030573170380,
        0.244728471054798,
        0.665240955774822,
        1.0 / 3.0,
        1.0 / 3.0,
        1.0 / 3.0,
    ];
    for (a, b) in y.iter().zip(want) {
        assert_relative_eq!(*a, b, max_relative = 1e-12);
    }
}

#[test]
fn layer_norm_known_values() {
    // Row [1, 2, 3, 4]: mean 2.5, biased variance 1.25.
    let tape = Tape::inference();
    let x = input(&tape, &[1.0, 2.0, 3.0, 4.0], &[1, 4], DType::F64);
    let w = input(&tape, &[1.0, 2.0, 0.5, -1.0], &[4], DType::F64);
    let b = input(&tape, &[0.0, 0.1, 0.2, 0.3], &[4], DType::F64);
    let y = tape.layer_norm(&x, &w, &b, 1e-5).unwrap().value().to_f64_vec().unwrap();
    let rstd = 1.0 / (1.25f64 + 1e-5).sqrt();
    let want = [
        -1.5 * rstd,
        2.0 * -0.5 * rstd + 0.1,
        0.5 * 0.5 * rstd + 0.2,
        -1.5 * rstd + 0.3,
    ];
    for (a, b) in y.iter().zip(want) {
        assert_relative_eq!(*a, b, max_relative = 1e-12);
    }
    // Without the affine part the row has mean 0 and variance 1 (up to eps).
    let ones = input(&tape, &[1.0; 4], &[4], DType::F32);
    let zeros = input(&tape, &[0.0; 4], &[4], DType::F32);
    let x32 = input(&tape, &[10.0, 10.5, 9.0, 12.25], &[1, 4], DType::F32);
    let y = tape
        .layer_norm(&x32, &ones, &zeros, 0.0)
        .unwrap()
        .value()
        .to_f64_vec()
        .unwrap();
    let mean: f64 = y.iter().sum::<f64>() / 4.0;
    let var: f64 = y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0;
    assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "mean {mean} var {var}");
}

#[test]
fn sigmoid_gate_mean_values() {
    let tape = Tape::inference();
    let a = tape.sigmoid(&input(&tape, &[0.5], &[], DType::F64)).unwrap();
    assert_relative_eq!(
        a.value().scalar_value().unwrap(),
        0.622459331201855,
        max_relative = 1e-12
    );
    let x = input(&tape, &[1.0, 2.0], &[2], DType::F64);
    let y = input(&tape, &[3.0, -2.0], &[2], DType::F64);
    let m = tape.gate_mix(&x, &y, &a).unwrap().value().to_f64_vec().unwrap();
    let av = 0.622459331201855;
    assert_relative_eq!(m[0], (1.0 - av) + 3.0 * av, max_relative = 1e-12);
    assert_relative_eq!(m[1], 2.0 * (1.0 - av) - 2.0 * av, max_relative = 1e-12);
    let g = input(&tape, &[1., 2., 3., 4., 5., 6.], &[2, 3], DType::F32);
    assert_eq!(
        tape.mean(&g, 0).unwrap().value().to_f64_vec().unwrap(),
        vec![2.5, 3.5, 4.5]
    );
    assert_eq!(tape.mean(&g, 1).unwrap().value().to_f64_vec().unwrap(), vec![2.0, 5.0]);
}

#[test]
fn gather_scatter_values() {
    let tape = Tape::inference();
    // One item, 4 rows of width 2.
    let x = input(&tape, &[0., 1., 10., 11., 20., 21., 30., 31.], &[1, 4, 2], DType::F32);
    let g = tape.gather_rows(&x, &[3, 1]).unwrap();
    assert_eq!(g.shape().dims(), [1, 2, 2]);
    assert_eq!(g.value().to_f64_vec().unwrap(), vec![30., 31., 10., 11.]);
    let fill = input(&tape, &[-1., -2.], &[2], DType::F32);
    let s = tape.scatter_rows(&g, &[0, 2], 4, &fill).unwrap();
    assert_eq!(
        s.value().to_f64_vec().unwrap(),
        vec![30., 31., -1., -2., 10., 11., -1., -2.]
    );
}

#[test]
fn masked_mse_and_psnr_values() {
    let tape = Tape::inference();
    // Two tokens of two values; token errors 1 and 4 (means of squares).
    let pred = input(&tape, &[1.0, 1.0, 2.0, 2.0], &[1, 2, 2], DType::F64);
    let target = input(&tape, &[0.0, 0.0, 0.0, 0.0], &[1, 2, 2], DType::F64);
    let only_second = Tensor::from_f64_slice(&[0.0, 1.0], [1, 2], DType::F64).unwrap();
    let l = tape.masked_mse(&pred, &target, &only_second).unwrap();
    assert_eq!(l.shape().rank(), 0);
    assert_relative_eq!(l.value().scalar_value().unwrap(), 4.0);
    let none = Tensor::zeros([1, 2], DType::F64);
    let l = tape.masked_mse(&pred, &target, &none).unwrap();
    assert_relative_eq!(l.value().scalar_value().unwrap(), 2.5);
    // PSNR of a uniform error of 0.1: −10·log10(0.01 + 1e−8).
    let a = Tensor::full(0.6, [2, 3], DType::F32);
    let b = Tensor::full(0.5, [2, 3], DType::F32);
    assert_relative_eq!(
        psnr(&a, &b).unwrap(),
        -10.0 * (0.01f64 + 1e-8).log10(),
        max_relative = 1e-5
    );
}

#[test]
fn dropout_keeps_the_expected_fraction_and_scales() {
    let tape = Tape::inference();
    let n = 100_000;
    let x = tape.constant(Tensor::full(1.0, [n], DType::F32));
    let y = tape
        .dropout(&x, 0.1, RngStream::new(42, 3))
        .unwrap()
        .value()
        .to_f64_vec()
        .unwrap();
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    assert!((kept - 0.9).abs() < 5e-3, "kept {kept}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
    let again = tape
        .dropout(&x, 0.1, RngStream::new(42, 3))
        .unwrap()
        .value()
        .to_f64_vec()
        .unwrap();
    assert_eq!(y, again, "same stream, same mask");
}

/// Multi-head attention written the slow, obvious way, one (sequence, head)
/// at a time with explicit loops over scalars.
fn naive_attention(qkv: &[f64], layout: &SeqLayout, heads: usize, e: usize, dropout: Option<&AttnDropout>) -> Vec<f64> {
    let dh = e / heads;
    let l = layout.len;
    let mut out = vec![0.0; layout.num_rows() * e];
    for s in 0..layout.num_seqs() {
        for h in 0..heads {
            let q = |i: usize, c: usize| qkv[layout.row(s, i) * 3 * e + h * dh + c];
            let k = |i: usize, c: usize| qkv[layout.row(s, i) * 3 * e + e + h * dh + c];
            let v = |i: usize, c: usize| qkv[layout.row(s, i) * 3 * e + 2 * e + h * dh + c];
            for i in 0..l {
                let scores: Vec<f64> = (0..l)
                    .map(|j| (0..dh).map(|c| q(i, c) * k(j, c)).sum::<f64>() / (dh as f64).sqrt())
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
                for (j, &score) in scores.iter().enumerate() {
                    let mut p = (score - m).exp() / z;
                    if let Some(d) = dropout {
                        let u = d.rng.uniform((((s * heads + h) * l + i) * l + j) as u64) as f64;
                        p = if u >= d.p { p / (1.0 - d.p) } else { 0.0 };
                    }
                    for c in 0..dh {
                        out[layout.row(s, i) * e + h * dh + c] += p * v(j, c);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_naive_loop() {
    let cases = [
        (SeqLayout::spatial(2, 3, 5), 2, 12),
        (SeqLayout::depth(2, 3, 5), 2, 12),
        (SeqLayout::depth(1, 4, 2), 1, 96),
        (SeqLayout::spatial(1, 2, 7), 3, 4),
        (SeqLayout::contiguous(2, 16), 4, 3),
    ];
    for (k, (layout, heads, dh)) in cases.into_iter().enumerate() {
        let e = heads * dh;
        for dropout in [None, Some(0.2)] {
            let d = dropout.map(|p| AttnDropout {
                p,
                rng: RngStream::new(k as u64, 5),
            });
            let opts = AttentionOptions {
                layout,
                heads,
                dropout: d,
            };
            let qkv = rand_tensor([layout.num_rows(), 3 * e], 40 + k as u64, DType::F64);
            let want = naive_attention(&qkv.to_f64_vec().unwrap(), &layout, heads, e, d.as_ref());
            for dtype in [DType::F64, DType::F32] {
                let tape = Tape::inference();
                let got = tape
                    .attention(&tape.constant(qkv.to_dtype(dtype).unwrap()), &opts)
                    .unwrap()
                    .value()
                    .to_f64_vec()
                    .unwrap();
                let err = rel_err(&got, &want);
                let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
                assert!(err < tol, "case {k} {dtype:?} dropout {dropout:?}: error {err:e}");
            }
        }
    }
}

#[test]
fn depth_stream_equals_spatial_attention_on_the_transposed_grid() {
    // The strided layout must give exactly what a physical (T, L) transpose
    // followed by contiguous attention gives.
    let (b, tt, l, heads, dh) = (2, 4, 3, 2, 6);
    let e = heads * dh;
    let qkv = rand_tensor([b * tt * l, 3 * e], 77, DType::F64).to_f64_vec().unwrap();
    let mut transposed = vec![0.0; qkv.len()];
    for bi in 0..b {
        for t in 0..tt {
            for li in 0..l {
                let src = (bi * tt * l + t * l + li) * 3 * e;
                let dst = (bi * tt * l + li * tt + t) * 3 * e;
                transposed[dst..dst + 3 * e].copy_from_slice(&qkv[src..src + 3 * e]);
            }
        }
    }
    let tape = Tape::inference();
    let run = |data: &[f64], layout: SeqLayout| {
        let x = tape.constant(Tensor::from_f64_slice(data, [b * tt * l, 3 * e], DType::F64).unwrap());
        let opts = AttentionOptions {
            layout,
            heads,
            dropout: None,
        };
        tape.attention(&x, &opts).unwrap().value().to_f64_vec().unwrap()
    };
    let strided = run(&qkv, SeqLayout::depth(b, tt, l));
    let contiguous = run(&transposed, SeqLayout::contiguous(b * l, tt));
    for bi in 0..b {
        for t in 0..tt {
            for li in 0..l {
                let a = (bi * tt * l + t * l + li) * e;
                let c = (bi * tt * l + li * tt + t) * e;
                assert_eq!(strided[a..a + e], contiguous[c..c + e]);
            }
        }
    }
}

#[test]
fn linear_and_matmul_values() {
    let tape = Tape::inference();
    let x = input(&tape, &[1., 2., 3., 4., 5., 6.], &[2, 3], DType::F32);
    let w = input(&tape, &[1., 0., -1., 0.5, 0.5, 0.5], &[2, 3], DType::F32);
    let b = input(&tape, &[10., 20.], &[2], DType::F32);
    let y = tape.linear(&x, &w, Some(&b)).unwrap().value().to_f64_vec().unwrap();
    assert_eq!(y, vec![1. - 3. + 10., 3. + 20., 4. - 6. + 10., 7.5 + 20.]);
    let a = input(&tape, &[1., 2., 3., 4.], &[1, 2, 2], DType::F64);
    let c = input(&tape, &[0., 1., 1., 0.], &[1, 2, 2], DType::F64);
    assert_eq!(
        tape.matmul(&a, &c).unwrap().value().to_f64_vec().unwrap(),
        vec![2., 1., 4., 3.]
    );
}

#[test]
fn large_linear_uses_blocks_and_agrees_with_f64() {
    // Big enough for the row-block parallel path; f32 against an f64 product.
    let (rows, inf, outf) = (300, 96, 130);
    let x = rand_tensor([rows, inf], 1, DType::F64);
    let w = rand_tensor([outf, inf], 2, DType::F64);
    let tape = Tape::inference();
    let want = tape
        .linear(&tape.constant(x.clone()), &tape.constant(w.clone()), None)
        .unwrap()
        .value()
        .to_f64_vec()
        .unwrap();
    let (xv, wv) = (x.to_f64_vec().unwrap(), w.to_f64_vec().unwrap());
    let mut naive = vec![0.0; rows * outf];
    for r in 0..rows {
        for o in 0..outf {
            naive[r * outf + o] = (0..inf).map(|i| xv[r * inf + i] * wv[o * inf + i]).sum();
        }
    }
    assert!(rel_err(&want, &naive) < 1e-13);
    let got = tape
        .linear(
            &tape.constant(x.to_dtype(DType::F32).unwrap()),
            &tape.constant(w.to_dtype(DType::F32).unwrap()),
            None,
        )
        .unwrap()
        .value()
        .to_f64_vec()
        .unwrap();
    assert!(rel_err(&got, &naive) < 1e-5);
}

/// conv3d against the definition, summed element by element: PyTorch's
/// Conv3d (cross-correlation) with zero padding, stride 1.
#[test]
fn conv3d_is_the_textbook_sum() {
    let (b, ci, co, [d, h, w], k, pad) = (2, 2, 3, [4, 3, 5], 3, 1);
    let x = common::rand_values(b * ci * d * h * w, 61);
    let wt = common::rand_values(co * ci * k * k * k, 62);
    let bias = [0.5, -0.25, 0.125];
    let tape = Tape::inference();
    let y = tape
        .conv3d(
            &tape.input(Tensor::from_vec(x.clone(), vec![b, ci, d, h, w]).unwrap(), false),
            &tape.input(Tensor::from_vec(wt.clone(), vec![co, ci, k, k, k]).unwrap(), false),
            Some(&tape.input(Tensor::from_vec(bias.to_vec(), vec![co]).unwrap(), false)),
            pad,
        )
        .unwrap();
    let got = y.value().to_f64_vec().unwrap();
    let at = |v: &[f64], idx: [usize; 5], dims: [usize; 5]| {
        v[(((idx[0] * dims[1] + idx[1]) * dims[2] + idx[2]) * dims[3] + idx[3]) * dims[4] + idx[4]]
    };
    let mut n = 0;
    for bi in 0..b {
        for (o, &bias_o) in bias.iter().enumerate() {
            for z in 0..d {
                for yy in 0..h {
                    for xx in 0..w {
                        let mut s = bias_o;
                        for c in 0..ci {
                            for a in 0..k {
                                for bb in 0..k {
                                    for cc in 0..k {
                                        let (iz, iy, ix) = (z + a, yy + bb, xx + cc);
                                        if iz < pad
                                            || iy < pad
                                            || ix < pad
                                            || iz - pad >= d
                                            || iy - pad >= h
                                            || ix - pad >= w
                                        {
                                            continue;
                                        }
                                        s += at(&wt, [o, c, a, bb, cc], [co, ci, k, k, k])
                                            * at(&x, [bi, c, iz - pad, iy - pad, ix - pad], [b, ci, d, h, w]);
                                    }
                                }
                            }
                        }
                        assert!((got[n] - s).abs() < 1e-12, "voxel {n}: {} vs {s}", got[n]);
                        n += 1;
                    }
                }
            }
        }
    }
    assert_eq!(n, got.len());
}

/// BatchNorm3d in training normalises each channel by the batch's mean and
/// biased variance and reports the unbiased one for the running update (as
/// PyTorch's); in evaluation it uses the running statistics given.
#[test]
fn batch_norm3d_statistics_are_pytorchs() {
    use nemesis::ops::BatchStats;
    let tape = Tape::inference();
    // Two channels of four values each (B 2, 1×1×2 voxels).
    let x = Tensor::from_vec(vec![1.0f64, 2.0, 10.0, 20.0, 3.0, 4.0, 30.0, 40.0], vec![2, 2, 1, 1, 2]).unwrap();
    let (g, b) = (
        Tensor::from_vec(vec![2.0f64, 1.0], vec![2]).unwrap(),
        Tensor::from_vec(vec![0.5f64, -1.0], vec![2]).unwrap(),
    );
    let (xv, gv, bv) = (tape.input(x, false), tape.input(g, false), tape.input(b, false));
    let (y, m) = tape.batch_norm3d(&xv, &gv, &bv, &BatchStats::Batch, 0.0).unwrap();
    let m = m.unwrap();
    assert_eq!(m.mean, vec![2.5, 25.0]);
    // Channel 0 holds 1, 2, 3, 4: biased variance 1.25, unbiased 5/3.
    assert!((m.var_unbiased[0] - 5.0 / 3.0).abs() < 1e-12);
    let y = y.value().to_f64_vec().unwrap();
    assert!(
        (y[0] - (0.5 + 2.0 * (1.0 - 2.5) / 1.25f64.sqrt())).abs() < 1e-12,
        "{y:?}"
    );
    let running = BatchStats::Running {
        mean: vec![0.0, 10.0],
        var: vec![4.0, 100.0],
    };
    let (y, m) = tape.batch_norm3d(&xv, &gv, &bv, &running, 0.0).unwrap();
    assert!(m.is_none());
    let y = y.value().to_f64_vec().unwrap();
    assert!(
        (y[0] - (0.5 + 2.0 * 1.0 / 2.0)).abs() < 1e-12 && (y[2] - (-1.0 + 0.0)).abs() < 1e-12,
        "{y:?}"
    );
}

/// Trilinear ×2 with align_corners false, as PyTorch computes it: along
/// W, [a, b] becomes [a, ¾a + ¼b, ¼a + ¾b, b]; a side of 1 repeats.
#[test]
fn resize3d_is_pytorchs_trilinear() {
    let tape = Tape::inference();
    let x = tape.input(Tensor::from_vec(vec![2.0f64, 6.0], vec![1, 1, 1, 1, 2]).unwrap(), false);
    let y = tape.resize3d(&x, [2, 1, 4]).unwrap().value().to_f64_vec().unwrap();
    assert_eq!(y, vec![2.0, 3.0, 5.0, 6.0, 2.0, 3.0, 5.0, 6.0]);
}

/// Tokens to channels: `B × M × N → B × N × M`, item by item.
#[test]
fn transpose12_swaps_the_last_two_axes() {
    let tape = Tape::inference();
    let v: Vec<f64> = (0..12).map(f64::from).collect();
    let x = tape.input(Tensor::from_vec(v, vec![2, 2, 3]).unwrap(), false);
    let y = tape.transpose12(&x).unwrap();
    assert_eq!(y.shape().dims(), [2, 3, 2]);
    let want = [0.0, 3.0, 1.0, 4.0, 2.0, 5.0, 6.0, 9.0, 7.0, 10.0, 8.0, 11.0];
    assert_eq!(y.value().to_f64_vec().unwrap(), want);
}

/// Dice + CE of logits that put all mass on the right class is the CE of
/// those logits alone (the Dice term ~0); of uniform logits, ln C plus the
/// Dice loss of a prediction spread evenly.
#[test]
fn dice_ce_limits() {
    let tape = Tape::inference();
    // One item, 2 classes, 4 voxels: labels 0, 1, 1, 0.
    let labels = [0u32, 1, 1, 0];
    let confident: Vec<f64> = vec![30.0, -30.0, -30.0, 30.0, -30.0, 30.0, 30.0, -30.0];
    let z = tape.input(Tensor::from_vec(confident, vec![1, 2, 1, 1, 4]).unwrap(), false);
    let l = tape.dice_ce(&z, &labels).unwrap().value().to_f64_vec().unwrap()[0];
    assert!(l.abs() < 1e-6, "{l}");
    let z = tape.input(Tensor::from_vec(vec![0.0f64; 8], vec![1, 2, 1, 1, 4]).unwrap(), false);
    let l = tape.dice_ce(&z, &labels).unwrap().value().to_f64_vec().unwrap()[0];
    // Class 1: intersection 1, predicted 2, truth 2: Dice loss 1 − (2 + ε)/(4 + ε).
    let want = 2f64.ln() + 1.0 - (2.0 + 1e-5) / (4.0 + 1e-5);
    assert!((l - want).abs() < 1e-12, "{l} vs {want}");
    let e = tape.dice_ce(&z, &[0, 1, 2, 0]).unwrap_err().to_string();
    assert!(e.contains("class 2 for a model of 2 classes"), "{e}");
}
