//! The optimizer (kernels/optim.cu): the global gradient norm and clip
//! factor, and AdamW over every parameter in one launch, through a table
//! of device addresses.

use std::sync::Arc;

use super::{device_of, empty, grid_stride, int, k, storage, storage_values, values, THREADS};
use crate::device::{DeviceVec, Launch, SharedDevice};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The settings of one AdamW step.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    /// The step number, from 1.
    pub t: u64,
}

/// The address table and flat starts of a multi-tensor launch.
struct MultiTable<'d> {
    table: DeviceVec<'d>,
    starts: DeviceVec<'d>,
    count: usize,
    total: usize,
}

/// The addresses of each row's tensors (one row a parameter, its tensors of
/// one size), and one more per row when `extra` gives one.
fn multi_table<'d>(
    dev: &'d SharedDevice,
    op: &'static str,
    rows: &[Vec<&Tensor>],
    extra: impl Fn(usize) -> Result<Option<u64>>,
) -> Result<MultiTable<'d>> {
    let mut table = Vec::new();
    let mut starts = vec![0u64];
    for (k, row) in rows.iter().enumerate() {
        let n = row[0].numel();
        for t in row {
            if t.numel() != n {
                return Err(Error::invalid(op, "tensors of one parameter differ in size"));
            }
            let s = storage(op, t)?;
            if !Arc::ptr_eq(&s.dev, dev) {
                return Err(Error::invalid(op, "operands live on different devices"));
            }
            table.push(dev.address(storage_values(s)?)?);
        }
        if let Some(a) = extra(k)? {
            table.push(a);
        }
        starts.push(starts[starts.len() - 1] + n as u64);
    }
    let total = starts[starts.len() - 1] as usize;
    Ok(MultiTable {
        table: DeviceVec::from_slice(&**dev, &table)?,
        starts: DeviceVec::from_slice(&**dev, &starts)?,
        count: rows.len(),
        total,
    })
}

/// Per-block partial sums of g² over every tensor of `grads`, in one launch.
fn grad_sq_partials(grads: &[&Tensor]) -> Result<Tensor> {
    const OP: &str = "grad_sq_multi";
    let dev = device_of(OP, &grads[..1])?;
    let rows: Vec<Vec<&Tensor>> = grads.iter().map(|g| vec![*g]).collect();
    let t = multi_table(&dev, OP, &rows, |_| Ok(None))?;
    let blocks = t.total.div_ceil(THREADS as usize).clamp(1, 256);
    let partial = empty(&dev, [blocks])?;
    k::grad_sq_multi(
        &*dev,
        &Launch::linear(blocks as u32, THREADS, THREADS * 4),
        &t.table.buf,
        &t.starts.buf,
        int(t.count)?,
        values(OP, &partial)?,
    )?;
    Ok(partial)
}

/// Σ g² over every tensor of `grads` (f64 sum of per-block partials, read
/// back to the host).
pub fn sum_of_squares_multi(grads: &[&Tensor]) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    let partial = grad_sq_partials(grads)?;
    Ok(partial.to_cpu()?.to_vec::<f32>()?.iter().map(|&v| v as f64).sum())
}

/// The global gradient norm and PyTorch's clip factor for `max_norm`, left
/// on the device as `[norm, factor]` (factor NaN when the norm is not
/// finite, so `adamw_multi` leaves everything as it was).
pub fn clip_norm(grads: &[&Tensor], max_norm: f64) -> Result<Tensor> {
    const OP: &str = "clip_factor";
    if grads.is_empty() {
        return Err(Error::invalid(OP, "no gradients to clip"));
    }
    let dev = device_of(OP, &grads[..1])?;
    let partial = grad_sq_partials(grads)?;
    let out = empty(&dev, [2])?;
    k::clip_factor(
        &*dev,
        &Launch::linear(1, 1, 0),
        values(OP, &partial)?,
        int(partial.numel())?,
        max_norm,
        values(OP, &out)?,
    )?;
    Ok(out)
}

/// `[norm, factor]` for `adamw_multi` from a clip factor decided on the host.
pub fn clip_values(dev: &SharedDevice, norm: f64, factor: f64) -> Result<Tensor> {
    Tensor::from_vec(vec![norm as f32, factor as f32], [2])?.to_device(dev)
}

/// One AdamW step of every `(w, g, m, v)` in one launch, in place, the
/// gradients scaled by the clip factor in `clip_norm[1]` (`clip_norm`'s
/// output, or `[norm, factor]` uploaded); a NaN factor skips the step.
pub fn adamw_multi(params: &[[&Tensor; 4]], s: &AdamWStep, clip_norm: &Tensor) -> Result<()> {
    const OP: &str = "adamw_multi";
    if params.is_empty() {
        return Ok(());
    }
    let dev = device_of(OP, &[params[0][0], clip_norm])?;
    if clip_norm.numel() != 2 {
        return Err(Error::bad_shape(OP, clip_norm.shape(), "[norm, clip factor] expected"));
    }
    let rows: Vec<Vec<&Tensor>> = params.iter().map(|p| p.to_vec()).collect();
    // A fifth address per parameter: its weight's bf16 copy, rewritten by
    // the update so it stays the copy of the new values (0: none kept).
    let t = multi_table(&dev, OP, &rows, |k| {
        Ok(Some(match storage(OP, params[k][0])?.bf16.get() {
            Some(b) => dev.address(b)?,
            None => 0,
        }))
    })?;
    let bc1 = 1.0 - s.betas.0.powi(s.t as i32);
    let bc2 = 1.0 - s.betas.1.powi(s.t as i32);
    let f = |x: f64| x as f32;
    k::adamw_multi(
        &*dev,
        &grid_stride(t.total),
        &t.table.buf,
        &t.starts.buf,
        int(t.count)?,
        f(s.lr),
        f(s.betas.0),
        f(s.betas.1),
        f(s.eps),
        f(s.weight_decay),
        f(bc1),
        f(bc2.sqrt()),
        values(OP, clip_norm)?,
    )
}
