//! The device half of the tensor engine: each op's forward and backward on
//! tensors that live on a `DeviceApi` device, written once against the trait
//! so the emulator runs exactly the orchestration the GPU runs. Tensors here
//! are f32; outputs are fresh device buffers (poisoned with NaN on the
//! emulator, so an unwritten value shows). The ops in src/ops dispatch here
//! when their operands are on a device.

use std::sync::Arc;

use crate::device::{Arg, AttentionChoice, DeviceApi, DeviceVec, Gemm, Launch, SharedDevice};
use crate::error::{Error, Result};
use crate::rng::RngStream;
use crate::tensor::{DeviceStorage, Readers, SeqLayout, Shape, Tensor};

/// Threads per block of the pointwise kernels.
const THREADS: u32 = 256;

/// The grid of a grid-stride kernel over `n` items: a thread an item, up to
/// 65,535 blocks (the grid-stride loop covers the rest). The same on every
/// device, so the emulator runs the geometry a GPU runs.
pub fn grid_stride(n: usize) -> Launch {
    Launch::linear((n.div_ceil(THREADS as usize)).clamp(1, 65_535) as u32, THREADS, 0)
}

/// The device of `t`, or an error naming the op.
fn storage<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a DeviceStorage> {
    t.device_storage().ok_or_else(|| {
        Error::invalid(
            op,
            format!("a {} tensor on the host where a device tensor was expected", t.shape()),
        )
    })
}

/// The one device all of `ts` live on.
fn device_of(op: &'static str, ts: &[&Tensor]) -> Result<SharedDevice> {
    let first = storage(op, ts[0])?.dev.clone();
    for t in &ts[1..] {
        if !Arc::ptr_eq(&storage(op, t)?.dev, &first) {
            return Err(Error::invalid(op, "operands live on different devices"));
        }
    }
    Ok(first)
}

fn arg<'a>(op: &'static str, t: &'a Tensor) -> Result<Arg<'a>> {
    Ok(Arg::Buf(values(op, t)?))
}

/// The f32 values of `t` (widened from its bf16 copy if it is stored as
/// bf16 alone).
fn values<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a crate::device::Buffer> {
    storage_values(storage(op, t)?)
}

/// The f32 values of a device storage. A tensor stored as bf16 alone
/// (`Readers::Bf16`) is widened once (`bf16_to_f32`, exact) the first time
/// a reader other than a GEMM asks, and keeps both from then on.
pub fn storage_values(s: &DeviceStorage) -> Result<&crate::device::Buffer> {
    const OP: &str = "bf16_to_f32";
    if let Some(b) = s.f32.get() {
        return Ok(b);
    }
    let b16 = s
        .bf16
        .get()
        .ok_or_else(|| Error::invalid(OP, "a device tensor holds no values"))?;
    convert_once(s, OP, b16, 4, &s.f32)
}

/// Fills `cell` of `s` (once; a second writer's buffer is freed) with a new
/// buffer of `elem` bytes a value that `kernel(src, new, len)` writes.
fn convert_once<'a>(
    s: &'a DeviceStorage,
    kernel: &'static str,
    src: &crate::device::Buffer,
    elem: usize,
    cell: &'a std::sync::OnceLock<crate::device::Buffer>,
) -> Result<&'a crate::device::Buffer> {
    let b = s.dev.alloc(s.len * elem)?;
    let launched = s
        .dev
        .launch(kernel, &grid_stride(s.len), &[Arg::Buf(src), Arg::Buf(&b), u64a(s.len)]);
    if let Err(e) = launched {
        s.dev.free(&b);
        return Err(e);
    }
    if let Err(b) = cell.set(b) {
        s.dev.free(&b);
    }
    cell.get()
        .ok_or_else(|| Error::invalid(kernel, "the converted values were not kept"))
}

/// A fresh (uninitialised) f32 tensor on `dev`.
pub fn empty(dev: &SharedDevice, shape: impl Into<Shape>) -> Result<Tensor> {
    let shape = shape.into();
    let len = shape.numel();
    let buf = dev.alloc(len * 4)?;
    Tensor::from_device(DeviceStorage::new(dev.clone(), buf, len), shape)
}

/// A tensor of zeros on `dev`.
pub fn zeros(dev: &SharedDevice, shape: impl Into<Shape>) -> Result<Tensor> {
    let shape = shape.into();
    let z = vec![0f32; shape.numel()];
    let buf = dev.alloc_for_upload(z.len() * 4)?;
    let t = Tensor::from_device(DeviceStorage::new(dev.clone(), buf, z.len()), shape)?;
    dev.upload(values("zeros", &t)?, bytemuck::cast_slice(&z))?;
    Ok(t)
}

fn u64a(v: usize) -> Arg<'static> {
    Arg::U64(v as u64)
}

/// A size or index as a kernel's `int`: refused, never wrapped, when it
/// does not fit.
fn i32a(v: usize) -> Result<Arg<'static>> {
    i32::try_from(v)
        .map(Arg::I32)
        .map_err(|_| Error::invalid("launch", format!("{v} does not fit a kernel's 32-bit int")))
}

/// Runs a kernel `name(args…)` over a grid for `n` items.
fn pointwise(dev: &SharedDevice, name: &str, n: usize, args: &[Arg]) -> Result<()> {
    dev.launch(name, &grid_stride(n), args)
}

// ---- linear algebra -------------------------------------------------------

/// `y = x·Wᵀ + b` (`W` is `out × in`), the bias fused into the GEMM; bf16
/// operands when the device runs in mixed precision, and `y` written as
/// bf16 alone then if only bf16 readers take it.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, readers: Readers) -> Result<Tensor> {
    const OP: &str = "linear";
    let dev = device_of(OP, &[x, w])?;
    let (out_f, in_f) = (w.dims()[0], w.dims()[1]);
    let rows = x.numel() / in_f.max(1);
    let mut ys = x.dims().to_vec();
    if let Some(l) = ys.last_mut() {
        *l = out_f;
    }
    product(&dev, Gemm::new(rows, out_f, in_f, false, true), x, w, b, ys, readers)
}

