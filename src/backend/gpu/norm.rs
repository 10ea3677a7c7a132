//! Layer norm (kernels/layernorm.cu): the plain forward, the residual add
//! fused with the norm after it, and the backward (dx per row; the weight
//! and bias gradients as fixed-order column passes).

use super::pointwise::column_pass;
use super::{column_grid, device_of, empty, grid_stride, int, k, row_chunks, values, Output};
use crate::device::{Launch, SharedDevice};
use crate::error::{Error, Result};
use crate::tensor::{Readers, Shape, Tensor};

/// One block of 128 threads a row, with room for the warps' partial sums.
fn row_blocks(rows: usize) -> Launch {
    Launch::linear(rows as u32, 128, 4 * 4)
}

/// `rows` of a tensor of `shape` normalised over `cols` values.
fn rows_of(op: &'static str, shape: &Shape, cols: usize) -> Result<usize> {
    if cols == 0 || !shape.numel().is_multiple_of(cols) {
        return Err(Error::invalid(op, "values are not whole rows"));
    }
    Ok(shape.numel() / cols)
}

/// The outputs of a layer-norm forward: `y` (as `readers` take it), the
/// row means and the reciprocal standard deviations.
fn outputs(dev: &SharedDevice, shape: &Shape, rows: usize, readers: Readers) -> Result<(Output, Tensor, Tensor)> {
    Ok((
        Output::new(dev, shape.clone(), readers)?,
        empty(dev, [rows])?,
        empty(dev, [rows])?,
    ))
}

/// Layer norm over the last dimension: `(y, mean, rstd)`; `y` as bf16
/// alone in mixed precision when only GEMMs read it.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, readers: Readers) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "layer_norm_forward";
    let dev = device_of(OP, &[x, w, b])?;
    let cols = w.numel();
    let rows = rows_of(OP, x.shape(), cols)?;
    let (y, mean, rstd) = outputs(&dev, x.shape(), rows, readers)?;
    let (yv, y16) = y.bufs(OP)?;
    k::layer_norm_forward(
        &*dev,
        &row_blocks(rows),
        values(OP, x)?,
        values(OP, w)?,
        values(OP, b)?,
        yv,
        values(OP, &mean)?,
        values(OP, &rstd)?,
        int(rows)?,
        int(cols)?,
        eps as f32,
        y16,
        y.mode(),
    )?;
    Ok((y.t, mean, rstd))
}

/// The residual and the layer norm after it in one kernel: `(s, y, mean,
/// rstd)` with `s = x + k·a` and `y = layer_norm(s)`, the statistics as
/// `layer_norm` returns them (so `layer_norm_backward` on `s` applies).
pub fn add_layer_norm(
    x: &Tensor,
    a: &Tensor,
    k: f64,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    readers: Readers,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    const OP: &str = "add_layer_norm_forward";
    let dev = device_of(OP, &[x, a, w, b])?;
    if x.shape() != a.shape() {
        return Err(Error::shape_mismatch(
            OP,
            x.shape(),
            a.shape(),
            "the residual operands differ",
        ));
    }
    let cols = w.numel();
    let rows = rows_of(OP, x.shape(), cols)?;
    let sum = empty(&dev, x.shape().clone())?;
    let (y, mean, rstd) = outputs(&dev, x.shape(), rows, readers)?;
    let (yv, y16) = y.bufs(OP)?;
    super::k::add_layer_norm_forward(
        &*dev,
        &row_blocks(rows),
        values(OP, x)?,
        values(OP, a)?,
        k as f32,
        values(OP, w)?,
        values(OP, b)?,
        values(OP, &sum)?,
        yv,
        values(OP, &mean)?,
        values(OP, &rstd)?,
        int(rows)?,
        int(cols)?,
        eps as f32,
        y16,
        y.mode(),
    )?;
    Ok((sum, y.t, mean, rstd))
}

/// `(dx, dw, db)` from the saved statistics.
pub fn layer_norm_backward(
    g: &Tensor,
    x: &Tensor,
    w: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "layer_norm_backward";
    let dev = device_of(OP, &[g, x, w, mean, rstd])?;
    let cols = w.numel();
    let rows = x.numel() / cols.max(1);
    let dx = empty(&dev, x.shape().clone())?;
    let (gv, xv, mv, rv) = (values(OP, g)?, values(OP, x)?, values(OP, mean)?, values(OP, rstd)?);
    k::layer_norm_backward_dx(
        &*dev,
        &row_blocks(rows),
        gv,
        xv,
        values(OP, w)?,
        mv,
        rv,
        values(OP, &dx)?,
        int(rows)?,
        int(cols)?,
    )?;
    let (chunks, chunk) = row_chunks(rows);
    if chunks == 1 {
        let (dw, db) = (empty(&dev, [cols])?, empty(&dev, [cols])?);
        k::layer_norm_backward_dwdb(
            &*dev,
            &grid_stride(cols),
            gv,
            xv,
            mv,
            rv,
            values(OP, &dw)?,
            values(OP, &db)?,
            int(rows)?,
            int(cols)?,
        )?;
        return Ok((dx, dw, db));
    }
    let (pw, pb) = (empty(&dev, [chunks, cols])?, empty(&dev, [chunks, cols])?);
    k::layer_norm_dwdb_partials(
        &*dev,
        &column_grid(cols, chunks),
        gv,
        xv,
        mv,
        rv,
        values(OP, &pw)?,
        values(OP, &pb)?,
        int(rows)?,
        int(cols)?,
        int(chunk)?,
    )?;
    Ok((
        dx,
        column_pass(&dev, values(OP, &pw)?, false, chunks, cols)?,
        column_pass(&dev, values(OP, &pb)?, false, chunks, cols)?,
    ))
}
