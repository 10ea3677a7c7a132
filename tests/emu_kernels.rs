//! The CUDA kernels on the emulator, through the ops that launch them in
//! training, where the CPU reference is matched exactly (the within-limit
//! comparisons of every kernel are `nemesis check`'s rows, run by
//! tests/cli.rs), and the device trait's own contract.

mod common;

use std::sync::Arc;

use common::{rand_values, rel_err};
use nemesis::autograd::Tape;
use nemesis::backend::emu::EmuDevice;
use nemesis::backend::gpu;
use nemesis::data::hu_window;
use nemesis::device::SharedDevice;
use nemesis::model::{add_noise, patchify, DualMask, ModelConfig};
use nemesis::rng::RngStream;
use nemesis::Tensor;

fn dev() -> SharedDevice {
    Arc::new(EmuDevice::new())
}

fn f32s(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    rand_values(n, seed).iter().map(|&v| v as f32 * scale).collect()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn up(d: &SharedDevice, v: &[f32], shape: impl Into<nemesis::Shape>) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape).unwrap().to_device(d).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_cpu().unwrap().to_vec::<f32>().unwrap()
}

#[test]
fn dropout_mask_is_the_cpu_mask_exactly() {
    let d = dev();
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
            host(&gpu::dropout(&up(&d, &x, [n]), p, rng).unwrap()),
            want,
            "n {n} p {p}"
        );
    }
}

#[test]
fn the_gate_mix_is_the_cpu_mix_exactly() {
    let d = dev();
    let (x, y) = (f32s(333, 4, 1.0), f32s(333, 5, 1.0));
    let got = gpu::gate_mix(&up(&d, &x, [333]), &up(&d, &y, [333]), &up(&d, &[0.3], [1])).unwrap();
    assert_eq!(host(&got), nemesis::backend::cpu::elementwise::gate_mix(&x, &y, 0.3f32));
}

#[test]
fn kernel_normals_are_the_cpu_normals_exactly() {
    // HU −1000 windows to 0 and σ = 1, so with 1³ patches the fused input
    // writes the stream's normals themselves: 2¹⁸ of them, Box–Muller's
    // logarithm, cosine and sine in the kernels' arithmetic against
    // src/rng.rs's.
    let d = dev();
    let size = [16, 128, 128];
    let n = size.iter().product::<usize>();
    let batch = gpu::upload_hu(&d, &vec![-1000i16; n]).unwrap();
    let ids: Vec<usize> = (0..n).collect();
    let noise = RngStream::new(0x5eed, 0xabc);
    let got = host(&gpu::superpatch_input(&batch, 1, size, [1, 1, 1], &ids, 1.0, noise).unwrap());
    let mut want = vec![0.0f32; n];
    noise.fill_normal(0, &mut want);
    let differ = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(differ, 0, "{differ} of {n} normals differ");
}

#[test]
fn kernel_box_muller_parts_are_the_cpu_parts_bit_for_bit() {
    // In f64, before the rounding to f32 hides most differences: every
    // 24-bit value's logarithm, cosine and sine, strided, with the ends
    // and the quarter turns.
    use nemesis::device::{Arg, DeviceApi, DeviceVec, Launch};
    let emu = EmuDevice::new();
    let mut k: Vec<u32> = (1..1u32 << 24).step_by(163).collect();
    k.extend([
        1,
        2,
        (1 << 24) - 1,
        1 << 21,
        1 << 22,
        1 << 23,
        3 << 22,
        (1 << 22) - 1,
        (1 << 22) + 1,
    ]);
    let n = k.len();
    let dk = DeviceVec::from_slice(&emu, &k).unwrap();
    let out = DeviceVec::from_slice(&emu, &vec![0.0f64; 3 * n]).unwrap();
    emu.launch(
        "selftest_box_muller_parts",
        &Launch::linear(n.div_ceil(256) as u32, 256, 0),
        &[dk.arg(), out.arg(), Arg::U64(n as u64)],
    )
    .unwrap();
    let got = out.to_vec::<f64>().unwrap();
    for (i, &k) in k.iter().enumerate() {
        let (c, s) = nemesis::rng::sin_cos_turn(k & 0xFF_FFFF);
        let want = [nemesis::rng::ln_unit(k), c, s];
        for (j, w) in want.iter().enumerate() {
            assert_eq!(got[3 * i + j].to_bits(), w.to_bits(), "k {k}, part {j}");
        }
    }
}

