//! Host-side launchers of the kernels, written once against `DeviceApi`:
//! inputs are uploaded, outputs are poisoned with NaN, the kernel runs, the
//! results come back. The emulator and the CUDA device run the same code.

use crate::device::{Arg, DeviceApi, DeviceVec, Launch};
use crate::error::{Error, Result};
use crate::rng::RngStream;
use crate::tensor::SeqLayout;

/// The grid of a grid-stride kernel, as the model's ops launch it.
fn pointwise(n: usize) -> Launch {
    super::gpu::grid_stride(n)
}

fn same_len(op: &'static str, a: usize, b: usize) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(Error::invalid(op, format!("lengths {a} and {b} differ")))
    }
}

fn ids(op: &'static str, idx: &[usize], limit: usize) -> Result<Vec<i32>> {
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

pub fn gelu_forward(dev: &dyn DeviceApi, x: &[f32]) -> Result<Vec<f32>> {
    let (dx, y) = (DeviceVec::from_slice(dev, x)?, DeviceVec::poisoned_f32(dev, x.len())?);
    dev.launch(
        "gelu_forward",
        &pointwise(x.len()),
        &[dx.arg(), y.arg(), Arg::U64(x.len() as u64)],
    )?;
    y.to_vec()
}

pub fn gelu_backward(dev: &dyn DeviceApi, g: &[f32], x: &[f32]) -> Result<Vec<f32>> {
    same_len("gelu_backward", g.len(), x.len())?;
    let (dg, dx_in, out) = (
        DeviceVec::from_slice(dev, g)?,
        DeviceVec::from_slice(dev, x)?,
        DeviceVec::poisoned_f32(dev, x.len())?,
    );
    dev.launch(
        "gelu_backward",
        &pointwise(x.len()),
        &[dg.arg(), dx_in.arg(), out.arg(), Arg::U64(x.len() as u64)],
    )?;
    out.to_vec()
}

pub fn dropout_forward(dev: &dyn DeviceApi, x: &[f32], p: f64, rng: RngStream) -> Result<Vec<f32>> {
    let (dx, y) = (DeviceVec::from_slice(dev, x)?, DeviceVec::poisoned_f32(dev, x.len())?);
    dev.launch(
        "dropout_forward",
        &pointwise(x.len()),
        &[dx.arg(), y.arg(), Arg::U64(x.len() as u64), Arg::F64(p), Arg::Rng(rng)],
    )?;
    y.to_vec()
}

pub fn gate_mix_forward(dev: &dyn DeviceApi, x: &[f32], y: &[f32], a: f32) -> Result<Vec<f32>> {
    same_len("gate_mix_forward", x.len(), y.len())?;
    let (dx, dy, da, out) = (
        DeviceVec::from_slice(dev, x)?,
        DeviceVec::from_slice(dev, y)?,
        DeviceVec::from_slice(dev, &[a])?,
        DeviceVec::poisoned_f32(dev, x.len())?,
    );
    dev.launch(
        "gate_mix_forward",
        &pointwise(x.len()),
        &[dx.arg(), dy.arg(), da.arg(), out.arg(), Arg::U64(x.len() as u64)],
    )?;
    out.to_vec()
}

/// Returns `(y, mean, rstd)`.
pub fn layer_norm_forward(
    dev: &dyn DeviceApi,
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
    let (dx, dw, db) = (
        DeviceVec::from_slice(dev, x)?,
        DeviceVec::from_slice(dev, w)?,
        DeviceVec::from_slice(dev, b)?,
    );
    let (y, mean, rstd) = (
        DeviceVec::poisoned_f32(dev, x.len())?,
        DeviceVec::poisoned_f32(dev, rows)?,
        DeviceVec::poisoned_f32(dev, rows)?,
    );
    dev.launch(
        "layer_norm_forward",
        &Launch::linear(rows as u32, 128, 4 * 4),
        &[
            dx.arg(),
            dw.arg(),
            db.arg(),
            y.arg(),
            mean.arg(),
            rstd.arg(),
            Arg::I32(rows as i32),
            Arg::I32(cols as i32),
            Arg::F32(eps),
            y.arg(),
            Arg::I32(0),
        ],
    )?;
    Ok((y.to_vec()?, mean.to_vec()?, rstd.to_vec()?))
}

/// Layer-norm backward: `(dx, dw, db)` from the saved row statistics.
pub fn layer_norm_backward(
    dev: &dyn DeviceApi,
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
    let (dg, dxi, dw_in) = (
        DeviceVec::from_slice(dev, g)?,
        DeviceVec::from_slice(dev, x)?,
        DeviceVec::from_slice(dev, w)?,
    );
    let (dm, dr) = (DeviceVec::from_slice(dev, mean)?, DeviceVec::from_slice(dev, rstd)?);
    let (dx, dw, db) = (
        DeviceVec::poisoned_f32(dev, x.len())?,
        DeviceVec::poisoned_f32(dev, cols)?,
        DeviceVec::poisoned_f32(dev, cols)?,
    );
    let (r, c) = (Arg::I32(rows as i32), Arg::I32(cols as i32));
    dev.launch(
        "layer_norm_backward_dx",
        &Launch::linear(rows as u32, 128, 4 * 4),
        &[dg.arg(), dxi.arg(), dw_in.arg(), dm.arg(), dr.arg(), dx.arg(), r, c],
    )?;
    dev.launch(
        "layer_norm_backward_dwdb",
        &pointwise(cols),
        &[dg.arg(), dxi.arg(), dm.arg(), dr.arg(), dw.arg(), db.arg(), r, c],
    )?;
    Ok((dx.to_vec()?, dw.to_vec()?, db.to_vec()?))
}

/// The fused superpatch input (kernels/input.cu): `hu` is `B × D × H × W`,
/// `ids_keep` holds the same number of tokens per item; returns `B × nv × P` rows.
#[allow(clippy::too_many_arguments)]
pub fn superpatch_input(
    dev: &dyn DeviceApi,
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
    let idx = ids("superpatch_input", ids_keep, n)?;
    let nv = ids_keep.len() / batch;
    let total = batch * nv * pd * ph * pw;
    let (dhu, di, out) = (
        DeviceVec::from_slice(dev, hu)?,
        DeviceVec::from_slice(dev, &idx)?,
        DeviceVec::poisoned_f32(dev, total)?,
    );
    let int = |v: usize| Arg::I32(v as i32);
    dev.launch(
        "superpatch_input",
        &pointwise(total),
        &[
            dhu.arg(),
            di.arg(),
            out.arg(),
            int(batch),
            int(d),
            int(h),
            int(w),
            int(pd),
            int(ph),
            int(pw),
            int(nv),
            Arg::F64(sigma),
            Arg::Rng(noise),
        ],
    )?;
    out.to_vec()
}

/// Attention forward over a `rows × 3E` QKV matrix: the `rows × E` output and
/// the log-sum-exp per (sequence, head, row).
pub fn attention_forward(
    dev: &dyn DeviceApi,
    qkv: &[f32],
    layout: SeqLayout,
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
    let n_lse = layout.num_seqs() * heads * layout.len;
    let (dq, out, lse) = (
        DeviceVec::from_slice(dev, qkv)?,
        DeviceVec::poisoned_f32(dev, rows * e)?,
        DeviceVec::poisoned_f32(dev, n_lse)?,
    );
    dev.launch(
        "attention_forward",
        &pointwise(n_lse),
        &[
            dq.arg(),
            out.arg(),
            lse.arg(),
            Arg::Layout(layout),
            Arg::I32(heads as i32),
            Arg::I32(e as i32),
            Arg::F64(p),
            Arg::Rng(rng),
            out.arg(),
            Arg::I32(0),
        ],
    )?;
    Ok((out.to_vec()?, lse.to_vec()?))
}

/// Attention backward: the gradient with respect to the QKV matrix.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dev: &dyn DeviceApi,
    qkv: &[f32],
    out: &[f32],
    dout: &[f32],
    lse: &[f32],
    layout: SeqLayout,
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
    let (dq, dout_v, dgo, dl) = (
        DeviceVec::from_slice(dev, qkv)?,
        DeviceVec::from_slice(dev, out)?,
        DeviceVec::from_slice(dev, dout)?,
        DeviceVec::from_slice(dev, lse)?,
    );
    let grad = DeviceVec::poisoned_f32(dev, qkv.len())?;
    let args = [
        dq.arg(),
        dout_v.arg(),
        dgo.arg(),
        dl.arg(),
        grad.arg(),
        Arg::Layout(layout),
        Arg::I32(heads as i32),
        Arg::I32(e as i32),
        Arg::F64(p),
        Arg::Rng(rng),
    ];
    // The two kernels write disjoint columns (q, then k and v) of `grad`.
    dev.launch("attention_backward_dq", &pointwise(lse.len()), &args)?;
    dev.launch("attention_backward_dkv", &pointwise(lse.len()), &args)?;
    grad.to_vec()
}

