//! The whole GPU code path on the CPU: a training step of the model on the
//! emulated device (every op through `backend::gpu`, the .cu kernels and the
//! device GEMM) against the CPU reference backend.

use std::sync::Arc;

use nemesis::backend::emu::EmuDevice;
use nemesis::check::{training_step, CheckRow};
use nemesis::device::SharedDevice;

fn report(rows: &[CheckRow]) -> usize {
    let mut misses = 0;
    for r in rows {
        if !r.ok() {
            misses += 1;
            eprintln!("MISS {} {} {:.3e} > {:.0e}", r.kernel, r.case, r.rel_err, r.limit);
        }
        if std::env::var_os("SHOW").is_some() {
            eprintln!("{} {} {:.3e}", r.kernel, r.case, r.rel_err);
        }
    }
    misses
}

#[test]
fn tiny_training_step_on_the_emulator_matches_the_cpu_fp32() {
    let dev: SharedDevice = Arc::new(EmuDevice::new());
    let rows = training_step(&dev, "tiny", 2, 5).unwrap();
    // Loss, PSNR and one row per parameter.
    assert!(rows.len() > 40, "{} rows", rows.len());
    assert!(rows.iter().all(|r| r.limit == 1e-4));
    assert_eq!(report(&rows), 0);
}

#[test]
fn tiny_training_step_in_mixed_precision_is_within_bf16_limits() {
    let dev: SharedDevice = Arc::new(EmuDevice::mixed());
    let rows = training_step(&dev, "tiny", 2, 6).unwrap();
    // Every row but the one-element gradients (shown, judged together with
    // all others in the last row) has the bf16 limit.
    assert_eq!(rows.iter().filter(|r| r.limit != 2e-2).count(), 3);
    assert!(rows.iter().any(|r| r.case.contains("all gradients") && r.limit == 2e-2));
    assert_eq!(report(&rows), 0);
    // Rounding the GEMM operands to bf16 must show: not every gradient is
    // within fp32's limit.
    assert!(rows.iter().any(|r| r.rel_err > 1e-4), "bf16 rounding had no effect");
}

mod queued {
    use std::sync::Arc;

    use nemesis::autograd::ParamStore;
    use nemesis::backend::emu::EmuDevice;
    use nemesis::data::{Batch, BatchData, Position};
    use nemesis::device::SharedDevice;
    use nemesis::model::{init_params, ModelConfig, Nemesis};
    use nemesis::rng::RngStream;
    use nemesis::tensor::{DType, Tensor};
    use nemesis::train::{queue_step, AdamW, AdamWConfig, StepSpec, StepValues};

    fn hu_batch(c: &ModelConfig, b: usize) -> Vec<i16> {
        let mut u = vec![0.0f32; b * c.voxels()];
        RngStream::new(3, 4).fill_uniform(0, &mut u);
        // Some values outside the window, so clamping is exercised.
        u.iter().map(|&v| (-400.0 + 900.0 * v).round() as i16).collect()
    }

    fn batch(c: &ModelConfig, b: usize, data: BatchData) -> Batch {
        let [d, h, w] = c.superpatch_size;
        Batch {
            position: Position::default(),
            shape: [b, 1, d, h, w],
            data,
            sources: Vec::new(),
        }
    }

    fn optimizer(store: &ParamStore) -> AdamW {
        AdamW::new(
            AdamWConfig {
                betas: (0.9, 0.95),
                eps: 1e-8,
                weight_decay: 0.05,
            },
            store,
        )
    }

    /// Two steps; returns each step's metrics and the weights after them.
    fn two_steps(
        c: &ModelConfig,
        mut store: ParamStore,
        data: BatchData,
        waits: Option<&EmuDevice>,
    ) -> (Vec<StepValues>, ParamStore) {
        let model = Nemesis::new(c.clone()).unwrap();
        let spec = StepSpec {
            model: &model,
            seed: 9,
            noise_levels: &[0.0, 0.05],
            clip: 0.5,
            shard: Default::default(),
            collective: None,
            allreduce_bf16: false,
        };
        let mut opt = optimizer(&store);
        let before = waits.map(|e| e.host_waits());
        let first = queue_step(&spec, &mut store, &mut opt, 0, 1e-3, vec![batch(c, 2, data.clone())]).unwrap();
        let second = queue_step(&spec, &mut store, &mut opt, 1, 1e-3, vec![batch(c, 2, data)]).unwrap();
        if let (Some(e), Some(b)) = (waits, before) {
            assert_eq!(
                e.host_waits(),
                b,
                "queueing two steps made the host wait for the device (a download or synchronize)"
            );
        }
        (
            vec![first.wait().unwrap(), second.wait().unwrap()],
            store.to_cpu().unwrap(),
        )
    }

