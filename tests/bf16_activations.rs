//! Activations whose readers all take bf16 values are stored as bf16 alone
//! in mixed precision (the layer norm before the QKV projections, the QKV
//! projections, the attention heads, the FFN's first projection and hidden
//! activation, the decoder's final norm, and the gradients those
//! projections take). The GEMMs read the same bf16 bits either way; what
//! changes is GELU's input (the bf16 pre-activation), `D = rowsum(dO∘O)`
//! and the bias gradients of those projections (summed from bf16 values).
//! So two training steps with and without (`NEMESIS_BF16_ACTIVATIONS=0`)
//! must agree to bf16 rounding, never widen such a tensor back to f32, and
//! the bf16 form must hold less device memory. One test in this file: it
//! sets the variable for the process.

mod common;

use std::sync::Arc;

use nemesis::autograd::ParamStore;
use nemesis::backend::emu::EmuDevice;
use nemesis::data::{Batch, BatchData, Position};
use nemesis::device::{DeviceSettings, SharedDevice};
use nemesis::model::{add_noise, init_params, Dropout, DualMask, ModelConfig, Nemesis};
use nemesis::rng::RngStream;
use nemesis::tensor::DType;
use nemesis::train::{queue_step, AdamW, AdamWConfig, StepSpec, StepValues};
use nemesis::{Tape, Tensor};

struct Run {
    steps: Vec<StepValues>,
    peak: usize,
    widened: u64,
}

/// Mixed-precision activations stored as bf16 alone, or with f32 kept
/// beside them (what `NEMESIS_BF16_ACTIVATIONS=0` gives a device).
fn settings(bf16_alone: bool) -> DeviceSettings {
    DeviceSettings {
        bf16_activations: bf16_alone,
        ..DeviceSettings::default()
    }
}

fn two_steps(c: &ModelConfig, bf16_alone: bool) -> Run {
    let emu = Arc::new(EmuDevice::mixed().with_settings(settings(bf16_alone)));
    let dev: SharedDevice = emu.clone();
    let mut store = init_params(c, 1, DType::F32).unwrap().to_device(&dev).unwrap();
    let mut u = vec![0.0f32; 2 * c.voxels()];
    RngStream::new(3, 4).fill_uniform(0, &mut u);
    let hu: Vec<i16> = u.iter().map(|&v| (-400.0 + 900.0 * v).round() as i16).collect();
    let [d, h, w] = c.superpatch_size;
    let batch = || Batch {
        position: Position::default(),
        shape: [2, 1, d, h, w],
        data: BatchData::HuI16(hu.clone()),
        sources: Vec::new(),
    };
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
    let cfg = AdamWConfig {
        betas: (0.9, 0.95),
        eps: 1e-8,
        weight_decay: 0.05,
    };
    let mut opt = AdamW::new(cfg, &store);
    dev.reset_peak();
    let mut steps = Vec::new();
    for i in 0..2 {
        let s = queue_step(&spec, &mut store, &mut opt, i, 1e-3, vec![batch()]).unwrap();
        steps.push(s.wait().unwrap());
    }
    Run {
        steps,
        peak: dev.memory().peak,
        widened: emu.kernel_runs("bf16_to_f32"),
    }
}

/// One forward and backward pass on a mixed-precision emulator (dropout
/// on), with bf16-alone storage on or off; the store with its gradients,
/// on the host.
fn gradients(c: &ModelConfig, bf16_alone: bool) -> ParamStore {
    let dev: SharedDevice = Arc::new(EmuDevice::mixed().with_settings(settings(bf16_alone)));
    let mut store = init_params(c, 1, DType::F32).unwrap().to_device(&dev).unwrap();
    let [d, h, w] = c.superpatch_size;
    let mut u = vec![0.0f32; 2 * d * h * w];
    RngStream::new(5, 6).fill_uniform(0, &mut u);
    let clean = Tensor::from_vec(u, [2, 1, d, h, w]).unwrap();
    let r = RngStream::new(7, 8);
    let noisy = add_noise(&clean, 0.05, r).unwrap();
    let mask = DualMask::sample(c, 2, r);
    let model = Nemesis::new(c.clone()).unwrap();
    let tape = Tape::new();
    let drop = Dropout::new(c.dropout, 1, 3);
    let out = model
        .forward_train(&tape, &store, &noisy, &clean, &mask, Some(&drop))
        .unwrap();
    tape.backward(&out.loss, &mut store).unwrap();
    store.to_cpu().unwrap()
}

#[test]
fn bf16_alone_agrees_with_f32_kept_and_holds_less_memory() {
    let c = ModelConfig::tiny();
    let alone = two_steps(&c, true);
    let kept = two_steps(&c, false);
    assert_eq!(alone.widened, 0, "a training step widened a bf16-only activation");
    assert_eq!(kept.widened, 0);
    for (a, b) in alone.steps.iter().zip(&kept.steps) {
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-3 * x.abs().max(1e-6);
        assert!(close(a.loss, b.loss), "loss {} vs {}", a.loss, b.loss);
        eprintln!(
            "loss {} vs {}, gradient norm {} vs {}",
            a.loss, b.loss, a.grad_norm, b.grad_norm
        );
        assert!(
            close(a.grad_norm, b.grad_norm),
            "norm {} vs {}",
            a.grad_norm,
            b.grad_norm
        );
    }
    assert!(alone.steps[0].loss != alone.steps[1].loss, "the steps changed nothing");
    // Step 1's gradients, tensor by tensor, within the bf16 limit of the
    // device checks (2e-2). One-element gradients (single sums with heavy
    // cancellation) and the key third of a fused in_proj bias (zero in
    // exact arithmetic) are judged only in the total.
    let (ga, gb) = (gradients(&c, true), gradients(&c, false));
    let (mut num, mut den, mut differ) = (0.0f64, 0.0f64, 0);
    let mut worst = (0.0f64, String::new());
    for ((_, p), (_, q)) in ga.iter().zip(gb.iter()) {
        let grad = |p: &nemesis::autograd::Param| p.grad.as_ref().map(|g| g.to_f64_vec().unwrap()).unwrap_or_default();
        let (mut a, mut b) = (grad(p), grad(q));
        assert_eq!(a.len(), p.value.numel(), "{}: no gradient", p.name);
        let d2: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
        num += d2;
        den += b.iter().map(|y| y * y).sum::<f64>();
        differ += usize::from(d2 > 0.0);
        if p.name.ends_with("in_proj_bias") {
            let e = a.len() / 3;
            a.drain(e..2 * e);
            b.drain(e..2 * e);
        }
        if a.len() > 1 {
            let rel = common::rel_err(&a, &b);
            if rel > worst.0 {
                worst = (rel, p.name.clone());
            }
        }
    }
    let total = (num / den.max(1e-300)).sqrt();
    eprintln!(
        "step 1 gradients, bf16 alone against f32 kept: worst {:.3e} ({}), all together {total:.3e}",
        worst.0, worst.1
    );
    assert!(worst.0 <= 2e-2, "{}: gradients differ by {:.3e}", worst.1, worst.0);
    assert!(total <= 2e-2, "all gradients together differ by {total:.3e}");
    // GELU's input, D and the bias sums really did change.
    assert!(differ > 0, "no gradient differs: the bf16-alone path did not run");
    eprintln!(
        "device memory peak over two tiny steps: bf16 alone {} B, f32 kept {} B",
        alone.peak, kept.peak
    );
    assert!(
        alone.peak < kept.peak,
        "bf16 alone peaked at {} B, f32 kept at {} B",
        alone.peak,
        kept.peak
    );
}
