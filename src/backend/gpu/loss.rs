//! The masked reconstruction loss and mean pooling (kernels/loss.cu): the
//! loss and the squared error stay on the device, reduced in one block in
//! a fixed order, so nothing in a step waits for the host.

use super::{device_of, empty, grid_stride, int, k, values, Output};
use crate::device::{DeviceVec, Launch};
use crate::error::{Error, Result};
use crate::tensor::{Readers, Shape, Tensor};

/// Threads of the one-block reductions (loss, clip factor).
pub(super) const REDUCE_THREADS: u32 = 256;

/// Per-token mean and sum of squared errors over the last dimension `p`,
/// left on the device.
fn token_errors(pred: &Tensor, target: &Tensor, p: usize) -> Result<(Tensor, Tensor)> {
    const OP: &str = "token_errors";
    let dev = device_of(OP, &[pred, target])?;
    let tokens = pred.numel() / p.max(1);
    let (e, sq) = (empty(&dev, [tokens])?, empty(&dev, [tokens])?);
    k::token_errors(
        &*dev,
        &grid_stride(tokens),
        values(OP, pred)?,
        values(OP, target)?,
        values(OP, &e)?,
        values(OP, &sq)?,
        int(tokens)?,
        int(p)?,
    )?;
    Ok((e, sq))
}

/// The weight of each token in the loss: mask / Σ mask, or 1/tokens when
/// nothing is masked.
fn token_weights(mask: &[f32]) -> Vec<f64> {
    let total: f64 = mask.iter().map(|&m| m as f64).sum();
    mask.iter()
        .map(|&m| {
            if total == 0.0 {
                1.0 / mask.len() as f64
            } else {
                m as f64 / total
            }
        })
        .collect()
}

/// The masked loss (0-d) and the sum of squared errors over every value
/// (0-d, for the PSNR), both left on the device: per-token errors, then one
/// block adds them in a fixed order in double. Nothing waits for the host.
pub fn masked_mse(pred: &Tensor, target: &Tensor, mask: &[f32], p: usize) -> Result<(Tensor, Tensor)> {
    const OP: &str = "masked_mse_reduce";
    let dev = device_of(OP, &[pred, target])?;
    let (e, sq) = token_errors(pred, target, p)?;
    if mask.len() != e.numel() {
        return Err(Error::invalid(OP, "one mask value per token is needed"));
    }
    let dm = DeviceVec::from_slice(&*dev, mask)?;
    let (loss, sse) = (empty(&dev, Shape::scalar())?, empty(&dev, Shape::scalar())?);
    k::masked_mse_reduce(
        &*dev,
        &Launch::linear(1, REDUCE_THREADS, REDUCE_THREADS * 4 * 8),
        values(OP, &e)?,
        values(OP, &sq)?,
        &dm.buf,
        values(OP, &loss)?,
        values(OP, &sse)?,
        int(mask.len())?,
    )?;
    Ok((loss, sse))
}

/// The sum of squared errors over every value (0-d, on the device).
pub fn sum_sq_err(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let p = pred.dims().last().copied().unwrap_or(1).max(1);
    let tokens = pred.numel() / p;
    Ok(masked_mse(pred, target, &vec![0.0; tokens], p)?.1)
}

/// `d loss / d pred` for the upstream gradient `g` (one element; a host
/// value is uploaded, a device one read there).
pub fn masked_mse_backward(
    pred: &Tensor,
    target: &Tensor,
    mask: &[f32],
    p: usize,
    g: &Tensor,
    readers: Readers,
) -> Result<Tensor> {
    const OP: &str = "masked_mse_backward";
    let dev = device_of(OP, &[pred, target])?;
    if g.numel() != 1 {
        return Err(Error::bad_shape(
            OP,
            g.shape(),
            "the upstream gradient of a loss has one element",
        ));
    }
    let g = match g.device_storage() {
        Some(_) => g.clone(),
        None => g.to_dtype(crate::tensor::DType::F32)?.to_device(&dev)?,
    };
    let w: Vec<f32> = token_weights(mask).iter().map(|&w| w as f32).collect();
    let dw = DeviceVec::from_slice(&*dev, &w)?;
    let grad = Output::new(&dev, pred.shape().clone(), readers)?;
    let (gv, g16) = grad.bufs(OP)?;
    k::masked_mse_backward(
        &*dev,
        &grid_stride(pred.numel()),
        values(OP, pred)?,
        values(OP, target)?,
        &dw.buf,
        gv,
        values(OP, &g)?,
        int(mask.len())?,
        int(p)?,
        g16,
        grad.mode(),
    )?;
    Ok(grad.t)
}

/// Mean over the middle axis of `outer × n × inner`.
pub fn mean_axis(x: &Tensor, outer: usize, n: usize, inner: usize, out_shape: Shape) -> Result<Tensor> {
    const OP: &str = "mean_axis";
    let dev = device_of(OP, &[x])?;
    let y = empty(&dev, out_shape)?;
    k::mean_axis(
        &*dev,
        &grid_stride(outer * inner),
        values(OP, x)?,
        values(OP, &y)?,
        int(outer)?,
        int(n)?,
        int(inner)?,
    )?;
    Ok(y)
}

pub fn mean_axis_backward(g: &Tensor, outer: usize, n: usize, inner: usize, in_shape: Shape) -> Result<Tensor> {
    const OP: &str = "mean_axis_backward";
    let dev = device_of(OP, &[g])?;
    let dx = empty(&dev, in_shape)?;
    k::mean_axis_backward(
        &*dev,
        &grid_stride(outer * n * inner),
        values(OP, g)?,
        values(OP, &dx)?,
        int(outer)?,
        int(n)?,
        int(inner)?,
    )?;
    Ok(dx)
}