/// Rows `idx` of each item of `x` (`batch × n_src × e`).
pub fn gather_rows(
    dev: &dyn DeviceApi,
    x: &[f32],
    idx: &[usize],
    batch: usize,
    n_src: usize,
    e: usize,
) -> Result<Vec<f32>> {
    same_len("gather_rows", x.len(), batch * n_src * e)?;
    if batch == 0 || idx.len() % batch != 0 {
        return Err(Error::invalid("gather_rows", "indices do not split over the batch"));
    }
    let i32s = ids("gather_rows", idx, n_src)?;
    let n = idx.len() / batch;
    let (dx, di, y) = (
        DeviceVec::from_slice(dev, x)?,
        DeviceVec::from_slice(dev, &i32s)?,
        DeviceVec::poisoned_f32(dev, batch * n * e)?,
    );
    let int = |v: usize| Arg::I32(v as i32);
    dev.launch(
        "gather_rows",
        &pointwise(batch * n * e),
        &[dx.arg(), di.arg(), y.arg(), int(batch), int(n_src), int(n), int(e)],
    )?;
    y.to_vec()
}

/// The decoder input: latent rows at `ids_keep`, the mask token elsewhere,
/// plus `scale · pe` (`n × e`).
#[allow(clippy::too_many_arguments)]
pub fn scatter_mask_pe(
    dev: &dyn DeviceApi,
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
    ids("scatter_mask_pe", ids_keep, n)?;
    let mut slot = vec![-1i32; batch * n];
    for (k, &i) in ids_keep.iter().enumerate() {
        slot[(k / nv) * n + i] = (k % nv) as i32;
    }
    let (dl, ds, dm, dp, dsc) = (
        DeviceVec::from_slice(dev, latent)?,
        DeviceVec::from_slice(dev, &slot)?,
        DeviceVec::from_slice(dev, mask_token)?,
        DeviceVec::from_slice(dev, pe)?,
        DeviceVec::from_slice(dev, &[scale])?,
    );
    let y = DeviceVec::poisoned_f32(dev, batch * n * e)?;
    let int = |v: usize| Arg::I32(v as i32);
    dev.launch(
        "scatter_mask_pe",
        &pointwise(batch * n * e),
        &[
            dl.arg(),
            ds.arg(),
            dm.arg(),
            dp.arg(),
            dsc.arg(),
            y.arg(),
            int(batch),
            int(n),
            int(nv),
            int(e),
        ],
    )?;
    y.to_vec()
}