/// `op(a)·op(b)` (+ `bias` on every row) into a fresh tensor of `shape`, in
/// the device's precision.
fn product(
    dev: &SharedDevice,
    g: Gemm,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    shape: impl Into<Shape>,
    readers: Readers,
) -> Result<Tensor> {
    const OP: &str = "gemm";
    if stores_bf16_alone(dev, readers) {
        let y = Output::bf16_alone(dev, shape)?;
        let g = Gemm {
            bf16: true,
            bf16_inputs: true,
            bf16_out: true,
            ..g
        };
        let bias = bias.map(|t| values(OP, t)).transpose()?;
        dev.gemm(&g, bf16_copy(a)?, bf16_copy(b)?, y.bufs(OP)?.1, bias)?;
        return Ok(y.t);
    }
    let y = empty(dev, shape)?;
    let bias = match bias {
        Some(t) => Some(values(OP, t)?),
        None => None,
    };
    if dev.mixed_precision() {
        // Both operands as their bf16 copies (made once per tensor).
        let g = Gemm {
            bf16: true,
            bf16_inputs: true,
            ..g
        };
        dev.gemm(&g, bf16_copy(a)?, bf16_copy(b)?, values(OP, &y)?, bias)?;
    } else {
        dev.gemm(&g, values(OP, a)?, values(OP, b)?, values(OP, &y)?, bias)?;
    }
    Ok(y)
}

/// The bf16 copy of a device tensor's values, made (one `f32_to_bf16` pass)
/// the first time it is asked for and kept with the values.
fn bf16_copy(t: &Tensor) -> Result<&crate::device::Buffer> {
    const OP: &str = "f32_to_bf16";
    let s = storage(OP, t)?;
    if let Some(b) = s.bf16.get() {
        return Ok(b);
    }
    convert_once(s, OP, storage_values(s)?, 2, &s.bf16)
}

/// The bf16 copy of `t` as raw bits (made if it is not there yet), for checks.
pub fn bf16_bits(t: &Tensor) -> Result<Vec<u16>> {
    let s = storage("bf16_bits", t)?;
    let b = bf16_copy(t)?;
    let mut out = vec![0u16; s.len];
    s.dev.download(b, bytemuck::cast_slice_mut(&mut out))?;
    Ok(out)
}

/// The gradients of `linear`: `(dx, dW, db)`, each when asked for.
pub fn linear_backward(g: &Tensor, x: &Tensor, w: &Tensor, needs: [bool; 3]) -> Result<[Option<Tensor>; 3]> {
    const OP: &str = "linear backward";
    let dev = device_of(OP, &[g, x, w])?;
    let (out_f, in_f) = (w.dims()[0], w.dims()[1]);
    let rows = x.numel() / in_f.max(1);
    let mut out = [None, None, None];
    if needs[0] {
        // dx = g·W
        let gm = Gemm::new(rows, in_f, out_f, false, false);
        out[0] = Some(product(&dev, gm, g, w, None, x.shape().clone(), Readers::Any)?);
    }
    if needs[1] {
        // dW = gᵀ·x
        let gm = Gemm::new(out_f, in_f, rows, true, false);
        out[1] = Some(product(&dev, gm, g, x, None, w.shape().clone(), Readers::Any)?);
    }
    if needs[2] {
        out[2] = Some(column_sums(g, out_f)?);
    }
    Ok(out)
}

// ---- pointwise --------------------------------------------------------------

/// `a + b`, `b` repeating over `a` (`b` a trailing part of `a`'s shape).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    broadcast_kernel("add_broadcast", a, b)
}

/// `a ⊙ b`, `b` repeating over `a`.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    broadcast_kernel("mul_broadcast", a, b)
}

fn broadcast_kernel(name: &'static str, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dev = device_of(name, &[a, b])?;
    if b.numel() == 0 || a.numel() % b.numel() != 0 {
        return Err(Error::shape_mismatch(
            name,
            a.shape(),
            b.shape(),
            "the second operand must repeat over the first",
        ));
    }
    let y = empty(&dev, a.shape().clone())?;
    pointwise(
        &dev,
        name,
        a.numel(),
        &[
            arg(name, a)?,
            arg(name, b)?,
            arg(name, &y)?,
            u64a(a.numel()),
            u64a(b.numel()),
        ],
    )?;
    Ok(y)
}

/// Sums of the `cols` columns of `g` seen as `rows × cols`: the gradient of
/// a repeated operand.
pub fn column_sums(g: &Tensor, cols: usize) -> Result<Tensor> {
    const OP: &str = "column_sums";
    let dev = device_of(OP, &[g])?;
    if cols == 0 || g.numel() % cols != 0 {
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
        return column_sums_kernel(&dev, input, bf16, rows, cols);
    }
    let partial = empty(&dev, [chunks, cols])?;
    dev.launch(
        if bf16 {
            "column_partials_bf16"
        } else {
            "column_partials"
        },
        &column_grid(cols, chunks),
        &[Arg::Buf(input), arg(OP, &partial)?, u64a(rows), u64a(cols), u64a(chunk)],
    )?;
    column_sums_kernel(&dev, values(OP, &partial)?, false, chunks, cols)
}

/// Column sums of `rows × cols` values (f32, or bf16 bits) with one thread
/// per column walking the rows in order.
fn column_sums_kernel(
    dev: &SharedDevice,
    g: &crate::device::Buffer,
    bf16: bool,
    rows: usize,
    cols: usize,
) -> Result<Tensor> {
    const OP: &str = "column_sums";
    let out = empty(dev, [cols])?;
    pointwise(
        dev,
        if bf16 { "column_sums_bf16" } else { OP },
        cols,
        &[Arg::Buf(g), arg(OP, &out)?, u64a(rows), u64a(cols)],
    )?;
    Ok(out)
}

/// How a column reduction over `rows` rows is split: `(chunks, rows per
/// chunk)`, at least 64 rows a chunk and at most 256 chunks, on every
/// device. The split fixes the order of the additions, so results do not
/// depend on scheduling.
fn row_chunks(rows: usize) -> (usize, usize) {
    let chunks = rows.div_ceil(64).clamp(1, 256);
    let chunk = rows.div_ceil(chunks).max(1);
    (rows.div_ceil(chunk).max(1), chunk)
}

/// The grid of a chunked column pass: `THREADS` columns by one chunk a block.
fn column_grid(cols: usize, chunks: usize) -> Launch {
    Launch {
        grid: [cols.div_ceil(THREADS as usize).max(1) as u32, chunks as u32, 1],
        block: [THREADS, 1, 1],
        shared_bytes: 0,
    }
}

/// `c·x`.
pub fn scale(x: &Tensor, c: f64) -> Result<Tensor> {
    const OP: &str = "scale_forward";
    let dev = device_of(OP, &[x])?;
    let y = empty(&dev, x.shape().clone())?;
    pointwise(
        &dev,
        OP,
        x.numel(),
        &[arg(OP, x)?, arg(OP, &y)?, u64a(x.numel()), Arg::F32(c as f32)],
    )?;
    Ok(y)
}

