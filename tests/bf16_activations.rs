//! Activations only GEMMs read are stored as bf16 alone in mixed precision
//! (the layer norm before the QKV projections, the FFN's hidden activation,
//! the gradients the FFN's first linear and the decoder head take). Their
//! GEMMs see the same bf16 bits either way; only those two bias gradients
//! change (summed from the bf16 values). So two training steps with and
//! without (`NEMESIS_BF16_ACTIVATIONS=0`) must give the same forward pass
//! bit for bit and nearly the same update, never widen such a tensor back
//! to f32, and the bf16 form must hold less device memory. One test in this
//! file: it sets the variable for the process.

use std::sync::Arc;

use nemesis::autograd::ParamStore;
use nemesis::backend::device::SharedDevice;
use nemesis::backend::emu::EmuDevice;
use nemesis::data::{Batch, BatchData, Position};
use nemesis::model::{init_params, ModelConfig, Nemesis};
use nemesis::rng::RngStream;
use nemesis::tensor::DType;
use nemesis::train::{queue_step, AdamW, AdamWConfig, StepSpec, StepValues};

struct Run {
    steps: Vec<StepValues>,
    weights: ParamStore,
    peak: usize,
    widened: u64,
}

fn two_steps(c: &ModelConfig, bf16_alone: bool) -> Run {
    // The variable is read as each op makes its output.
    std::env::set_var("NEMESIS_BF16_ACTIVATIONS", if bf16_alone { "1" } else { "0" });
    let emu = Arc::new(EmuDevice::mixed());
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
        weights: store.to_cpu().unwrap(),
        peak: dev.memory().peak,
        widened: emu.kernel_runs("bf16_to_f32"),
    }
}

#[test]
fn bf16_alone_keeps_the_forward_pass_and_holds_less_memory() {
    let c = ModelConfig::tiny();
    let alone = two_steps(&c, true);
    let kept = two_steps(&c, false);
    std::env::remove_var("NEMESIS_BF16_ACTIVATIONS");
    assert_eq!(alone.widened, 0, "a training step widened a bf16-only activation");
    assert_eq!(kept.widened, 0);
    // Step 1's forward pass reads the same values: the same loss, to the bit.
    let (a, b) = (&alone.steps[0], &kept.steps[0]);
    assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "loss");
    assert_eq!(a.psnr.to_bits(), b.psnr.to_bits(), "psnr");
    for (a, b) in alone.steps.iter().zip(&kept.steps) {
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-3 * x.abs().max(1e-6);
        assert!(close(a.loss, b.loss), "loss {} vs {}", a.loss, b.loss);
        assert!(
            close(a.grad_norm, b.grad_norm),
            "norm {} vs {}",
            a.grad_norm,
            b.grad_norm
        );
    }
    assert!(alone.steps[0].loss != alone.steps[1].loss, "the steps changed nothing");
    // The updates themselves: per tensor, the difference of the two runs'
    // weight changes against the size of the change. AdamW moves a weight
    // whose gradient is rounding noise by up to lr a step either way, so
    // this is a norm over the tensor, not a bound per weight.
    let start = init_params(&c, 1, DType::F32).unwrap();
    let mut moved = 0;
    let mut worst = (0.0f64, String::new());
    for (((_, p), (_, q)), (_, w0)) in alone.weights.iter().zip(kept.weights.iter()).zip(start.iter()) {
        let (mut a, mut b, mut w) = (p.value.to_f64_vec(), q.value.to_f64_vec(), w0.value.to_f64_vec());
        // The key third of a fused in_proj bias has a gradient of exactly
        // zero in exact arithmetic (softmax ignores a constant added to a
        // row of scores): rounding noise, which AdamW turns into ±lr steps.
        if p.name.ends_with("in_proj_bias") {
            let e = a.len() / 3;
            for v in [&mut a, &mut b, &mut w] {
                v.drain(e..2 * e);
            }
        }
        let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
        let step: f64 = a.iter().zip(&w).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
        let rel = diff / step.max(1e-12);
        if rel > worst.0 {
            worst = (rel, p.name.clone());
        }
        moved += usize::from(diff > 0.0);
    }
    eprintln!("largest update difference: {:.3e} of the update ({})", worst.0, worst.1);
    assert!(
        worst.0 < 0.03,
        "{}: updates differ by {:.3e} of their size",
        worst.1,
        worst.0
    );
    // The two bias gradients really were summed from other values.
    assert!(moved > 0, "no weight differs: the bf16-only path did not run");
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
