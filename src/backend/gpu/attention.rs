//! Multi-head attention over the sequences of a `SeqLayout`
//! (kernels/flash.cu, and the plain kernels of kernels/attention.cu they
//! are checked against): one stream, and both MATB streams over one fused
//! QKV matrix.

use super::{bf16_copy, consts, device_of, empty, grid_stride, int, k, values, Output};
use crate::device::{AttentionChoice, Buffer, DeviceApi, Launch, SharedDevice};
use crate::error::{Error, Result};
use crate::rng::RngStream;
use crate::tensor::{Readers, SeqLayout, Shape, Tensor};

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
}

/// Launch geometry of a flash kernel: one block per (sequence, head, tile
/// of `FLASH_ROWS` rows), 4 warps, and its shared memory as the kernels lay
/// it out (`backward`: the two row statistics and the dO tile too).
pub fn flash_launch(layout: SeqLayout, heads: usize, dh: usize, bf16: bool, backward: bool) -> Launch {
    let (rows, tile) = (consts::FLASH_ROWS as usize, consts::FLASH_TILE as usize);
    let dp = dh.div_ceil(16) * 16;
    let elem = if bf16 { 2 } else { 4 };
    let bytes = if backward {
        2 * rows * 4 + (2 * rows + 2 * tile) * dp * elem + 4 * 16 * tile * elem
    } else {
        (rows + 2 * tile) * dp * elem + 4 * 16 * tile * elem
    };
    Launch {
        grid: [
            (layout.num_seqs() * heads).max(1) as u32,
            layout.len.div_ceil(rows).max(1) as u32,
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
    if heads == 0 || !e.is_multiple_of(heads) {
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
fn input<'a>(op: &'static str, kernel: AttentionKernel, t: &'a Tensor) -> Result<&'a Buffer> {
    if kernel == AttentionKernel::FlashBf16 {
        bf16_copy(t)
    } else {
        values(op, t)
    }
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
    let (yv, y16) = y.bufs(OP)?;
    let (q, l) = (input(OP, kernel, qkv)?, values(OP, &lse)?);
    let (h, ei) = (int(heads)?, int(e)?);
    let dev: &dyn DeviceApi = &*dev;
    match kernel {
        AttentionKernel::Plain => {
            k::attention_forward(dev, &grid_stride(n_lse), q, yv, l, layout, h, ei, p, rng, y16, y.mode())?
        }
        _ => {
            let dh = check_head_dim(OP, e, heads)?;
            let bf16 = kernel == AttentionKernel::FlashBf16;
            let cfg = flash_launch(layout, heads, dh, bf16, false);
            let forward = if bf16 {
                k::flash_forward_bf16
            } else {
                k::flash_forward_f32
            };
            forward(dev, &cfg, q, yv, l, layout, h, ei, p, rng, y16, y.mode())?
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
    let (q, o) = (input(OP, kernel, qkv)?, input(OP, kernel, y)?);
    let (gv, l) = (values(OP, g)?, values(OP, lse)?);
    let (dv, d16) = d.bufs(OP)?;
    let (h, ei) = (int(heads)?, int(e)?);
    let dev: &dyn DeviceApi = &*dev;
    // The two kernels write disjoint columns (q, then k and v) of `d`.
    match kernel {
        AttentionKernel::Plain => {
            let cfg = grid_stride(lse.numel());
            k::attention_backward_dq(dev, &cfg, q, o, gv, l, dv, layout, h, ei, p, rng)?;
            k::attention_backward_dkv(dev, &cfg, q, o, gv, l, dv, layout, h, ei, p, rng)?;
        }
        _ => {
            let dh = check_head_dim(OP, e, heads)?;
            let bf16 = kernel == AttentionKernel::FlashBf16;
            let cfg = flash_launch(layout, heads, dh, bf16, true);
            let (dq, dkv): (FlashBackward, FlashBackward) = if bf16 {
                (k::flash_backward_dq_bf16, k::flash_backward_dkv_bf16)
            } else {
                (k::flash_backward_dq_f32, k::flash_backward_dkv_f32)
            };
            dq(dev, &cfg, q, o, gv, l, dv, layout, h, ei, p, rng, d16, d.mode())?;
            dkv(dev, &cfg, q, o, gv, l, dv, layout, h, ei, p, rng, d16, d.mode())?;
        }
    }
    Ok(())
}

/// The flash backward kernels' common signature.
type FlashBackward = fn(
    &dyn DeviceApi,
    &Launch,
    &Buffer,
    &Buffer,
    &Buffer,
    &Buffer,
    &Buffer,
    SeqLayout,
    i32,
    i32,
    f64,
    RngStream,
    &Buffer,
    i32,
) -> Result<()>;

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
    for (s, which, l) in [(a, 0, &lse[0]), (b, 1, &lse[1])] {
        attention_backward_into(
            kernel,
            &gv,
            &qv,
            &yv,
            l,
            s.layout.interleaved(2, which),
            s.heads,
            s.dropout,
            &d,
        )?;
    }
    d.t.reshape([rows, 6 * e])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_past_its_matrix_is_refused() {
        let l = SeqLayout::depth(2, 3, 5);
        rows_fit("t", &l, 30).unwrap();
        assert!(rows_fit("t", &l, 29).is_err());
        assert!(rows_fit("t", &l.interleaved(2, 1), 59).is_err());
        rows_fit("t", &l.interleaved(2, 1), 60).unwrap();
    }
}
