//! Token movement for dual masking (kernels/tokens.cu): gathering the
//! visible tokens, scattering the encoder's latent among mask tokens (with
//! the positional table added in the same pass for the decoder), and their
//! gradients.

use super::{device_of, empty, grid_stride, int, k, values, zeros};
use crate::device::{DeviceApi, DeviceVec};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `slot[b·n_dst + i]`: the position of destination row `i` among item
/// `b`'s indices, or −1; an error when an index repeats within an item.
fn slots(op: &'static str, idx: &[usize], batch: usize, n_dst: usize) -> Result<Vec<i32>> {
    let per = idx.len() / batch.max(1);
    let mut slot = vec![-1i32; batch * n_dst];
    for (k, &i) in idx.iter().enumerate() {
        if i >= n_dst {
            return Err(Error::invalid(op, format!("index {i} out of range for {n_dst} rows")));
        }
        let s = &mut slot[(k / per.max(1)) * n_dst + i];
        if *s >= 0 {
            return Err(Error::invalid(
                op,
                format!("index {i} appears twice in one item (the device path needs distinct indices)"),
            ));
        }
        *s = (k % per.max(1)) as i32;
    }
    Ok(slot)
}

/// Rows `idx` of each item of `x` (`B × n_src × E`) → `B × n × E`.
pub fn gather_rows(x: &Tensor, idx: &[usize], batch: usize, n_src: usize, e: usize) -> Result<Tensor> {
    const OP: &str = "gather_rows";
    let dev = device_of(OP, &[x])?;
    let n = idx.len() / batch.max(1);
    if idx.iter().any(|&i| i >= n_src) {
        return Err(Error::invalid(OP, format!("an index is out of range for {n_src} rows")));
    }
    let ids = idx.iter().map(|&i| int(i)).collect::<Result<Vec<i32>>>()?;
    let di = DeviceVec::from_slice(&*dev, &ids)?;
    let y = empty(&dev, [batch, n, e])?;
    k::gather_rows(
        &*dev,
        &grid_stride(batch * n * e),
        values(OP, x)?,
        &di.buf,
        values(OP, &y)?,
        int(batch)?,
        int(n_src)?,
        int(n)?,
        int(e)?,
    )?;
    Ok(y)
}

/// `B × n × E` rows placed at `idx` among `n_dst` per item, `fill` (`[E]`)
/// elsewhere.
pub fn scatter_rows(x: &Tensor, idx: &[usize], fill: &Tensor, batch: usize, n_dst: usize) -> Result<Tensor> {
    scatter(x, idx, fill, None, batch, n_dst)
}

/// The decoder input in one kernel: `scatter_rows(x, idx, fill)` plus
/// `s · pe` (`pe` is `n_dst × E`, `s` one element).
pub fn scatter_mask_pe(
    x: &Tensor,
    idx: &[usize],
    fill: &Tensor,
    pe: &Tensor,
    s: &Tensor,
    batch: usize,
    n_dst: usize,
) -> Result<Tensor> {
    scatter(x, idx, fill, Some((pe, s)), batch, n_dst)
}

/// The two scatter kernels: plain, or with the scaled table added.
fn scatter(
    x: &Tensor,
    idx: &[usize],
    fill: &Tensor,
    pe: Option<(&Tensor, &Tensor)>,
    batch: usize,
    n_dst: usize,
) -> Result<Tensor> {
    let op = if pe.is_some() {
        "scatter_mask_pe"
    } else {
        "scatter_rows"
    };
    let mut all = vec![x, fill];
    if let Some((t, s)) = pe {
        all.extend([t, s]);
    }
    let dev = device_of(op, &all)?;
    let e = fill.numel();
    let n = idx.len() / batch.max(1);
    let slot = DeviceVec::from_slice(&*dev, &slots(op, idx, batch, n_dst)?)?;
    let y = empty(&dev, [batch, n_dst, e])?;
    let cfg = grid_stride(batch * n_dst * e);
    let (xv, fv, yv) = (values(op, x)?, values(op, fill)?, values(op, &y)?);
    let sizes = (int(batch)?, int(n_dst)?, int(n)?, int(e)?);
    let dev: &dyn DeviceApi = &*dev;
    match pe {
        Some((t, s)) => k::scatter_mask_pe(
            dev,
            &cfg,
            xv,
            &slot.buf,
            fv,
            values(op, t)?,
            values(op, s)?,
            yv,
            sizes.0,
            sizes.1,
            sizes.2,
            sizes.3,
        )?,
        None => k::scatter_rows(dev, &cfg, xv, &slot.buf, fv, yv, sizes.0, sizes.1, sizes.2, sizes.3)?,
    }
    Ok(y)
}

/// The gradient of `gather_rows`: the rows of `g` back in their places,
/// zeros elsewhere (indices distinct per item).
pub fn gather_rows_backward(g: &Tensor, idx: &[usize], batch: usize, n_src: usize, e: usize) -> Result<Tensor> {
    let dev = device_of("gather_rows backward", &[g])?;
    let zero = zeros(&dev, [e])?;
    scatter_rows(g, idx, &zero, batch, n_src)
}

/// The gradients of `scatter_rows`: `(dx, dfill)`.
pub fn scatter_rows_backward(
    g: &Tensor,
    idx: &[usize],
    batch: usize,
    n_dst: usize,
    e: usize,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "unselected_row_sums";
    let dev = device_of(OP, &[g])?;
    let dx = gather_rows(g, idx, batch, n_dst, e)?;
    let slot = DeviceVec::from_slice(&*dev, &slots(OP, idx, batch, n_dst)?)?;
    let df = empty(&dev, [e])?;
    k::unselected_row_sums(
        &*dev,
        &grid_stride(e),
        values(OP, g)?,
        &slot.buf,
        values(OP, &df)?,
        int(batch * n_dst)?,
        int(e)?,
    )?;
    Ok((dx, df))
}
