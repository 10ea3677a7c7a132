//! Pointwise ops and the reductions around them (kernels/elementwise.cu):
//! broadcasts, GELU, sigmoid, dropout, GELU + dropout in one kernel, the
//! NEMESIS gate, column and block sums, concatenation.

use super::{column_grid, device_of, empty, grid_stride, int, k, row_chunks, storage, values, Output, THREADS};
use crate::device::{Buffer, Launch, SharedDevice};
use crate::error::{Error, Result};
use crate::rng::RngStream;
use crate::tensor::{Readers, Shape, Tensor};

/// `a + b`, `b` repeating over `a` (`b` a trailing part of `a`'s shape).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    broadcast("add_broadcast", a, b, k::add_broadcast)
}

/// `a ⊙ b`, `b` repeating over `a`.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    broadcast("mul_broadcast", a, b, k::mul_broadcast)
}

type Broadcast = fn(&dyn crate::device::DeviceApi, &Launch, &Buffer, &Buffer, &Buffer, u64, u64) -> Result<()>;

fn broadcast(op: &'static str, a: &Tensor, b: &Tensor, kernel: Broadcast) -> Result<Tensor> {
    let dev = device_of(op, &[a, b])?;
    if b.numel() == 0 || !a.numel().is_multiple_of(b.numel()) {
        return Err(Error::shape_mismatch(
            op,
            a.shape(),
            b.shape(),
            "the second operand must repeat over the first",
        ));
    }
    let y = empty(&dev, a.shape().clone())?;
    let n = a.numel();
    kernel(
        &*dev,
        &grid_stride(n),
        values(op, a)?,
        values(op, b)?,
        values(op, &y)?,
        n as u64,
        b.numel() as u64,
    )?;
    Ok(y)
}

/// Sums of the `cols` columns of `g` seen as `rows × cols`: the gradient of
/// a repeated operand. Over many rows in two fixed-order passes: partial
/// sums of row chunks, then the chunks.
pub fn column_sums(g: &Tensor, cols: usize) -> Result<Tensor> {
    const OP: &str = "column_sums";
    let dev = device_of(OP, &[g])?;
    if cols == 0 || !g.numel().is_multiple_of(cols) {
        return Err(Error::invalid(OP, "values are not whole rows"));
    }
    let rows = g.numel() / cols;
    let (chunks, chunk) = row_chunks(rows);
    // A gradient stored as bf16 alone (one only GEMMs otherwise read) is
    // summed from its bf16 values, as the GEMMs see it.
    let (input, bf16) = match storage(OP, g)?.bf16_alone() {
        Some(b) => (b, true),
        None => (values(OP, g)?, false),
    };
    if chunks == 1 {
        return column_pass(&dev, input, bf16, rows, cols);
    }
    let partial = empty(&dev, [chunks, cols])?;
    let kernel = if bf16 {
        k::column_partials_bf16
    } else {
        k::column_partials
    };
    kernel(
        &*dev,
        &column_grid(cols, chunks),
        input,
        values(OP, &partial)?,
        rows as u64,
        cols as u64,
        chunk as u64,
    )?;
    column_pass(&dev, values(OP, &partial)?, false, chunks, cols)
}

/// Column sums of `rows × cols` values (f32, or bf16 bits) with one thread
/// per column walking the rows in order.
pub(super) fn column_pass(dev: &SharedDevice, g: &Buffer, bf16: bool, rows: usize, cols: usize) -> Result<Tensor> {
    let out = empty(dev, [cols])?;
    let kernel = if bf16 { k::column_sums_bf16 } else { k::column_sums };
    kernel(
        &**dev,
        &grid_stride(cols),
        g,
        values("column_sums", &out)?,
        rows as u64,
        cols as u64,
    )?;
    Ok(out)
}

/// `c·x`.
pub fn scale(x: &Tensor, c: f64) -> Result<Tensor> {
    const OP: &str = "scale_forward";
    let dev = device_of(OP, &[x])?;
    let y = empty(&dev, x.shape().clone())?;
    let n = x.numel();
    k::scale_forward(
        &*dev,
        &grid_stride(n),
        values(OP, x)?,
        values(OP, &y)?,
        n as u64,
        c as f32,
    )?;
    Ok(y)
}