/// Σ g² through per-block partials added in block order.
pub fn grad_sq_sum(dev: &dyn DeviceApi, g: &[f32]) -> Result<f64> {
    // Per-block partials as the model's ops split them (256 threads, at
    // most 256 blocks).
    let blocks = g.len().div_ceil(256).clamp(1, 256);
    let (dg, partial) = (DeviceVec::from_slice(dev, g)?, DeviceVec::poisoned_f32(dev, blocks)?);
    dev.launch(
        "grad_sq_partials",
        &Launch::linear(blocks as u32, 256, 256 * 4),
        &[dg.arg(), partial.arg(), Arg::U64(g.len() as u64)],
    )?;
    Ok(partial.to_vec::<f32>()?.iter().map(|&v| v as f64).sum())
}

/// One AdamW step (kernels/optim.cu) on flat slices; `t` is the step number (from 1).
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    dev: &dyn DeviceApi,
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
    let (dw, dg, dm, dv) = (
        DeviceVec::from_slice(dev, w)?,
        DeviceVec::from_slice(dev, g)?,
        DeviceVec::from_slice(dev, m)?,
        DeviceVec::from_slice(dev, v)?,
    );
    let f = |x: f64| Arg::F32(x as f32);
    dev.launch(
        "adamw_step",
        &pointwise(w.len()),
        &[
            dw.arg(),
            dg.arg(),
            dm.arg(),
            dv.arg(),
            Arg::U64(w.len() as u64),
            f(lr),
            f(betas.0),
            f(betas.1),
            f(eps),
            f(weight_decay),
            f(bc1),
            f(bc2.sqrt()),
            f(clip),
        ],
    )?;
    w.copy_from_slice(&dw.to_vec::<f32>()?);
    m.copy_from_slice(&dm.to_vec::<f32>()?);
    v.copy_from_slice(&dv.to_vec::<f32>()?);
    Ok(())
}

