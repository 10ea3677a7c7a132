//! The emulator: the .cu kernels compiled for the host (see build.rs and
//! kernels/emu/), launched with a CUDA-like geometry. Blocks run one after
//! another, the threads of a block as real threads meeting at barriers.
//!
//! The launch functions are `unsafe`: like a CUDA launch, they trust the
//! pointers and sizes they are given. The safe wrappers below check lengths
//! first.

use crate::backend::kernels::RngStreamC;
use crate::error::{Error, Result};
use crate::rng::RngStream;

/// Grid, block and dynamic shared memory of one launch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EmuLaunch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl EmuLaunch {
    pub fn linear(blocks: u32, threads: u32, shared_bytes: u32) -> Self {
        EmuLaunch {
            grid: [blocks.max(1), 1, 1],
            block: [threads.max(1), 1, 1],
            shared_bytes,
        }
    }
}

#[allow(clippy::too_many_arguments)]
mod ffi {
    use super::EmuLaunch;
    include!(concat!(env!("OUT_DIR"), "/emu_ffi.rs"));
}

/// A small grid for pointwise kernels: enough blocks to run every
/// grid-stride loop path, few enough to keep tests quick.
fn pointwise(n: usize) -> EmuLaunch {
    EmuLaunch::linear(((n as u32).div_ceil(64)).min(4), 64, 0)
}

fn same_len(op: &'static str, a: usize, b: usize) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(Error::invalid(op, format!("lengths {a} and {b} differ")))
    }
}

pub fn gelu_forward(x: &[f32]) -> Vec<f32> {
    let mut y = vec![f32::NAN; x.len()];
    // SAFETY: both buffers hold x.len() values.
    unsafe { ffi::emu_launch_gelu_forward(&pointwise(x.len()), x.as_ptr(), y.as_mut_ptr(), x.len() as u64) };
    y
}

pub fn gelu_backward(g: &[f32], x: &[f32]) -> Result<Vec<f32>> {
    same_len("gelu_backward", g.len(), x.len())?;
    let mut dx = vec![f32::NAN; x.len()];
    // SAFETY: all three buffers hold x.len() values.
    unsafe {
        ffi::emu_launch_gelu_backward(
            &pointwise(x.len()),
            g.as_ptr(),
            x.as_ptr(),
            dx.as_mut_ptr(),
            x.len() as u64,
        )
    };
    Ok(dx)
}

pub fn dropout_forward(x: &[f32], p: f64, rng: RngStream) -> Vec<f32> {
    let mut y = vec![f32::NAN; x.len()];
    // SAFETY: both buffers hold x.len() values.
    unsafe {
        ffi::emu_launch_dropout_forward(
            &pointwise(x.len()),
            x.as_ptr(),
            y.as_mut_ptr(),
            x.len() as u64,
            p,
            RngStreamC::from(rng),
        )
    };
    y
}

pub fn gate_mix_forward(x: &[f32], y: &[f32], a: f32) -> Result<Vec<f32>> {
    same_len("gate_mix_forward", x.len(), y.len())?;
    let mut out = vec![f32::NAN; x.len()];
    let av = [a];
    // SAFETY: x, y and out hold x.len() values; a holds one.
    unsafe {
        ffi::emu_launch_gate_mix_forward(
            &pointwise(x.len()),
            x.as_ptr(),
            y.as_ptr(),
            av.as_ptr(),
            out.as_mut_ptr(),
            x.len() as u64,
        )
    };
    Ok(out)
}

/// Returns `(y, mean, rstd)`.
pub fn layer_norm_forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    cols: usize,
    eps: f32,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    same_len("layer_norm_forward", w.len(), cols)?;
    same_len("layer_norm_forward", b.len(), cols)?;
    if cols == 0 || x.len() % cols != 0 {
        return Err(Error::invalid(
            "layer_norm_forward",
            format!("{} values are not rows of {cols}", x.len()),
        ));
    }
    let rows = x.len() / cols;
    let (mut y, mut mean, mut rstd) = (vec![f32::NAN; x.len()], vec![f32::NAN; rows], vec![f32::NAN; rows]);
    let threads = 32u32;
    let cfg = EmuLaunch::linear(rows as u32, threads, threads * 4);
    // SAFETY: x and y hold rows·cols values, w and b cols, mean and rstd rows;
    // the block's shared buffer holds one float per thread.
    unsafe {
        ffi::emu_launch_layer_norm_forward(
            &cfg,
            x.as_ptr(),
            w.as_ptr(),
            b.as_ptr(),
            y.as_mut_ptr(),
            mean.as_mut_ptr(),
            rstd.as_mut_ptr(),
            rows as i32,
            cols as i32,
            eps,
        )
    };
    Ok((y, mean, rstd))
}