type Unary = fn(&dyn crate::device::DeviceApi, &Launch, &Buffer, &Buffer, u64) -> Result<()>;
type Binary = fn(&dyn crate::device::DeviceApi, &Launch, &Buffer, &Buffer, &Buffer, u64) -> Result<()>;

/// A one-input pointwise kernel `(x, y, n)`.
fn unary(op: &'static str, x: &Tensor, kernel: Unary) -> Result<Tensor> {
    let dev = device_of(op, &[x])?;
    let y = empty(&dev, x.shape().clone())?;
    let n = x.numel();
    kernel(&*dev, &grid_stride(n), values(op, x)?, values(op, &y)?, n as u64)?;
    Ok(y)
}

/// A two-input pointwise kernel `(g, x, y, n)`.
fn binary(op: &'static str, g: &Tensor, x: &Tensor, kernel: Binary) -> Result<Tensor> {
    let dev = device_of(op, &[g, x])?;
    if g.numel() != x.numel() {
        return Err(Error::shape_mismatch(op, g.shape(), x.shape(), "sizes differ"));
    }
    let y = empty(&dev, x.shape().clone())?;
    let n = x.numel();
    kernel(
        &*dev,
        &grid_stride(n),
        values(op, g)?,
        values(op, x)?,
        values(op, &y)?,
        n as u64,
    )?;
    Ok(y)
}

pub fn gelu(x: &Tensor) -> Result<Tensor> {
    unary("gelu_forward", x, k::gelu_forward)
}

pub fn gelu_backward(g: &Tensor, x: &Tensor) -> Result<Tensor> {
    binary("gelu_backward", g, x, k::gelu_backward)
}

pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    unary("sigmoid_forward", x, k::sigmoid_forward)
}

/// From the sigmoid's output `y`.
pub fn sigmoid_backward(g: &Tensor, y: &Tensor) -> Result<Tensor> {
    binary("sigmoid_backward", g, y, k::sigmoid_backward)
}

/// Inverted dropout with the mask of `Tape::dropout`; the backward is the
/// same call on the gradient with the same stream.
pub fn dropout(x: &Tensor, p: f64, rng: RngStream) -> Result<Tensor> {
    const OP: &str = "dropout_forward";
    let dev = device_of(OP, &[x])?;
    let y = empty(&dev, x.shape().clone())?;
    let n = x.numel();
    k::dropout_forward(
        &*dev,
        &grid_stride(n),
        values(OP, x)?,
        values(OP, &y)?,
        n as u64,
        p,
        rng,
    )?;
    Ok(y)
}

/// `dropout(gelu(x))` in one kernel (`p = 0`: no dropout), with the bf16
/// copy for the next GEMM in mixed precision (alone, if only GEMMs read it).
/// An `x` stored as bf16 alone (the FFN's first projection) is read as such.
pub fn gelu_dropout(x: &Tensor, p: f64, rng: RngStream, readers: Readers) -> Result<Tensor> {
    const OP: &str = "gelu_dropout_forward";
    let dev = device_of(OP, &[x])?;
    let y = Output::new(&dev, x.shape().clone(), readers)?;
    let (yv, y16) = y.bufs(OP)?;
    let (cfg, n) = (grid_stride(x.numel()), x.numel() as u64);
    match storage(OP, x)?.bf16_alone() {
        Some(xb) => k::gelu_dropout_forward_bf16(&*dev, &cfg, xb, yv, n, p, rng, y16, y.mode())?,
        None => k::gelu_dropout_forward(&*dev, &cfg, values(OP, x)?, yv, n, p, rng, y16, y.mode())?,
    }
    Ok(y.t)
}

/// The gradient of `gelu_dropout` with respect to `x`, with its bf16 copy
/// in mixed precision (in the FFN both backward GEMMs of its first linear
/// read it, and nothing else: `Readers::Bf16`).
pub fn gelu_dropout_backward(g: &Tensor, x: &Tensor, p: f64, rng: RngStream, readers: Readers) -> Result<Tensor> {
    const OP: &str = "gelu_dropout_backward";
    let dev = device_of(OP, &[g, x])?;
    let d = Output::new(&dev, x.shape().clone(), readers)?;
    let (dv, d16) = d.bufs(OP)?;
    let (cfg, n) = (grid_stride(x.numel()), x.numel() as u64);
    let gv = values(OP, g)?;
    match storage(OP, x)?.bf16_alone() {
        Some(xb) => k::gelu_dropout_backward_bf16(&*dev, &cfg, gv, xb, dv, n, p, rng, d16, d.mode())?,
        None => k::gelu_dropout_backward(&*dev, &cfg, gv, values(OP, x)?, dv, n, p, rng, d16, d.mode())?,
    }
    Ok(d.t)
}