/// A one-input pointwise kernel `name(x, y, n)`.
fn unary(name: &'static str, x: &Tensor) -> Result<Tensor> {
    let dev = device_of(name, &[x])?;
    let y = empty(&dev, x.shape().clone())?;
    pointwise(&dev, name, x.numel(), &[arg(name, x)?, arg(name, &y)?, u64a(x.numel())])?;
    Ok(y)
}

/// A two-input pointwise kernel `name(g, x, y, n)`.
fn binary(name: &'static str, g: &Tensor, x: &Tensor) -> Result<Tensor> {
    let dev = device_of(name, &[g, x])?;
    if g.numel() != x.numel() {
        return Err(Error::shape_mismatch(name, g.shape(), x.shape(), "sizes differ"));
    }
    let y = empty(&dev, x.shape().clone())?;
    pointwise(
        &dev,
        name,
        x.numel(),
        &[arg(name, g)?, arg(name, x)?, arg(name, &y)?, u64a(x.numel())],
    )?;
    Ok(y)
}

pub fn gelu(x: &Tensor) -> Result<Tensor> {
    unary("gelu_forward", x)
}

pub fn gelu_backward(g: &Tensor, x: &Tensor) -> Result<Tensor> {
    binary("gelu_backward", g, x)
}

pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    unary("sigmoid_forward", x)
}

/// From the sigmoid's output `y`.
pub fn sigmoid_backward(g: &Tensor, y: &Tensor) -> Result<Tensor> {
    binary("sigmoid_backward", g, y)
}

/// Inverted dropout with the mask of `Tape::dropout`; the backward is the
/// same call on the gradient with the same stream.
pub fn dropout(x: &Tensor, p: f64, rng: RngStream) -> Result<Tensor> {
    const OP: &str = "dropout_forward";
    let dev = device_of(OP, &[x])?;
    let y = empty(&dev, x.shape().clone())?;
    pointwise(
        &dev,
        OP,
        x.numel(),
        &[arg(OP, x)?, arg(OP, &y)?, u64a(x.numel()), Arg::F64(p), Arg::Rng(rng)],
    )?;
    Ok(y)
}

/// `dropout(gelu(x))` in one kernel (`p = 0`: no dropout), with the bf16
/// copy for the next GEMM in mixed precision (alone, if only GEMMs read it).
pub fn gelu_dropout(x: &Tensor, p: f64, rng: RngStream, readers: Readers) -> Result<Tensor> {
    gelu_dropout_kernel(
        ["gelu_dropout_forward", "gelu_dropout_forward_bf16"],
        &[x],
        p,
        rng,
        readers,
    )
}

/// The gradient of `gelu_dropout` with respect to `x`, with its bf16 copy
/// in mixed precision (in the FFN both backward GEMMs of its first linear
/// read it, and nothing else: `Readers::Bf16`).
pub fn gelu_dropout_backward(g: &Tensor, x: &Tensor, p: f64, rng: RngStream, readers: Readers) -> Result<Tensor> {
    gelu_dropout_kernel(
        ["gelu_dropout_backward", "gelu_dropout_backward_bf16"],
        &[g, x],
        p,
        rng,
        readers,
    )
}

