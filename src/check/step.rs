//! Whole training steps on a device against the CPU backend: one step's
//! loss, PSNR and every gradient (`training_step`), and step graphs
//! replayed bit for bit (`step_graphs`).

use super::{rel, values, CheckRow, BF16_LIMIT, FP32_LIMIT};
use crate::autograd::Tape;
use crate::error::Result;
use crate::model::{add_noise, DualMask, ModelConfig};
use crate::rng::RngStream;
use crate::tensor::Tensor;

/// One whole training step (forward, masked loss, backward with dropout)
/// of `config` on `dev` against the CPU backend from the same weights and
/// inputs: the loss, the PSNR and the gradient of every parameter, each a
/// row. The limit follows the device's precision.
pub fn training_step(
    dev: &crate::device::SharedDevice,
    preset: &str,
    batch: usize,
    seed: u64,
) -> Result<Vec<CheckRow>> {
    use crate::model::{init_params, Dropout, Nemesis};
    let c = ModelConfig::preset(preset)?;
    let limit = if dev.mixed_precision() { BF16_LIMIT } else { FP32_LIMIT };
    let r = RngStream::new(seed, 0x57E9);
    let store = init_params(&c, seed, crate::tensor::DType::F32)?;
    // Move every weight off its initial value (zero biases, unit norms) so
    // each gradient path carries signal.
    let mut store = {
        let mut s = store.clone();
        for (k, (id, p)) in store.iter().enumerate() {
            let v: Vec<f32> = p
                .value
                .to_vec::<f32>()?
                .iter()
                .zip(values(p.value.numel(), r, 1_000_000 * k as u64, 0.02))
                .map(|(w, j)| w + j)
                .collect();
            s.set_value(id, Tensor::from_vec(v, p.value.shape().clone())?)?;
        }
        s
    };
    let [d, h, w] = c.superpatch_size;
    let clean = Tensor::from_vec(
        values(batch * d * h * w, r, 7, 0.5)
            .iter()
            .map(|v| v + 0.5)
            .collect::<Vec<_>>(),
        [batch, 1, d, h, w],
    )?;
    let noisy = add_noise(&clean, 0.05, r)?;
    let mask = DualMask::sample(&c, batch, r);
    let model = Nemesis::new(c.clone())?;
    let step = |s: &mut crate::autograd::ParamStore| -> Result<(f64, f64)> {
        let tape = Tape::new();
        let drop = Dropout::new(c.dropout, seed, 3);
        let out = model.forward_train(&tape, s, &noisy, &clean, &mask, Some(&drop))?;
        let loss = out.loss.value().scalar_value()?;
        tape.backward(&out.loss, s)?;
        Ok((loss, out.psnr()?))
    };
    let (want_loss, want_psnr) = step(&mut store)?;
    let mut on_dev = store.to_device(dev)?;
    on_dev.zero_grad();
    let (loss, psnr) = step(&mut on_dev)?;
    let on_dev = on_dev.to_cpu()?;
    let case = |what: String| format!("{preset} b={batch} {what}");
    let mut rows = vec![
        CheckRow {
            kernel: "training step",
            case: case("loss".into()),
            rel_err: ((loss - want_loss) / want_loss).abs(),
            limit,
        },
        CheckRow {
            kernel: "training step",
            case: case("psnr".into()),
            rel_err: ((psnr - want_psnr) / want_psnr).abs(),
            limit,
        },
    ];
    let (mut all_got, mut all_want) = (Vec::new(), Vec::new());
    for ((_, want), (_, got)) in store.iter().zip(on_dev.iter()) {
        let err = match (&want.grad, &got.grad) {
            (Some(a), Some(b)) => {
                let (a, b) = (a.to_vec::<f32>()?, b.to_vec::<f32>()?);
                all_want.extend_from_slice(&a);
                all_got.extend_from_slice(&b);
                rel(&b, &a)
            }
            _ => f64::INFINITY,
        };
        // In bf16 a one-element gradient (pe_scale, the gate's alpha) is a
        // single sum over every token with heavy cancellation, so no relative
        // limit holds for it alone: it is shown, must be finite, and is
        // judged inside the all-gradients row.
        let scalar = want.value.numel() == 1 && dev.mixed_precision();
        rows.push(CheckRow {
            kernel: "step gradient",
            case: case(want.name.clone()),
            rel_err: err,
            limit: if scalar { f64::INFINITY } else { limit },
        });
    }
    rows.push(CheckRow {
        kernel: "step gradient",
        case: case("all gradients together".into()),
        rel_err: rel(&all_got, &all_want),
        limit,
    });
    Ok(rows)
}