/// `(1 − a)·x + a·y`, `a` a one-element device tensor.
pub fn gate_mix(x: &Tensor, y: &Tensor, a: &Tensor) -> Result<Tensor> {
    const OP: &str = "gate_mix_forward";
    let dev = device_of(OP, &[x, y, a])?;
    let out = empty(&dev, x.shape().clone())?;
    let n = x.numel();
    k::gate_mix_forward(
        &*dev,
        &grid_stride(n),
        values(OP, x)?,
        values(OP, y)?,
        values(OP, a)?,
        values(OP, &out)?,
        n as u64,
    )?;
    Ok(out)
}

/// `(dx, dy, da)` of the gate mix.
pub fn gate_mix_backward(g: &Tensor, x: &Tensor, y: &Tensor, a: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "gate_mix_backward";
    let dev = device_of(OP, &[g, x, y, a])?;
    let (dx, dy, t) = (
        empty(&dev, x.shape().clone())?,
        empty(&dev, x.shape().clone())?,
        empty(&dev, x.shape().clone())?,
    );
    let n = x.numel();
    k::gate_mix_backward(
        &*dev,
        &grid_stride(n),
        values(OP, g)?,
        values(OP, x)?,
        values(OP, y)?,
        values(OP, a)?,
        values(OP, &dx)?,
        values(OP, &dy)?,
        values(OP, &t)?,
        n as u64,
    )?;
    let da = sum(&t)?.reshape(a.shape().clone())?;
    Ok((dx, dy, da))
}

/// The sum of every value, as a one-element device tensor: per-block
/// partials, then one block over the partials (a fixed order).
pub fn sum(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "block_sums";
    let dev = device_of(OP, &[x])?;
    let blocks = x.numel().div_ceil(THREADS as usize).clamp(1, 256);
    let partial = empty(&dev, [blocks])?;
    let shared = THREADS * 4;
    k::block_sums(
        &*dev,
        &Launch::linear(blocks as u32, THREADS, shared),
        values(OP, x)?,
        values(OP, &partial)?,
        x.numel() as u64,
    )?;
    let total = empty(&dev, [1])?;
    k::block_sums(
        &*dev,
        &Launch::linear(1, THREADS, shared),
        values(OP, &partial)?,
        values(OP, &total)?,
        blocks as u64,
    )?;
    Ok(total)
}

/// `[a | b]` along `axis` of two 2-d tensors (or two 1-d ones, axis 0).
pub fn concat(a: &Tensor, b: &Tensor, axis: usize) -> Result<Tensor> {
    const OP: &str = "concat2";
    let dev = device_of(OP, &[a, b])?;
    let (rows, ca, cb, shape) = a.shape().concat(b.shape(), axis)?;
    let y = empty(&dev, shape)?;
    k::concat2(
        &*dev,
        &grid_stride(rows * (ca + cb)),
        values(OP, a)?,
        values(OP, b)?,
        values(OP, &y)?,
        int(rows)?,
        int(ca)?,
        int(cb)?,
    )?;
    Ok(y)
}

/// The gradient of `concat`: `g` split back into the shapes of `a` and `b`.
pub fn concat_backward(g: &Tensor, a: &Shape, b: &Shape, axis: usize) -> Result<(Tensor, Tensor)> {
    const OP: &str = "split2";
    let dev = device_of(OP, &[g])?;
    let (rows, ca, cb, _) = a.concat(b, axis)?;
    let (ga, gb) = (empty(&dev, a.clone())?, empty(&dev, b.clone())?);
    k::split2(
        &*dev,
        &grid_stride(rows * (ca + cb)),
        values(OP, g)?,
        values(OP, &ga)?,
        values(OP, &gb)?,
        int(rows)?,
        int(ca)?,
        int(cb)?,
    )?;
    Ok((ga, gb))
}