/// The two GELU + dropout kernels: `(inputs…, out, n, p, stream, out16, mode)`,
/// `out` shaped as the last input, `x`; `names`: the kernel for an f32 `x`
/// and for one stored as bf16 alone (the FFN's first projection).
fn gelu_dropout_kernel(
    names: [&'static str; 2],
    inputs: &[&Tensor],
    p: f64,
    rng: RngStream,
    readers: Readers,
) -> Result<Tensor> {
    let op = names[0];
    let dev = device_of(op, inputs)?;
    let x = inputs[inputs.len() - 1];
    let y = Output::new(&dev, x.shape().clone(), readers)?;
    let (lead, _) = inputs.split_at(inputs.len() - 1);
    let mut args = lead.iter().map(|t| arg(op, t)).collect::<Result<Vec<_>>>()?;
    let name = match storage(op, x)?.bf16_alone() {
        Some(b) => {
            args.push(Arg::Buf(b));
            names[1]
        }
        None => {
            args.push(arg(op, x)?);
            op
        }
    };
    args.extend([y.y(op)?, u64a(x.numel()), Arg::F64(p), Arg::Rng(rng)]);
    args.extend(y.y16(op)?);
    pointwise(&dev, name, x.numel(), &args)?;
    Ok(y.t)
}

/// `(1 − a)·x + a·y`, `a` a one-element device tensor.
pub fn gate_mix(x: &Tensor, y: &Tensor, a: &Tensor) -> Result<Tensor> {
    const OP: &str = "gate_mix_forward";
    let dev = device_of(OP, &[x, y, a])?;
    let out = empty(&dev, x.shape().clone())?;
    pointwise(
        &dev,
        OP,
        x.numel(),
        &[arg(OP, x)?, arg(OP, y)?, arg(OP, a)?, arg(OP, &out)?, u64a(x.numel())],
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
    pointwise(
        &dev,
        OP,
        x.numel(),
        &[
            arg(OP, g)?,
            arg(OP, x)?,
            arg(OP, y)?,
            arg(OP, a)?,
            arg(OP, &dx)?,
            arg(OP, &dy)?,
            arg(OP, &t)?,
            u64a(x.numel()),
        ],
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
    dev.launch(
        OP,
        &Launch::linear(blocks as u32, THREADS, shared),
        &[arg(OP, x)?, arg(OP, &partial)?, u64a(x.numel())],
    )?;
    let total = empty(&dev, [1])?;
    dev.launch(
        OP,
        &Launch::linear(1, THREADS, shared),
        &[arg(OP, &partial)?, arg(OP, &total)?, u64a(blocks)],
    )?;
    Ok(total)
}

// ---- layer norm -------------------------------------------------------------

/// Layer norm over the last dimension: `(y, mean, rstd)`; `y` as bf16
/// alone in mixed precision when only GEMMs read it.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, readers: Readers) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "layer_norm_forward";
    let dev = device_of(OP, &[x, w, b])?;
    norm_forward(&dev, OP, &[arg(OP, x)?], w, b, None, x.shape(), eps, readers)
}

/// A layer-norm forward kernel (one block of 128 per row): its `lead`
/// arguments, `w`, `b`, the `extra` output if any, then `y`, the statistics,
/// the sizes, `eps` and `y`'s bf16 copy and mode (`Output`).
#[allow(clippy::too_many_arguments)]
fn norm_forward(
    dev: &SharedDevice,
    op: &'static str,
    lead: &[Arg],
    w: &Tensor,
    b: &Tensor,
    extra: Option<&Tensor>,
    shape: &Shape,
    eps: f64,
    readers: Readers,
) -> Result<(Tensor, Tensor, Tensor)> {
    let cols = w.numel();
    if cols == 0 || shape.numel() % cols != 0 {
        return Err(Error::invalid(op, "values are not whole rows"));
    }
    let rows = shape.numel() / cols;
    let (y, mean, rstd) = (
        Output::new(dev, shape.clone(), readers)?,
        empty(dev, [rows])?,
        empty(dev, [rows])?,
    );
    let mut args = lead.to_vec();
    args.extend([arg(op, w)?, arg(op, b)?]);
    if let Some(t) = extra {
        args.push(arg(op, t)?);
    }
    args.extend([
        y.y(op)?,
        arg(op, &mean)?,
        arg(op, &rstd)?,
        i32a(rows)?,
        i32a(cols)?,
        Arg::F32(eps as f32),
    ]);
    args.extend(y.y16(op)?);
    dev.launch(op, &Launch::linear(rows as u32, 128, 4 * 4), &args)?;
    Ok((y.t, mean, rstd))
}

/// Whether an output `readers` take is stored as bf16 alone on `dev`: in
/// mixed precision, unless the device was opened keeping f32 beside the
/// copy (`DeviceSettings::bf16_activations`).
fn stores_bf16_alone(dev: &SharedDevice, readers: Readers) -> bool {
    dev.mixed_precision() && readers == Readers::Bf16 && dev.settings().bf16_activations
}

/// A kernel's output that a mixed-precision GEMM may read next: f32 values
/// alone (f32 device), f32 with the bf16 copy written in the same pass
/// (mixed precision), or the bf16 copy alone (mixed precision, and only
/// GEMMs read it: `Readers::Bf16`). Such kernels take `(…, y, …, y16,
/// out16)`: `out16` is the mode (kernels/common.cuh `OUT16_*`), and a
/// pointer the mode leaves unwritten is given the other buffer.
struct Output {
    t: Tensor,
    mode: i32,
}

impl Output {
    fn new(dev: &SharedDevice, shape: impl Into<Shape>, readers: Readers) -> Result<Self> {
        if stores_bf16_alone(dev, readers) {
            return Self::bf16_alone(dev, shape);
        }
        let out = Self::f32(dev, shape)?;
        if !dev.mixed_precision() {
            return Ok(out);
        }
        let s = storage("output", &out.t)?;
        if let Err(b) = s.bf16.set(dev.alloc(s.len * 2)?) {
            dev.free(&b);
        }
        Ok(Output { t: out.t, mode: 1 })
    }

    /// An output held as bf16 alone.
    fn bf16_alone(dev: &SharedDevice, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        let len = shape.numel();
        Ok(Output {
            t: Tensor::from_device(DeviceStorage::bf16_only(dev.clone(), dev.alloc(len * 2)?, len), shape)?,
            mode: 2,
        })
    }

    /// An f32 output with no bf16 copy, whatever the precision (a kernel
    /// that writes f32 only; a GEMM makes the copy if one reads it).
    fn f32(dev: &SharedDevice, shape: impl Into<Shape>) -> Result<Self> {
        Ok(Output {
            t: empty(dev, shape)?,
            mode: 0,
        })
    }

    fn bufs(&self, op: &'static str) -> Result<(&crate::device::Buffer, &crate::device::Buffer)> {
        let s = storage(op, &self.t)?;
        match (s.f32.get(), s.bf16.get()) {
            (Some(v), Some(c)) => Ok((v, c)),
            (Some(v), None) => Ok((v, v)),
            (None, Some(c)) => Ok((c, c)),
            (None, None) => Err(Error::invalid(op, "an output with no buffer")),
        }
    }

    /// The f32 output argument.
    fn y(&self, op: &'static str) -> Result<Arg<'_>> {
        Ok(Arg::Buf(self.bufs(op)?.0))
    }

    /// The trailing `(y16, out16)` arguments.
    fn y16(&self, op: &'static str) -> Result<[Arg<'_>; 2]> {
        Ok([Arg::Buf(self.bufs(op)?.1), Arg::I32(self.mode)])
    }
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
    dev.launch(
        "layer_norm_backward_dx",
        &Launch::linear(rows as u32, 128, 4 * 4),
        &[
            arg(OP, g)?,
            arg(OP, x)?,
            arg(OP, w)?,
            arg(OP, mean)?,
            arg(OP, rstd)?,
            arg(OP, &dx)?,
            i32a(rows)?,
            i32a(cols)?,
        ],
    )?;
    let (chunks, chunk) = row_chunks(rows);
    if chunks == 1 {
        let (dw, db) = (empty(&dev, [cols])?, empty(&dev, [cols])?);
        pointwise(
            &dev,
            "layer_norm_backward_dwdb",
            cols,
            &[
                arg(OP, g)?,
                arg(OP, x)?,
                arg(OP, mean)?,
                arg(OP, rstd)?,
                arg(OP, &dw)?,
                arg(OP, &db)?,
                i32a(rows)?,
                i32a(cols)?,
            ],
        )?;
        return Ok((dx, dw, db));
    }
    let (pw, pb) = (empty(&dev, [chunks, cols])?, empty(&dev, [chunks, cols])?);
    dev.launch(
        "layer_norm_dwdb_partials",
        &column_grid(cols, chunks),
        &[
            arg(OP, g)?,
            arg(OP, x)?,
            arg(OP, mean)?,
            arg(OP, rstd)?,
            arg(OP, &pw)?,
            arg(OP, &pb)?,
            i32a(rows)?,
            i32a(cols)?,
            i32a(chunk)?,
        ],
    )?;
    Ok((
        dx,
        column_sums_kernel(&dev, values(OP, &pw)?, false, chunks, cols)?,
        column_sums_kernel(&dev, values(OP, &pb)?, false, chunks, cols)?,
    ))
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
    let sum = empty(&dev, x.shape().clone())?;
    let lead = [arg(OP, x)?, arg(OP, a)?, Arg::F32(k as f32)];
    let (y, mean, rstd) = norm_forward(&dev, OP, &lead, w, b, Some(&sum), x.shape(), eps, readers)?;
    Ok((sum, y, mean, rstd))
}

// ---- attention --------------------------------------------------------------

/// Which attention kernels run: the flash kernels in fp32 (verification)
/// or bf16 on the tensor cores, or the plain one-thread-per-row kernels
/// they are checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    Plain,
    FlashF32,
    FlashBf16,
}

impl AttentionKernel {
    /// The flash kernels in the device's precision, unless the device was
    /// opened with the plain ones (`DeviceSettings::attention`).
    pub fn for_device(dev: &SharedDevice) -> Self {
        match dev.settings().attention {
            AttentionChoice::Plain => AttentionKernel::Plain,
            AttentionChoice::Flash if dev.mixed_precision() => AttentionKernel::FlashBf16,
            AttentionChoice::Flash => AttentionKernel::FlashF32,
        }
    }

    /// The forward, dQ and dK/dV kernels.
    fn names(self) -> [&'static str; 3] {
        match self {
            AttentionKernel::Plain => ["attention_forward", "attention_backward_dq", "attention_backward_dkv"],
            AttentionKernel::FlashF32 => ["flash_forward_f32", "flash_backward_dq_f32", "flash_backward_dkv_f32"],
            AttentionKernel::FlashBf16 => [
                "flash_forward_bf16",
                "flash_backward_dq_bf16",
                "flash_backward_dkv_bf16",
            ],
        }
    }
}

/// Rows a flash block owns and rows of its inner tiles (kernels/flash.cu).
const FLASH_ROWS: usize = 64;
const FLASH_TILE: usize = 64;

/// Launch geometry of a flash kernel: one block per (sequence, head, tile
/// of 64 rows), 4 warps, and its shared memory (`backward`: the two row
/// statistics and the dO tile too).
pub fn flash_launch(layout: SeqLayout, heads: usize, dh: usize, bf16: bool, backward: bool) -> Launch {
    let dp = dh.div_ceil(16) * 16;
    let elem = if bf16 { 2 } else { 4 };
    let bytes = if backward {
        2 * FLASH_ROWS * 4 + (2 * FLASH_ROWS + 2 * FLASH_TILE) * dp * elem + 4 * 16 * FLASH_TILE * elem
    } else {
        (FLASH_ROWS + 2 * FLASH_TILE) * dp * elem + 4 * 16 * FLASH_TILE * elem
    };
    Launch {
        grid: [
            (layout.num_seqs() * heads).max(1) as u32,
            layout.len.div_ceil(FLASH_ROWS).max(1) as u32,
            1,
        ],
        block: [128, 1, 1],
        shared_bytes: bytes as u32,
    }
}

/// The rows a layout reaches exist in a QKV matrix of `rows` rows.
fn rows_fit(op: &'static str, layout: &SeqLayout, rows: usize) -> Result<()> {
    if layout.num_seqs() > 0 && layout.len > 0 && layout.last_row() >= rows {
        return Err(Error::invalid(
            op,
            format!(
                "the layout reaches row {} of a matrix of {rows} rows",
                layout.last_row()
            ),
        ));
    }
    Ok(())
}

fn check_head_dim(op: &'static str, e: usize, heads: usize) -> Result<usize> {
    if heads == 0 || e % heads != 0 {
        return Err(Error::invalid(op, "E must be a multiple of the head count"));
    }
    let dh = e / heads;
    if dh > 128 {
        return Err(Error::invalid(
            op,
            format!("head dim {dh} is above the flash kernels' 128; use NEMESIS_ATTENTION=plain"),
        ));
    }
    Ok(dh)
}

/// Attention over a `rows × 3E` QKV tensor: the `rows × E` output and the
/// log-sum-exp per (sequence, head, row), saved for the backward.
pub fn attention(
    qkv: &Tensor,
    layout: SeqLayout,
    heads: usize,
    dropout: Option<(f64, RngStream)>,
) -> Result<(Tensor, Tensor)> {
    let dev = device_of("attention", &[qkv])?;
    attention_with(AttentionKernel::for_device(&dev), qkv, layout, heads, dropout)
}

/// `attention` with the kernel family chosen by the caller.
pub fn attention_with(
    kernel: AttentionKernel,
    qkv: &Tensor,
    layout: SeqLayout,
    heads: usize,
    dropout: Option<(f64, RngStream)>,
) -> Result<(Tensor, Tensor)> {
    let dev = device_of("attention_forward", &[qkv])?;
    let e = qkv.dims().last().copied().unwrap_or(0) / 3;
    let mut ys = qkv.dims().to_vec();
    if let Some(l) = ys.last_mut() {
        *l = e;
    }
    let y = Output::new(&dev, ys, Readers::Any)?;
    let lse = attention_into(kernel, qkv, layout, heads, dropout, &y)?;
    Ok((y.t, lse))
}

/// A QKV or O argument of an attention kernel: the bf16 flash kernels read
/// the bf16 copy (all there is of it when it is stored as bf16 alone), the
/// others the f32 values.
fn attention_input<'a>(op: &'static str, kernel: AttentionKernel, t: &'a Tensor) -> Result<Arg<'a>> {
    Ok(Arg::Buf(if kernel == AttentionKernel::FlashBf16 {
        bf16_copy(t)?
    } else {
        values(op, t)?
    }))
}

/// The attention forward of the sequences of `layout` into rows of `y`
/// (other rows untouched); returns the log-sum-exp.
fn attention_into(
    kernel: AttentionKernel,
    qkv: &Tensor,
    layout: SeqLayout,
    heads: usize,
    dropout: Option<(f64, RngStream)>,
    y: &Output,
) -> Result<Tensor> {
    const OP: &str = "attention_forward";
    let dev = device_of(OP, &[qkv, &y.t])?;
    let e = qkv.dims().last().copied().unwrap_or(0) / 3;
    rows_fit(OP, &layout, qkv.numel() / (3 * e).max(1))?;
    let n_lse = layout.num_seqs() * heads * layout.len;
    let (p, rng) = dropout.unwrap_or((0.0, RngStream::new(0, 0)));
    let lse = empty(&dev, [n_lse])?;
    let [y16, mode] = y.y16(OP)?;
    let args = [
        attention_input(OP, kernel, qkv)?,
        y.y(OP)?,
        arg(OP, &lse)?,
        Arg::Layout(layout),
        i32a(heads)?,
        i32a(e)?,
        Arg::F64(p),
        Arg::Rng(rng),
        y16,
        mode,
    ];
    let [name, _, _] = kernel.names();
    match kernel {
        AttentionKernel::Plain => pointwise(&dev, name, n_lse, &args)?,
        _ => {
            let dh = check_head_dim(OP, e, heads)?;
            let bf16 = kernel == AttentionKernel::FlashBf16;
            dev.launch(name, &flash_launch(layout, heads, dh, bf16, false), &args)?;
        }
    }
    Ok(lse)
}

/// The gradient with respect to the QKV tensor.
pub fn attention_backward(
    g: &Tensor,
    qkv: &Tensor,
    y: &Tensor,
    lse: &Tensor,
    layout: SeqLayout,
    heads: usize,
    dropout: Option<(f64, RngStream)>,
) -> Result<Tensor> {
    let dev = device_of("attention backward", &[qkv])?;
    attention_backward_with(
        AttentionKernel::for_device(&dev),
        g,
        qkv,
        y,
        lse,
        layout,
        heads,
        dropout,
    )
}

/// `attention_backward` with the kernel family chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_with(
    kernel: AttentionKernel,
    g: &Tensor,
    qkv: &Tensor,
    y: &Tensor,
    lse: &Tensor,
    layout: SeqLayout,
    heads: usize,
    dropout: Option<(f64, RngStream)>,
) -> Result<Tensor> {
    let dev = device_of("attention_backward", &[qkv])?;
    let d = qkv_grad(&dev, kernel, qkv.shape().clone(), Readers::Any)?;
    attention_backward_into(kernel, g, qkv, y, lse, layout, heads, dropout, &d)?;
    Ok(d.t)
}

/// The QKV gradient's output: the flash kernels write f32, its bf16 copy
/// or the copy alone (`readers`); the plain ones f32 only.
fn qkv_grad(dev: &SharedDevice, kernel: AttentionKernel, shape: impl Into<Shape>, readers: Readers) -> Result<Output> {
    if kernel == AttentionKernel::Plain {
        Output::f32(dev, shape)
    } else {
        Output::new(dev, shape, readers)
    }
}

/// The QKV gradient of the sequences of `layout` into rows of `d`.
#[allow(clippy::too_many_arguments)]
fn attention_backward_into(
    kernel: AttentionKernel,
    g: &Tensor,
    qkv: &Tensor,
    y: &Tensor,
    lse: &Tensor,
    layout: SeqLayout,
    heads: usize,
    dropout: Option<(f64, RngStream)>,
    d: &Output,
) -> Result<()> {
    const OP: &str = "attention_backward";
    let dev = device_of(OP, &[g, qkv, y, lse, &d.t])?;
    let e = qkv.dims().last().copied().unwrap_or(0) / 3;
    rows_fit(OP, &layout, qkv.numel() / (3 * e).max(1))?;
    let (p, rng) = dropout.unwrap_or((0.0, RngStream::new(0, 0)));
    let mut args = vec![
        attention_input(OP, kernel, qkv)?,
        attention_input(OP, kernel, y)?,
        arg(OP, g)?,
        arg(OP, lse)?,
        d.y(OP)?,
        Arg::Layout(layout),
        i32a(heads)?,
        i32a(e)?,
        Arg::F64(p),
        Arg::Rng(rng),
    ];
    // The two kernels write disjoint columns (q, then k and v) of `d`.
    let [_, dq, dkv] = kernel.names();
    match kernel {
        AttentionKernel::Plain => {
            pointwise(&dev, dq, lse.numel(), &args)?;
            pointwise(&dev, dkv, lse.numel(), &args)?;
        }
        _ => {
            args.extend(d.y16(OP)?);
            let dh = check_head_dim(OP, e, heads)?;
            let cfg = flash_launch(layout, heads, dh, kernel == AttentionKernel::FlashBf16, true);
            dev.launch(dq, &cfg, &args)?;
            dev.launch(dkv, &cfg, &args)?;
        }
    }
    Ok(())
}

/// One attention stream of a pair: its layout (over the `rows` of the token
/// grid), heads and dropout.
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    pub layout: SeqLayout,
    pub heads: usize,
    pub dropout: Option<(f64, RngStream)>,
}