/// Step graphs (backend/graph.rs) on `dev`: four training steps of the
/// `tiny` model at `batch` (dropout on, a learning rate and a batch that change every
/// step) run call by call, and the same four with the third and fourth
/// replayed from the graph recorded in the second. Rows: the losses and
/// the weights after the four steps, graphed against plain. The kernels are
/// deterministic, so anything but equality means a replay ran with a stale
/// value; a run where no step was replayed fails.
pub fn step_graphs(dev: &crate::device::SharedDevice, batch: usize, seed: u64) -> Result<Vec<CheckRow>> {
    use crate::data::{Batch, BatchData, Position};
    use crate::model::{init_params, Nemesis};
    use crate::train::{AdamW, StepGraphs, StepSpec};
    let mut c = ModelConfig::tiny();
    c.dropout = 0.1;
    let model = Nemesis::new(c.clone())?;
    let [d, h, w] = c.superpatch_size;
    let spec = StepSpec {
        model: &model,
        seed,
        noise_levels: &[0.0, 0.05, 0.1],
        clip: 0.5,
        shard: Default::default(),
        collective: None,
        allreduce_bf16: false,
    };
    let steps = 4u64;
    let run = |graphs: bool| -> Result<(Vec<f32>, Vec<f32>, u64)> {
        let mut store = init_params(&c, seed, crate::tensor::DType::F32)?.to_device(dev)?;
        let mut opt = AdamW::new(crate::train::TrainConfig::default().adamw(), &store);
        let mut g = StepGraphs::new(graphs);
        let mut pending = Vec::new();
        for s in 0..steps {
            let hu: Vec<i16> = values(batch * d * h * w, RngStream::new(seed, 0x6A), s * 1_000_000, 600.0)
                .iter()
                .map(|v| v.round() as i16)
                .collect();
            let batch = Batch {
                position: Position::default(),
                shape: [batch, 1, d, h, w],
                data: BatchData::HuI16(hu),
                sources: Vec::new(),
            };
            let lr = 1e-3 * (s + 1) as f64 / steps as f64;
            pending.push(g.queue(&spec, &mut store, &mut opt, s, lr, vec![batch])?);
        }
        let mut losses = Vec::new();
        for p in pending {
            losses.push(p.wait()?.loss as f32);
        }
        let mut weights = Vec::new();
        for (_, p) in store.to_cpu()?.iter() {
            weights.extend(p.value.to_vec::<f32>()?);
        }
        Ok((losses, weights, g.replays()))
    };
    let (want_loss, want_w, _) = run(false)?;
    let (loss, w, replays) = run(true)?;
    let judged = |e: f64| if replays == steps - 2 { e } else { f64::INFINITY };
    Ok(vec![
        CheckRow {
            kernel: "step graph",
            case: format!("tiny b={batch}, 4 steps ({replays} replayed): losses"),
            rel_err: judged(rel(&loss, &want_loss)),
            limit: 0.0,
        },
        CheckRow {
            kernel: "step graph",
            case: format!("tiny b={batch}, 4 steps: weights after"),
            rel_err: judged(rel(&w, &want_w)),
            limit: 0.0,
        },
    ])
}