/// The fused superpatch input (kernels/input.cu): `hu` is `B × D × H × W`,
/// `ids_keep` holds `nv` tokens per item; returns `B × nv × P` rows.
#[allow(clippy::too_many_arguments)]
pub fn superpatch_input(
    hu: &[i16],
    batch: usize,
    size: [usize; 3],
    patch: [usize; 3],
    ids_keep: &[usize],
    sigma: f64,
    noise: RngStream,
) -> Result<Vec<f32>> {
    let [d, h, w] = size;
    let [pd, ph, pw] = patch;
    same_len("superpatch_input", hu.len(), batch * d * h * w)?;
    if batch == 0 || ids_keep.len() % batch != 0 || size.iter().zip(&patch).any(|(s, p)| *p == 0 || s % p != 0) {
        return Err(Error::invalid(
            "superpatch_input",
            "inconsistent batch, sizes or ids_keep",
        ));
    }
    let n = (d / pd) * (h / ph) * (w / pw);
    if let Some(&bad) = ids_keep.iter().find(|&&i| i >= n) {
        return Err(Error::invalid(
            "superpatch_input",
            format!("token {bad} out of range for {n}"),
        ));
    }
    let nv = ids_keep.len() / batch;
    let p = pd * ph * pw;
    let ids: Vec<i32> = ids_keep.iter().map(|&i| i as i32).collect();
    let mut out = vec![f32::NAN; batch * nv * p];
    // SAFETY: every buffer was sized above and every token index checked.
    unsafe {
        ffi::emu_launch_superpatch_input(
            &pointwise(out.len()),
            hu.as_ptr(),
            ids.as_ptr(),
            out.as_mut_ptr(),
            batch as i32,
            d as i32,
            h as i32,
            w as i32,
            pd as i32,
            ph as i32,
            pw as i32,
            nv as i32,
            sigma,
            RngStreamC::from(noise),
        )
    };
    Ok(out)
}

/// Attention forward (kernels/attention.cu) over a `rows × 3E` QKV matrix:
/// returns the `rows × E` output and the log-sum-exp per (sequence, head, row).
pub fn attention_forward(
    qkv: &[f32],
    layout: crate::tensor::SeqLayout,
    heads: usize,
    e: usize,
    dropout: Option<(f64, RngStream)>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let rows = layout.num_rows();
    layout.validate(rows)?;
    same_len("attention_forward", qkv.len(), rows * 3 * e)?;
    if heads == 0 || e % heads != 0 {
        return Err(Error::invalid(
            "attention_forward",
            "E must be a multiple of the head count",
        ));
    }
    let (p, rng) = dropout.unwrap_or((0.0, RngStream::new(0, 0)));
    let mut out = vec![f32::NAN; rows * e];
    let mut lse = vec![f32::NAN; layout.num_seqs() * heads * layout.len];
    // SAFETY: the layout covers rows exactly once and every buffer is sized from it.
    unsafe {
        ffi::emu_launch_attention_forward(
            &pointwise(lse.len()),
            qkv.as_ptr(),
            out.as_mut_ptr(),
            lse.as_mut_ptr(),
            layout.into(),
            heads as i32,
            e as i32,
            p,
            RngStreamC::from(rng),
        )
    };
    Ok((out, lse))
}

/// Attention backward: the gradient with respect to the QKV matrix.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    qkv: &[f32],
    out: &[f32],
    dout: &[f32],
    lse: &[f32],
    layout: crate::tensor::SeqLayout,
    heads: usize,
    e: usize,
    dropout: Option<(f64, RngStream)>,
) -> Result<Vec<f32>> {
    let rows = layout.num_rows();
    layout.validate(rows)?;
    same_len("attention_backward", qkv.len(), rows * 3 * e)?;
    same_len("attention_backward", out.len(), rows * e)?;
    same_len("attention_backward", dout.len(), rows * e)?;
    same_len("attention_backward", lse.len(), layout.num_seqs() * heads * layout.len)?;
    let (p, rng) = dropout.unwrap_or((0.0, RngStream::new(0, 0)));
    let mut dqkv = vec![f32::NAN; qkv.len()];
    let cfg = pointwise(lse.len());
    // SAFETY: as for the forward; dq and dk/dv write disjoint columns of dqkv.
    unsafe {
        ffi::emu_launch_attention_backward_dq(
            &cfg,
            qkv.as_ptr(),
            out.as_ptr(),
            dout.as_ptr(),
            lse.as_ptr(),
            dqkv.as_mut_ptr(),
            layout.into(),
            heads as i32,
            e as i32,
            p,
            RngStreamC::from(rng),
        );
        ffi::emu_launch_attention_backward_dkv(
            &cfg,
            qkv.as_ptr(),
            out.as_ptr(),
            dout.as_ptr(),
            lse.as_ptr(),
            dqkv.as_mut_ptr(),
            layout.into(),
            heads as i32,
            e as i32,
            p,
            RngStreamC::from(rng),
        );
    }
    Ok(dqkv)
}