/// Both MATB streams over one `rows × 6E` QKV matrix (the fused projection
/// of both streams: stream a in columns 0..3E, b in 3E..6E), into one
/// `rows × 2E` output (a's heads, then b's): the input of one fused output
/// projection. Returns the output and each stream's log-sum-exp. With
/// `Readers::Bf16` the bf16 flash kernels store the output as bf16 alone
/// (their backward reads that copy; the plain kernels accumulate in f32).
pub fn attention_pair(qkv: &Tensor, a: Stream, b: Stream, readers: Readers) -> Result<(Tensor, [Tensor; 2])> {
    let dev = device_of("attention pair", &[qkv])?;
    let kernel = AttentionKernel::for_device(&dev);
    let (rows, six_e) = (qkv.dims()[0], qkv.dims()[1]);
    let e = six_e / 6;
    let qv = qkv.reshape([2 * rows, 3 * e])?;
    let readers = if kernel == AttentionKernel::FlashBf16 {
        readers
    } else {
        Readers::Any
    };
    let y = Output::new(&dev, [2 * rows, e], readers)?;
    let la = attention_into(kernel, &qv, a.layout.interleaved(2, 0), a.heads, a.dropout, &y)?;
    let lb = attention_into(kernel, &qv, b.layout.interleaved(2, 1), b.heads, b.dropout, &y)?;
    Ok((y.t.reshape([rows, 2 * e])?, [la, lb]))
}