#[test]
fn fused_superpatch_input_equals_window_noise_patchify_gather() {
    let d = dev();
    // Tiny preset (32³, 8³ patches) and an odd-shaped config, batch 2.
    let odd = ModelConfig {
        superpatch_size: [6, 10, 12],
        patch_size: [2, 5, 3],
        ..ModelConfig::tiny()
    };
    for c in [ModelConfig::tiny(), odd] {
        let b = 2;
        let hu: Vec<i16> = rand_values(b * c.voxels(), 9)
            .iter()
            .map(|v| (v * 1200.0 - 200.0) as i16)
            .collect();
        let mask = DualMask::sample(&c, b, RngStream::new(1, 2));
        let batch = gpu::upload_hu(&d, &hu).unwrap();
        for sigma in [0.0, 0.03] {
            let noise = RngStream::new(5, 6);
            let got = gpu::superpatch_input(
                &batch,
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
            let [dd, h, w] = c.superpatch_size;
            let x = Tensor::from_vec(windowed, [b, 1, dd, h, w]).unwrap();
            let noisy = add_noise(&x, sigma, noise).unwrap();
            let tape = Tape::inference();
            let patches = tape.constant(patchify(&c, &noisy).unwrap());
            let want = tape
                .gather_rows(&patches, mask.ids_keep())
                .unwrap()
                .value()
                .to_vec::<f32>()
                .unwrap();
            assert!(
                host(&got) == want,
                "{:?} σ {sigma}: the fused kernel differs from the reference",
                c.superpatch_size
            );
        }
    }
    let batch = gpu::upload_hu(&d, &[0; 8]).unwrap();
    let e = gpu::superpatch_input(&batch, 1, [2, 2, 2], [1, 1, 1], &[8], 0.0, RngStream::new(0, 0)).unwrap_err();
    assert!(e.to_string().contains("out of range"));
}

#[test]
fn token_gather_and_mask_scatter_with_positions() {
    let d = dev();
    let c = ModelConfig::tiny();
    let (b, n, e) = (2, c.num_tokens(), 64);
    let mask = DualMask::sample(&c, b, RngStream::new(3, 3));
    let nv = mask.visible();
    let x = f32s(b * n * e, 70, 1.0);
    let got = gpu::gather_rows(&up(&d, &x, [b, n, e]), mask.ids_keep(), b, n, e).unwrap();
    let tape = Tape::inference();
    let xv = tape.constant(Tensor::from_vec(x.clone(), [b, n, e]).unwrap());
    let want = tape
        .gather_rows(&xv, mask.ids_keep())
        .unwrap()
        .value()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(host(&got), want);

    let latent = f32s(b * nv * e, 71, 1.0);
    let token = f32s(e, 72, 1.0);
    let pe: Vec<f32> = nemesis::model::positional_table(&c).iter().map(|&v| v as f32).collect();
    let s = 0.7f32;
    let got = gpu::scatter_mask_pe(
        &up(&d, &latent, [b, nv, e]),
        mask.ids_keep(),
        &up(&d, &token, [e]),
        &up(&d, &pe, [n, e]),
        &up(&d, &[s], [1]),
        b,
        n,
    )
    .unwrap();
    let lat = tape.constant(Tensor::from_vec(latent, [b, nv, e]).unwrap());
    let fill = tape.constant(Tensor::from_vec(token, [e]).unwrap());
    let y = tape.scatter_rows(&lat, mask.ids_keep(), n, &fill).unwrap();
    let scaled = tape
        .scale(&tape.constant(Tensor::from_vec(pe, [n, e]).unwrap()), s as f64)
        .unwrap();
    let want = tape.add(&y, &scaled).unwrap().value().to_vec::<f32>().unwrap();
    assert!(rel_err(&to64(&host(&got)), &to64(&want)) < 1e-7);
    // An index out of range, or twice in one item: errors, not kernels.
    assert!(gpu::gather_rows(&up(&d, &x, [b, n, e]), &[n, 0], 2, n, e).is_err());
    assert!(gpu::scatter_rows(
        &up(&d, &x[..2 * e], [1, 2, e]),
        &[3, 3],
        &up(&d, &token_zero(e), [e]),
        1,
        n
    )
    .is_err());
}

fn token_zero(e: usize) -> Vec<f32> {
    vec![0.0; e]
}

#[test]
fn the_device_trait_on_the_emulator() {
    use nemesis::backend::kernels::k;
    use nemesis::device::{Arg, DeviceApi, DeviceVec, Gemm, Launch};
    let d = EmuDevice::new();
    // Copies round-trip; a freed buffer is an error, not a crash.
    let v = DeviceVec::from_slice(&d, &[1.0f32, 2.0, 3.0]).unwrap();
    assert_eq!(v.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
    let gone = d.alloc(8).unwrap();
    d.free(&gone);
    assert!(d.upload(&gone, &[0u8; 8]).is_err());
    assert!(d.upload(&v.buf, &[0u8; 64]).is_err(), "larger than the buffer");
    // GEMM with and without transposes against the CPU.
    let (m, n, kk) = (5, 7, 3);
    let a = f32s(m * kk, 90, 1.0);
    let b = f32s(kk * n, 91, 1.0);
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
                ..Gemm::new(m, n, kk, ta, tb)
            };
            d.gemm(&g, &da.buf, &db.buf, &dc.buf, with_bias.then_some(&dbias.buf))
                .unwrap();
            // The expected product from the operands as the GEMM must see them.
            let op = |v: f32| if bf16 { round(v) } else { v as f64 };
            let at = |i: usize, p: usize| op(if ta { a[p * m + i] } else { a[i * kk + p] });
            let bt = |p: usize, j: usize| op(if tb { b[j * kk + p] } else { b[p * n + j] });
            let want: Vec<f64> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    let bias = if with_bias { bias[j] as f64 } else { 0.0 };
                    2.0 * (0..kk).map(|p| at(i, p) * bt(p, j)).sum::<f64>() + 0.5 + bias
                })
                .collect();
            let got = to64(&dc.to_vec::<f32>().unwrap());
            assert!(rel_err(&got, &want) < 1e-6, "{ta} {tb} bias {with_bias} bf16 {bf16}");
        }
    }
    // A launch by name is checked for the kernel, the number of arguments
    // and their kinds (the typed launchers make the other two impossible).
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
    let y = DeviceVec::poisoned_f32(&d, 3).unwrap();
    k::gelu_forward(&d, &cfg, &v.buf, &y.buf, 3).unwrap();
    let want = nemesis::backend::cpu::elementwise::gelu(&[1.0f32, 2.0, 3.0]);
    assert!(rel_err(&to64(&y.to_vec::<f32>().unwrap()), &to64(&want)) < 1e-6);
}