/// Layer-norm backward: `(dx, dw, db)` from the saved row statistics.
pub fn layer_norm_backward(
    g: &[f32],
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    cols: usize,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    same_len("layer_norm_backward", g.len(), x.len())?;
    same_len("layer_norm_backward", w.len(), cols)?;
    if cols == 0 || x.len() % cols != 0 {
        return Err(Error::invalid("layer_norm_backward", "values are not whole rows"));
    }
    let rows = x.len() / cols;
    same_len("layer_norm_backward", mean.len(), rows)?;
    same_len("layer_norm_backward", rstd.len(), rows)?;
    let (mut dx, mut dw, mut db) = (vec![f32::NAN; x.len()], vec![f32::NAN; cols], vec![f32::NAN; cols]);
    // SAFETY: every buffer was sized above; the shared buffer holds one float per thread.
    unsafe {
        ffi::emu_launch_layer_norm_backward_dx(
            &EmuLaunch::linear(rows as u32, 32, 32 * 4),
            g.as_ptr(),
            x.as_ptr(),
            w.as_ptr(),
            mean.as_ptr(),
            rstd.as_ptr(),
            dx.as_mut_ptr(),
            rows as i32,
            cols as i32,
        );
        ffi::emu_launch_layer_norm_backward_dwdb(
            &pointwise(cols),
            g.as_ptr(),
            x.as_ptr(),
            mean.as_ptr(),
            rstd.as_ptr(),
            dw.as_mut_ptr(),
            db.as_mut_ptr(),
            rows as i32,
            cols as i32,
        );
    }
    Ok((dx, dw, db))
}

fn checked_ids(op: &'static str, idx: &[usize], limit: usize) -> Result<Vec<i32>> {
    idx.iter()
        .map(|&i| {
            if i < limit {
                Ok(i as i32)
            } else {
                Err(Error::invalid(op, format!("index {i} out of range for {limit}")))
            }
        })
        .collect()
}

/// Rows `idx` of each item of `x` (`batch × n_src × e`).
pub fn gather_rows(x: &[f32], idx: &[usize], batch: usize, n_src: usize, e: usize) -> Result<Vec<f32>> {
    same_len("gather_rows", x.len(), batch * n_src * e)?;
    if batch == 0 || idx.len() % batch != 0 {
        return Err(Error::invalid("gather_rows", "indices do not split over the batch"));
    }
    let ids = checked_ids("gather_rows", idx, n_src)?;
    let n = idx.len() / batch;
    let mut y = vec![f32::NAN; batch * n * e];
    // SAFETY: sizes and indices checked above.
    unsafe {
        ffi::emu_launch_gather_rows(
            &pointwise(y.len()),
            x.as_ptr(),
            ids.as_ptr(),
            y.as_mut_ptr(),
            batch as i32,
            n_src as i32,
            n as i32,
            e as i32,
        )
    };
    Ok(y)
}

/// The decoder input: latent rows at `ids_keep`, the mask token elsewhere,
/// plus `scale · pe` (`n × e`).
pub fn scatter_mask_pe(
    latent: &[f32],
    ids_keep: &[usize],
    mask_token: &[f32],
    pe: &[f32],
    scale: f32,
    batch: usize,
    n: usize,
) -> Result<Vec<f32>> {
    let e = mask_token.len();
    same_len("scatter_mask_pe", pe.len(), n * e)?;
    if batch == 0 || ids_keep.len() % batch != 0 {
        return Err(Error::invalid("scatter_mask_pe", "indices do not split over the batch"));
    }
    let nv = ids_keep.len() / batch;
    same_len("scatter_mask_pe", latent.len(), batch * nv * e)?;
    checked_ids("scatter_mask_pe", ids_keep, n)?;
    let mut slot = vec![-1i32; batch * n];
    for (k, &i) in ids_keep.iter().enumerate() {
        slot[(k / nv) * n + i] = (k % nv) as i32;
    }
    let mut y = vec![f32::NAN; batch * n * e];
    let s = [scale];
    // SAFETY: sizes checked above; `slot` holds −1 or a row of the item.
    unsafe {
        ffi::emu_launch_scatter_mask_pe(
            &pointwise(y.len()),
            latent.as_ptr(),
            slot.as_ptr(),
            mask_token.as_ptr(),
            pe.as_ptr(),
            s.as_ptr(),
            y.as_mut_ptr(),
            batch as i32,
            n as i32,
            nv as i32,
            e as i32,
        )
    };
    Ok(y)
}