/// The gradient of `attention_pair` with respect to its `rows × 6E` input;
/// with `Readers::Bf16` the bf16 flash kernels write it as bf16 alone (the
/// QKV projection's backward GEMMs and bias sum read it).
pub fn attention_pair_backward(
    g: &Tensor,
    qkv: &Tensor,
    y: &Tensor,
    lse: &[Tensor; 2],
    a: Stream,
    b: Stream,
    readers: Readers,
) -> Result<Tensor> {
    let dev = device_of("attention pair backward", &[g, qkv, y])?;
    let kernel = AttentionKernel::for_device(&dev);
    let (rows, six_e) = (qkv.dims()[0], qkv.dims()[1]);
    let e = six_e / 6;
    let (qv, yv, gv) = (
        qkv.reshape([2 * rows, 3 * e])?,
        y.reshape([2 * rows, e])?,
        g.reshape([2 * rows, e])?,
    );
    let d = qkv_grad(&dev, kernel, [2 * rows, 3 * e], readers)?;
    attention_backward_into(
        kernel,
        &gv,
        &qv,
        &yv,
        &lse[0],
        a.layout.interleaved(2, 0),
        a.heads,
        a.dropout,
        &d,
    )?;
    attention_backward_into(
        kernel,
        &gv,
        &qv,
        &yv,
        &lse[1],
        b.layout.interleaved(2, 1),
        b.heads,
        b.dropout,
        &d,
    )?;
    d.t.reshape([rows, 6 * e])
}