    #[test]
    fn queued_steps_never_wait_for_the_device_and_match_the_cpu() {
        let c = ModelConfig::tiny();
        let hu = hu_batch(&c, 2);
        let windowed: Vec<f32> = hu
            .iter()
            .map(|&v| ((v as f32).clamp(-175.0, 250.0) + 175.0) / 425.0)
            .collect();
        let emu = Arc::new(EmuDevice::new());
        let dev: SharedDevice = emu.clone();
        let store = init_params(&c, 1, DType::F32).unwrap();
        let (cpu, cpu_w) = two_steps(&c, store.clone(), BatchData::F32(windowed), None);
        let (got, got_w) = two_steps(&c, store.to_device(&dev).unwrap(), BatchData::HuI16(hu), Some(&emu));
        for (a, b) in cpu.iter().zip(&got) {
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-4 * x.abs().max(1e-6);
            assert!(close(a.loss, b.loss), "loss {} vs {}", a.loss, b.loss);
            assert!(close(a.psnr, b.psnr), "psnr {} vs {}", a.psnr, b.psnr);
            assert!(
                close(a.grad_norm, b.grad_norm),
                "norm {} vs {}",
                a.grad_norm,
                b.grad_norm
            );
            assert!(a.grad_norm > 0.5, "the clip must bite: norm {}", a.grad_norm);
        }
        // AdamW divides each gradient by its own running size, so a weight
        // whose gradient is near zero moves by up to lr per step in a
        // direction set by rounding; the two backends must agree to 5 % of
        // the largest movement two steps allow (2·lr).
        for ((_, p), (_, q)) in cpu_w.iter().zip(got_w.iter()) {
            let (a, b) = (p.value.to_f64_vec().unwrap(), q.value.to_f64_vec().unwrap());
            let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(err < 0.05 * 2e-3, "{}: weights differ by {err} after two steps", p.name);
        }
    }

    #[test]
    fn a_step_whose_gradient_is_nan_leaves_the_weights_alone_on_both_backends() {
        let c = ModelConfig::tiny();
        let hu = hu_batch(&c, 2);
        let mut store = init_params(&c, 1, DType::F32).unwrap();
        // A NaN in the last decoder weight makes the loss and every gradient NaN.
        let id = store.iter().last().map(|(id, _)| id).unwrap();
        let p = store.get(id).value.clone();
        let mut v = p.to_vec::<f32>().unwrap();
        v[0] = f32::NAN;
        store
            .set_value(id, Tensor::from_vec(v, p.shape().clone()).unwrap())
            .unwrap();
        let windowed: Vec<f32> = hu
            .iter()
            .map(|&v| ((v as f32).clamp(-175.0, 250.0) + 175.0) / 425.0)
            .collect();
        let dev: SharedDevice = Arc::new(EmuDevice::new());
        for (start, data) in [
            (store.clone(), BatchData::F32(windowed)),
            (store.to_device(&dev).unwrap(), BatchData::HuI16(hu)),
        ] {
            let (values, after) = two_steps(&c, start, data, None);
            assert!(values.iter().all(|v| v.loss.is_nan() && v.grad_norm.is_nan()));
            for ((_, a), (_, b)) in store.iter().zip(after.iter()) {
                let same = a
                    .value
                    .to_f64_vec()
                    .unwrap()
                    .iter()
                    .zip(b.value.to_f64_vec().unwrap())
                    .all(|(x, y)| x == &y || (x.is_nan() && y.is_nan()));
                assert!(same, "{} changed in a step whose gradient was NaN", a.name);
            }
        }
    }
}