/// Σ g² through per-block partials added in block order.
pub fn grad_sq_sum(g: &[f32]) -> f64 {
    let cfg = EmuLaunch::linear(4, 64, 64 * 4);
    let mut partial = vec![0.0f32; 4];
    // SAFETY: four partials for four blocks; the shared buffer holds 64 floats.
    unsafe { ffi::emu_launch_grad_sq_partials(&cfg, g.as_ptr(), partial.as_mut_ptr(), g.len() as u64) };
    partial.iter().map(|&v| v as f64).sum()
}

/// One AdamW step (kernels/optim.cu) on flat slices; `t` is the step number (from 1).
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    t: u64,
    clip: f64,
) -> Result<()> {
    for len in [g.len(), m.len(), v.len()] {
        same_len("adamw_step", w.len(), len)?;
    }
    let bc1 = 1.0 - betas.0.powi(t as i32);
    let bc2 = 1.0 - betas.1.powi(t as i32);
    // SAFETY: four slices of one length.
    unsafe {
        ffi::emu_launch_adamw_step(
            &pointwise(w.len()),
            w.as_mut_ptr(),
            g.as_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            w.len() as u64,
            lr as f32,
            betas.0 as f32,
            betas.1 as f32,
            eps as f32,
            weight_decay as f32,
            bc1 as f32,
            bc2.sqrt() as f32,
            clip as f32,
        )
    };
    Ok(())
}

/// SPEC 7's masked loss through the kernels: per-token errors on the device,
/// the weighted sum on the host in token order. Returns `(loss, sse, dpred)`
/// for an upstream gradient `g`.
pub fn masked_mse(pred: &[f32], target: &[f32], mask: &[f32], p: usize, g: f32) -> Result<(f64, f64, Vec<f32>)> {
    same_len("masked_mse", pred.len(), target.len())?;
    if p == 0 || pred.len() != mask.len() * p {
        return Err(Error::invalid(
            "masked_mse",
            "the mask needs one value per token of P values",
        ));
    }
    let tokens = mask.len();
    let (mut e, mut sq) = (vec![f32::NAN; tokens], vec![f32::NAN; tokens]);
    // SAFETY: pred and target hold tokens·p values, e and sq tokens.
    unsafe {
        ffi::emu_launch_token_errors(
            &pointwise(tokens),
            pred.as_ptr(),
            target.as_ptr(),
            e.as_mut_ptr(),
            sq.as_mut_ptr(),
            tokens as i32,
            p as i32,
        )
    };
    let total: f64 = mask.iter().map(|&m| m as f64).sum();
    let weight: Vec<f32> = mask
        .iter()
        .map(|&m| if total == 0.0 { 1.0 / tokens as f64 } else { m as f64 / total } as f32)
        .collect();
    let loss: f64 = weight.iter().zip(&e).map(|(&w, &e)| w as f64 * e as f64).sum();
    let sse: f64 = sq.iter().map(|&v| v as f64).sum();
    let mut grad = vec![f32::NAN; pred.len()];
    // SAFETY: as above; weight holds one value per token.
    unsafe {
        ffi::emu_launch_masked_mse_backward(
            &pointwise(pred.len()),
            pred.as_ptr(),
            target.as_ptr(),
            weight.as_ptr(),
            grad.as_mut_ptr(),
            g,
            tokens as i32,
            p as i32,
        )
    };
    Ok((loss, sse, grad))
}

/// Mean over the middle axis of `outer × n × inner`.
pub fn mean_axis(x: &[f32], outer: usize, n: usize, inner: usize) -> Result<Vec<f32>> {
    same_len("mean_axis", x.len(), outer * n * inner)?;
    if n == 0 {
        return Err(Error::invalid("mean_axis", "the axis is empty"));
    }
    let mut y = vec![f32::NAN; outer * inner];
    // SAFETY: sizes checked above.
    unsafe {
        ffi::emu_launch_mean_axis(
            &pointwise(y.len()),
            x.as_ptr(),
            y.as_mut_ptr(),
            outer as i32,
            n as i32,
            inner as i32,
        )
    };
    Ok(y)
}