/// `[a | b]` along `axis` of two 2-d tensors (or two 1-d ones, axis 0).
pub fn concat(a: &Tensor, b: &Tensor, axis: usize) -> Result<Tensor> {
    const OP: &str = "concat2";
    let dev = device_of(OP, &[a, b])?;
    let (rows, ca, cb, shape) = a.shape().concat(b.shape(), axis)?;
    let y = empty(&dev, shape)?;
    pointwise(
        &dev,
        OP,
        rows * (ca + cb),
        &[
            arg(OP, a)?,
            arg(OP, b)?,
            arg(OP, &y)?,
            i32a(rows)?,
            i32a(ca)?,
            i32a(cb)?,
        ],
    )?;
    Ok(y)
}

/// The gradient of `concat`: `g` split back into the shapes of `a` and `b`.
pub fn concat_backward(g: &Tensor, a: &Shape, b: &Shape, axis: usize) -> Result<(Tensor, Tensor)> {
    const OP: &str = "split2";
    let dev = device_of(OP, &[g])?;
    let (rows, ca, cb, _) = a.concat(b, axis)?;
    let (ga, gb) = (empty(&dev, a.clone())?, empty(&dev, b.clone())?);
    pointwise(
        &dev,
        OP,
        rows * (ca + cb),
        &[
            arg(OP, g)?,
            arg(OP, &ga)?,
            arg(OP, &gb)?,
            i32a(rows)?,
            i32a(ca)?,
            i32a(cb)?,
        ],
    )?;
    Ok((ga, gb))
}

// ---- token movement ---------------------------------------------------------

fn index_buf<'d>(dev: &'d dyn DeviceApi, v: &[i32]) -> Result<DeviceVec<'d>> {
    DeviceVec::from_slice(dev, v)
}

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
    let ids: Vec<i32> = idx.iter().map(|&i| i as i32).collect();
    if idx.iter().any(|&i| i >= n_src) {
        return Err(Error::invalid(OP, format!("an index is out of range for {n_src} rows")));
    }
    let di = index_buf(&*dev, &ids)?;
    let y = empty(&dev, [batch, n, e])?;
    pointwise(
        &dev,
        OP,
        batch * n * e,
        &[
            arg(OP, x)?,
            di.arg(),
            arg(OP, &y)?,
            i32a(batch)?,
            i32a(n_src)?,
            i32a(n)?,
            i32a(e)?,
        ],
    )?;
    Ok(y)
}

/// `B × n × E` rows placed at `idx` among `n_dst` per item, `fill` (`[E]`)
/// elsewhere.
pub fn scatter_rows(x: &Tensor, idx: &[usize], fill: &Tensor, batch: usize, n_dst: usize) -> Result<Tensor> {
    scatter_kernel("scatter_rows", x, idx, fill, &[], batch, n_dst)
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
    scatter_kernel("scatter_mask_pe", x, idx, fill, &[pe, s], batch, n_dst)
}

/// The two scatter kernels: `(x, slot, fill, extra…, y, batch, n_dst, n, e)`.
fn scatter_kernel(
    op: &'static str,
    x: &Tensor,
    idx: &[usize],
    fill: &Tensor,
    extra: &[&Tensor],
    batch: usize,
    n_dst: usize,
) -> Result<Tensor> {
    let mut all = vec![x, fill];
    all.extend_from_slice(extra);
    let dev = device_of(op, &all)?;
    let e = fill.numel();
    let n = idx.len() / batch.max(1);
    let slot = index_buf(&*dev, &slots(op, idx, batch, n_dst)?)?;
    let y = empty(&dev, [batch, n_dst, e])?;
    let mut args = vec![arg(op, x)?, slot.arg(), arg(op, fill)?];
    for t in extra {
        args.push(arg(op, t)?);
    }
    args.extend([arg(op, &y)?, i32a(batch)?, i32a(n_dst)?, i32a(n)?, i32a(e)?]);
    pointwise(&dev, op, batch * n_dst * e, &args)?;
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
    let slot = index_buf(&*dev, &slots(OP, idx, batch, n_dst)?)?;
    let df = empty(&dev, [e])?;
    pointwise(
        &dev,
        OP,
        e,
        &[arg(OP, g)?, slot.arg(), arg(OP, &df)?, i32a(batch * n_dst)?, i32a(e)?],
    )?;
    Ok((dx, df))
}

// ---- loss and pooling -------------------------------------------------------

/// Per-token mean and sum of squared errors over the last dimension `p`,
/// left on the device.
fn token_errors(pred: &Tensor, target: &Tensor, p: usize) -> Result<(Tensor, Tensor)> {
    const OP: &str = "token_errors";
    let dev = device_of(OP, &[pred, target])?;
    let tokens = pred.numel() / p.max(1);
    let (e, sq) = (empty(&dev, [tokens])?, empty(&dev, [tokens])?);
    pointwise(
        &dev,
        OP,
        tokens,
        &[
            arg(OP, pred)?,
            arg(OP, target)?,
            arg(OP, &e)?,
            arg(OP, &sq)?,
            i32a(tokens)?,
            i32a(p)?,
        ],
    )?;
    Ok((e, sq))
}

/// The weight of each token in SPEC 7's loss: mask / Σ mask, or 1/tokens
/// when nothing is masked.
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

/// Threads of the one-block reductions (loss, clip factor).
const REDUCE_THREADS: u32 = 256;

/// SPEC 7's masked loss (0-d) and the sum of squared errors over every value
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
    dev.launch(
        OP,
        &Launch::linear(1, REDUCE_THREADS, REDUCE_THREADS * 4 * 8),
        &[
            arg(OP, &e)?,
            arg(OP, &sq)?,
            dm.arg(),
            arg(OP, &loss)?,
            arg(OP, &sse)?,
            i32a(mask.len())?,
        ],
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
    let [grad16, mode] = grad.y16(OP)?;
    pointwise(
        &dev,
        OP,
        pred.numel(),
        &[
            arg(OP, pred)?,
            arg(OP, target)?,
            dw.arg(),
            grad.y(OP)?,
            arg(OP, &g)?,
            i32a(mask.len())?,
            i32a(p)?,
            grad16,
            mode,
        ],
    )?;
    Ok(grad.t)
}