#[test]
fn producers_in_mixed_precision_write_the_bf16_copy_their_gemm_reads() {
    use nemesis::backend::gpu;
    use nemesis::rng::RngStream;
    use nemesis::tensor::Readers;
    use nemesis::Tensor;

    let emu = Arc::new(EmuDevice::mixed());
    let dev: SharedDevice = emu.clone();
    let (rows, cols) = (37, 48);
    let mut v = vec![0.0f32; 4 * rows * cols];
    RngStream::new(5, 6).fill_uniform(0, &mut v);
    let t = |k: usize, n: usize, shape: Vec<usize>| {
        Tensor::from_vec(v[k * rows * cols..k * rows * cols + n].to_vec(), shape)
            .unwrap()
            .to_device(&dev)
            .unwrap()
    };
    let (x, a) = (t(0, rows * cols, vec![rows, cols]), t(1, rows * cols, vec![rows, cols]));
    let (w, b) = (t(2, cols, vec![cols]), t(3, cols, vec![cols]));
    let mask: Vec<f32> = (0..rows).map(|i| (i % 3 == 0) as u8 as f32).collect();
    let one = Tensor::scalar(1.0, nemesis::DType::F32);
    // Each producer whose output may be a GEMM operand, for both readers.
    let outputs = |r: Readers| -> Vec<Tensor> {
        vec![
            gpu::layer_norm(&x, &w, &b, 1e-6, r).unwrap().0,
            gpu::add_layer_norm(&x, &a, 0.5, &w, &b, 1e-6, r).unwrap().1,
            gpu::gelu_dropout(&x, 0.1, RngStream::new(7, 8), r).unwrap(),
            gpu::gelu_dropout_backward(&a, &x, 0.1, RngStream::new(7, 8), r).unwrap(),
            gpu::masked_mse_backward(&x, &a, &mask, cols, &one, r).unwrap(),
        ]
    };
    let mut both = outputs(Readers::Any);
    // Attention over 37 rows of a 48-wide QKV (E = 16, two heads of 8).
    let qkv = x.reshape([rows, cols]).unwrap();
    let layout = nemesis::tensor::SeqLayout::contiguous(1, rows);
    both.push(gpu::attention(&qkv, layout, 2, None).unwrap().0);
    let mut kept = Vec::new();
    for y in &both {
        assert!(!y.device_storage().unwrap().is_bf16_only());
        let values = y.to_cpu().unwrap().to_vec::<f32>().unwrap();
        let bits = gpu::bf16_bits(y).unwrap();
        let wrong = values
            .iter()
            .zip(&bits)
            .filter(|(v, b)| half::bf16::from_f32(**v).to_bits() != **b)
            .count();
        assert_eq!(wrong, 0, "the kernel's bf16 copy differs from its f32 output rounded");
        kept.push(bits);
    }
    assert_eq!(emu.kernel_runs("bf16_to_f32"), 0);
    // Read by GEMMs alone: the same bf16 bits, and no f32 values (half the
    // bytes of the copy, a third of both). A read to the host widens them
    // there, exactly, and leaves the storage as it is; an f32 kernel that
    // reads them has them widened on the device once.
    let alone = outputs(Readers::Bf16);
    for (k, y) in alone.iter().enumerate() {
        let s = y.device_storage().unwrap();
        assert!(s.is_bf16_only(), "output {k} kept f32 values");
        assert_eq!(s.bytes(), 2 * y.numel());
        assert_eq!(gpu::bf16_bits(y).unwrap(), kept[k], "output {k}: other bf16 bits");
        let widened = y.to_cpu().unwrap().to_vec::<f32>().unwrap();
        let exact = widened
            .iter()
            .zip(&kept[k])
            .all(|(w, b)| w.to_bits() == half::bf16::from_bits(*b).to_f32().to_bits());
        assert!(exact, "output {k}: widened values are not the bf16 values");
        assert!(s.is_bf16_only() && s.bytes() == 2 * y.numel());
        assert_eq!(emu.kernel_runs("bf16_to_f32"), k as u64);
        let doubled = gpu::scale(y, 2.0).unwrap().to_cpu().unwrap().to_vec::<f32>().unwrap();
        assert!(doubled.iter().zip(&widened).all(|(d, w)| *d == 2.0 * w));
        assert!(!s.is_bf16_only() && s.bytes() == 6 * y.numel());
    }
    assert_eq!(emu.kernel_runs("bf16_to_f32"), alone.len() as u64);
    // GELU + dropout read an input stored as bf16 alone (the FFN's first
    // projection) as the same values held in f32: the same bits out.
    let h = gpu::layer_norm(&x, &w, &b, 1e-6, Readers::Bf16).unwrap().0;
    let h32 = h.to_cpu().unwrap().to_device(&dev).unwrap();
    let h = gpu::layer_norm(&x, &w, &b, 1e-6, Readers::Bf16).unwrap().0;
    let before = emu.kernel_runs("gelu_dropout_forward_bf16");
    for p in [0.0, 0.2] {
        let (r1, r2) = (RngStream::new(3, 4), RngStream::new(3, 4));
        let from16 = gpu::gelu_dropout(&h, p, r1, Readers::Any).unwrap();
        let from32 = gpu::gelu_dropout(&h32, p, r2, Readers::Any).unwrap();
        let g16 = gpu::gelu_dropout_backward(&a, &h, p, r1, Readers::Any).unwrap();
        let g32 = gpu::gelu_dropout_backward(&a, &h32, p, r2, Readers::Any).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.to_cpu()
                .unwrap()
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&from16), bits(&from32), "GELU of a bf16 input, p = {p}");
        assert_eq!(bits(&g16), bits(&g32), "GELU gradient at a bf16 input, p = {p}");
    }
    assert!(h.device_storage().unwrap().is_bf16_only(), "the bf16 input was widened");
    assert_eq!(emu.kernel_runs("gelu_dropout_forward_bf16"), before + 2);
    assert_eq!(emu.kernel_runs("gelu_dropout_backward_bf16"), 2);
    // An f32 device never stores bf16 alone.
    let f32dev: SharedDevice = Arc::new(EmuDevice::new());
    let xf = x.to_cpu().unwrap().to_device(&f32dev).unwrap();
    let y = gpu::gelu_dropout(&xf, 0.0, RngStream::new(1, 2), Readers::Bf16).unwrap();
    let s = y.device_storage().unwrap();
    assert!(!s.is_bf16_only() && s.bytes() == 4 * y.numel());
}