/// SPEC 7's masked loss: per-token errors on the device, the weighted sum
/// on the host in token order. Returns `(loss, sse, dpred)` for an upstream
/// gradient `g`.
pub fn masked_mse(
    dev: &dyn DeviceApi,
    pred: &[f32],
    target: &[f32],
    mask: &[f32],
    p: usize,
    g: f32,
) -> Result<(f64, f64, Vec<f32>)> {
    same_len("masked_mse", pred.len(), target.len())?;
    if p == 0 || pred.len() != mask.len() * p {
        return Err(Error::invalid(
            "masked_mse",
            "the mask needs one value per token of P values",
        ));
    }
    let tokens = mask.len();
    let (dp, dt) = (DeviceVec::from_slice(dev, pred)?, DeviceVec::from_slice(dev, target)?);
    let (e, sq) = (
        DeviceVec::poisoned_f32(dev, tokens)?,
        DeviceVec::poisoned_f32(dev, tokens)?,
    );
    let (tk, pk) = (Arg::I32(tokens as i32), Arg::I32(p as i32));
    dev.launch(
        "token_errors",
        &pointwise(tokens),
        &[dp.arg(), dt.arg(), e.arg(), sq.arg(), tk, pk],
    )?;
    let (dm, loss, sse) = (
        DeviceVec::from_slice(dev, mask)?,
        DeviceVec::poisoned_f32(dev, 1)?,
        DeviceVec::poisoned_f32(dev, 1)?,
    );
    dev.launch(
        "masked_mse_reduce",
        &Launch::linear(1, 256, 256 * 4 * 8),
        &[e.arg(), sq.arg(), dm.arg(), loss.arg(), sse.arg(), tk],
    )?;
    let total: f64 = mask.iter().map(|&m| m as f64).sum();
    let weight: Vec<f32> = mask
        .iter()
        .map(|&m| if total == 0.0 { 1.0 / tokens as f64 } else { m as f64 / total } as f32)
        .collect();
    let (dwt, dg, grad) = (
        DeviceVec::from_slice(dev, &weight)?,
        DeviceVec::from_slice(dev, &[g])?,
        DeviceVec::poisoned_f32(dev, pred.len())?,
    );
    dev.launch(
        "masked_mse_backward",
        &pointwise(pred.len()),
        &[
            dp.arg(),
            dt.arg(),
            dwt.arg(),
            grad.arg(),
            dg.arg(),
            tk,
            pk,
            grad.arg(),
            Arg::I32(0),
        ],
    )?;
    let (loss, sse) = (loss.to_vec::<f32>()?[0] as f64, sse.to_vec::<f32>()?[0] as f64);
    Ok((loss, sse, grad.to_vec()?))
}

/// Mean over the middle axis of `outer × n × inner`.
pub fn mean_axis(dev: &dyn DeviceApi, x: &[f32], outer: usize, n: usize, inner: usize) -> Result<Vec<f32>> {
    same_len("mean_axis", x.len(), outer * n * inner)?;
    if n == 0 {
        return Err(Error::invalid("mean_axis", "the axis is empty"));
    }
    let (dx, y) = (
        DeviceVec::from_slice(dev, x)?,
        DeviceVec::poisoned_f32(dev, outer * inner)?,
    );
    let int = |v: usize| Arg::I32(v as i32);
    dev.launch(
        "mean_axis",
        &pointwise(outer * inner),
        &[dx.arg(), y.arg(), int(outer), int(n), int(inner)],
    )?;
    y.to_vec()
}

pub fn sigmoid_forward(dev: &dyn DeviceApi, x: &[f32]) -> Result<Vec<f32>> {
    let (dx, y) = (DeviceVec::from_slice(dev, x)?, DeviceVec::poisoned_f32(dev, x.len())?);
    dev.launch(
        "sigmoid_forward",
        &pointwise(x.len()),
        &[dx.arg(), y.arg(), Arg::U64(x.len() as u64)],
    )?;
    y.to_vec()
}

/// `x + b`, `b` repeating every `b.len()` values.
pub fn add_broadcast(dev: &dyn DeviceApi, x: &[f32], b: &[f32]) -> Result<Vec<f32>> {
    if b.is_empty() || x.len() % b.len() != 0 {
        return Err(Error::invalid(
            "add_broadcast",
            format!("{} values do not repeat {} values", x.len(), b.len()),
        ));
    }
    let (dx, db, y) = (
        DeviceVec::from_slice(dev, x)?,
        DeviceVec::from_slice(dev, b)?,
        DeviceVec::poisoned_f32(dev, x.len())?,
    );
    dev.launch(
        "add_broadcast",
        &pointwise(x.len()),
        &[
            dx.arg(),
            db.arg(),
            y.arg(),
            Arg::U64(x.len() as u64),
            Arg::U64(b.len() as u64),
        ],
    )?;
    y.to_vec()
}

/// Column sums of a `rows × cols` matrix (the gradient of a broadcast operand).
pub fn column_sums(dev: &dyn DeviceApi, g: &[f32], cols: usize) -> Result<Vec<f32>> {
    if cols == 0 || g.len() % cols != 0 {
        return Err(Error::invalid("column_sums", "values are not whole rows"));
    }
    let (dg, out) = (DeviceVec::from_slice(dev, g)?, DeviceVec::poisoned_f32(dev, cols)?);
    dev.launch(
        "column_sums",
        &pointwise(cols),
        &[
            dg.arg(),
            out.arg(),
            Arg::U64((g.len() / cols) as u64),
            Arg::U64(cols as u64),
        ],
    )?;
    out.to_vec()
}
