//! The optimizer (src/backend/gpu/optim.rs) against the CPU AdamW: the
//! multi-tensor update (step 5, a clip factor, moments already warm), its
//! rewrite of a weight's bf16 copy, a NaN clip factor that must change
//! nothing, the global norm and the clip factor.

use super::{host, rel, Kit};
use crate::autograd::ParamStore;
use crate::backend::gpu;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::train::{AdamW, AdamWConfig};

pub(super) fn cases(kit: &mut Kit) -> Result<()> {
    let sizes = [1usize, 7, 300];
    let cfg = AdamWConfig {
        betas: (0.9, 0.95),
        eps: 1e-8,
        weight_decay: 0.05,
    };
    let mut store = ParamStore::new();
    let mut grads = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        let at = 40_000_000 + 100_000 * k as u64;
        let id = store.add(format!("p{k}"), Tensor::from_vec(kit.values(n, at, 1.0), [n])?)?;
        grads.push(Tensor::from_vec(kit.values(n, at + 10_000, 0.1), [n])?);
        store.accumulate_grad(id, grads[k].clone())?;
    }
    let mut opt = AdamW::new(cfg, &store);
    opt.step = 4;
    for (k, &n) in sizes.iter().enumerate() {
        let at = 41_000_000 + 100_000 * k as u64;
        opt.m[k] = kit.values(n, at, 0.05);
        opt.v[k] = kit.values(n, at + 10_000, 0.01).iter().map(|v| v.abs()).collect();
    }
    let on_dev: Vec<[Tensor; 4]> = store
        .iter()
        .enumerate()
        .map(|(k, (_, p))| -> Result<[Tensor; 4]> {
            let n = sizes[k];
            Ok([
                p.value.to_device(kit.dev)?,
                grads[k].to_device(kit.dev)?,
                kit.up(&opt.m[k], [n])?,
                kit.up(&opt.v[k], [n])?,
            ])
        })
        .collect::<Result<_>>()?;
    let want_sq: f64 = grads
        .iter()
        .map(|g| Ok(g.to_f64_vec()?.iter().map(|v| v * v).sum::<f64>()))
        .sum::<Result<f64>>()?;
    let got_sq = gpu::sum_of_squares_multi(&on_dev.iter().map(|t| &t[1]).collect::<Vec<_>>())?;
    kit.push(
        "grad_sq_multi",
        format!("{} tensors", sizes.len()),
        ((got_sq - want_sq) / want_sq).abs(),
    );
    // The norm and clip factor on the device, for a maximum that clips to ~0.7.
    let norm = want_sq.sqrt();
    let max_norm = 0.7 * (norm + 1e-6);
    let clip = crate::train::clip_factor(norm, max_norm);
    let grads_dev: Vec<&Tensor> = on_dev.iter().map(|t| &t[1]).collect();
    let clip_dev = gpu::clip_norm(&grads_dev, max_norm)?;
    let got = clip_dev.to_f64_vec()?;
    kit.push("clip_factor", "global norm", ((got[0] - norm) / norm).abs());
    kit.push(
        "clip_factor",
        format!("factor {clip:.3}"),
        ((got[1] - clip) / clip).abs(),
    );
    let s = gpu::AdamWStep {
        lr: 1e-3,
        betas: cfg.betas,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
        t: 5,
    };
    let rows: Vec<[&Tensor; 4]> = on_dev.iter().map(|t| [&t[0], &t[1], &t[2], &t[3]]).collect();
    // A NaN factor (a norm that is not finite) must leave everything alone.
    let before: Vec<Vec<f32>> = on_dev.iter().map(|t| host(&t[0])).collect::<Result<_>>()?;
    gpu::adamw_multi(&rows, &s, &gpu::clip_values(kit.dev, f64::NAN, f64::NAN)?)?;
    let mut moved = 0.0f64;
    for (k, b) in before.iter().enumerate() {
        moved = moved.max(rel(&host(&on_dev[k][0])?, b));
    }
    kit.push("adamw_multi", "NaN clip factor: no change", moved);
    opt.update_clipped(&mut store, 1e-3, clip)?;
    // The largest weight keeps a bf16 copy (as a mixed-precision GEMM
    // leaves it); the update must rewrite it from the new values.
    let last = sizes.len() - 1;
    gpu::bf16_bits(&on_dev[last][0])?;
    gpu::adamw_multi(&rows, &s, &clip_dev)?;
    let new_w = host(&on_dev[last][0])?;
    let stale = gpu::bf16_bits(&on_dev[last][0])?
        .iter()
        .zip(&new_w)
        .filter(|(b, w)| **b != half::bf16::from_f32(**w).to_bits())
        .count();
    kit.push(
        "adamw_multi",
        format!("bf16 copy rewritten ({stale} of {} stale)", new_w.len()),
        if stale == 0 { 0.0 } else { 1.0 },
    );
    let mut worst = 0.0f64;
    for (k, (_, p)) in store.iter().enumerate() {
        worst = worst
            .max(rel(&host(&on_dev[k][0])?, &p.value.to_vec::<f32>()?))
            .max(rel(&host(&on_dev[k][2])?, &opt.m[k]))
            .max(rel(&host(&on_dev[k][3])?, &opt.v[k]));
    }
    kit.push("adamw_multi", format!("{} tensors, clip {clip}", sizes.len()), worst);
    Ok(())
}