/// Mean over the middle axis of `outer × n × inner`.
pub fn mean_axis(x: &Tensor, outer: usize, n: usize, inner: usize, out_shape: Shape) -> Result<Tensor> {
    const OP: &str = "mean_axis";
    let dev = device_of(OP, &[x])?;
    let y = empty(&dev, out_shape)?;
    pointwise(
        &dev,
        OP,
        outer * inner,
        &[arg(OP, x)?, arg(OP, &y)?, i32a(outer)?, i32a(n)?, i32a(inner)?],
    )?;
    Ok(y)
}

pub fn mean_axis_backward(g: &Tensor, outer: usize, n: usize, inner: usize, in_shape: Shape) -> Result<Tensor> {
    const OP: &str = "mean_axis_backward";
    let dev = device_of(OP, &[g])?;
    let dx = empty(&dev, in_shape)?;
    pointwise(
        &dev,
        OP,
        outer * n * inner,
        &[arg(OP, g)?, arg(OP, &dx)?, i32a(outer)?, i32a(n)?, i32a(inner)?],
    )?;
    Ok(dx)
}

// ---- optimizer --------------------------------------------------------------

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

fn multi_table<'d>(dev: &'d SharedDevice, op: &'static str, rows: &[Vec<&Tensor>]) -> Result<MultiTable<'d>> {
    multi_table_with(dev, op, rows, |_| Ok(None))
}

/// `multi_table` with one more address per row when `extra` gives one.
fn multi_table_with<'d>(
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
    let t = multi_table(&dev, OP, &rows)?;
    let blocks = t.total.div_ceil(THREADS as usize).clamp(1, 256);
    let partial = empty(&dev, [blocks])?;
    dev.launch(
        OP,
        &Launch::linear(blocks as u32, THREADS, THREADS * 4),
        &[t.table.arg(), t.starts.arg(), i32a(t.count)?, arg(OP, &partial)?],
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
    dev.launch(
        OP,
        &Launch::linear(1, 1, 0),
        &[
            arg(OP, &partial)?,
            i32a(partial.numel())?,
            Arg::F64(max_norm),
            arg(OP, &out)?,
        ],
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
    let t = multi_table_with(&dev, OP, &rows, |k| {
        Ok(Some(match storage(OP, params[k][0])?.bf16.get() {
            Some(b) => dev.address(b)?,
            None => 0,
        }))
    })?;
    let bc1 = 1.0 - s.betas.0.powi(s.t as i32);
    let bc2 = 1.0 - s.betas.1.powi(s.t as i32);
    let f = |x: f64| Arg::F32(x as f32);
    pointwise(
        &dev,
        OP,
        t.total,
        &[
            t.table.arg(),
            t.starts.arg(),
            i32a(t.count)?,
            f(s.lr),
            f(s.betas.0),
            f(s.betas.1),
            f(s.eps),
            f(s.weight_decay),
            f(bc1),
            f(bc2.sqrt()),
            arg(OP, clip_norm)?,
        ],
    )
}

// ---- the input superpatch ---------------------------------------------------

/// Raw HU crops (`B × D × H × W`, i16) on a device: half the bytes of the
/// windowed f32 volume; `superpatch_input` expands them there.
pub struct HuBatch {
    dev: SharedDevice,
    buf: crate::device::Buffer,
    len: usize,
}

impl Drop for HuBatch {
    fn drop(&mut self) {
        self.dev.free(&self.buf);
    }
}

pub fn upload_hu(dev: &SharedDevice, hu: &[i16]) -> Result<HuBatch> {
    let buf = dev.alloc_for_upload(hu.len() * 2)?;
    let batch = HuBatch {
        dev: dev.clone(),
        buf,
        len: hu.len(),
    };
    dev.upload(&batch.buf, bytemuck::cast_slice(hu))?;
    Ok(batch)
}

/// The fused superpatch input (kernels/input.cu): window → noise of `sigma`
/// from `noise` (value i of the flattened batch, as `add_noise`) → patchify
/// → the tokens `ids_keep` (`n` per item) of each item: `B × n × P`.
pub fn superpatch_input(
    hu: &HuBatch,
    batch: usize,
    size: [usize; 3],
    patch: [usize; 3],
    ids_keep: &[usize],
    sigma: f64,
    noise: RngStream,
) -> Result<Tensor> {
    const OP: &str = "superpatch_input";
    let [d, h, w] = size;
    let [pd, ph, pw] = patch;
    if batch == 0 || hu.len != batch * d * h * w || ids_keep.len() % batch != 0 {
        return Err(Error::invalid(OP, "the HU batch, sizes and token lists do not agree"));
    }
    if size.iter().zip(&patch).any(|(s, p)| *p == 0 || s % p != 0) {
        return Err(Error::invalid(OP, "the patch size must divide the superpatch size"));
    }
    let n_tok = (d / pd) * (h / ph) * (w / pw);
    if let Some(&bad) = ids_keep.iter().find(|&&i| i >= n_tok) {
        return Err(Error::invalid(OP, format!("token {bad} out of range for {n_tok}")));
    }
    let dev = &hu.dev;
    let n = ids_keep.len() / batch;
    let p = pd * ph * pw;
    let ids: Vec<i32> = ids_keep.iter().map(|&i| i as i32).collect();
    let di = index_buf(&**dev, &ids)?;
    let y = empty(dev, [batch, n, p])?;
    pointwise(
        dev,
        OP,
        batch * n * p,
        &[
            Arg::Buf(&hu.buf),
            di.arg(),
            arg(OP, &y)?,
            i32a(batch)?,
            i32a(d)?,
            i32a(h)?,
            i32a(w)?,
            i32a(pd)?,
            i32a(ph)?,
            i32a(pw)?,
            i32a(n)?,
            Arg::F64(sigma),
            Arg::Rng(noise),
        ],
    )?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_past_32_bits_is_refused_not_wrapped() {
        assert!(matches!(i32a(i32::MAX as usize), Ok(Arg::I32(i32::MAX))));
        assert!(i32a(1 << 31).is_err());
        assert!(i32a((1 << 32) + 5).is_err());
    }

    #[test]
    fn a_layout_past_its_matrix_is_refused() {
        let l = SeqLayout::depth(2, 3, 5);
        rows_fit("t", &l, 30).unwrap();
        assert!(rows_fit("t", &l, 29).is_err());
        assert!(rows_fit("t", &l.interleaved(2, 1), 59).is_err());
        rows_fit("t", &l.interleaved(2, 1), 60).unwrap();
    }
}
