//! The device half of the tensor engine: each op's forward and backward on
//! tensors that live on a device, written once against the device trait so
//! the emulator runs exactly the orchestration the GPU runs. One module per
//! kernel family, mirroring kernels/*.cu; every launch goes through the
//! typed launcher build.rs generates from the kernel's declaration
//! (`kernels::k`). Tensors here are f32; outputs are fresh device buffers
//! (poisoned with NaN on the emulator, so an unwritten value shows). The
//! ops in src/ops dispatch here when their operands are on a device.

mod attention;
mod gemm;
mod input;
mod loss;
mod norm;
mod optim;
mod pointwise;
mod seg;
mod tokens;

use std::sync::Arc;

pub use self::attention::{
    attention, attention_backward, attention_backward_with, attention_pair, attention_pair_backward, attention_with,
    flash_launch, AttentionKernel, Stream,
};
pub use self::gemm::{bf16_bits, linear, linear_backward};
pub use self::input::{superpatch_input, upload_hu, HuBatch};
pub use self::loss::{masked_mse, masked_mse_backward, mean_axis, mean_axis_backward, sum_sq_err};
pub use self::norm::{add_layer_norm, layer_norm, layer_norm_backward};
pub use self::optim::{adamw_multi, clip_norm, clip_values, sum_of_squares_multi, AdamWStep};
pub use self::pointwise::{
    add, column_sums, concat, concat_backward, dropout, gate_mix, gate_mix_backward, gelu, gelu_backward, gelu_dropout,
    gelu_dropout_backward, mul, scale, sigmoid, sigmoid_backward, sum,
};
pub use self::seg::{
    batch_norm, batch_norm_backward, conv3d, conv3d_backward, dice_ce, dice_ce_backward, relu, relu_backward, resize3d,
    resize3d_backward, transpose12, BnSaved, ConvDims, DiceSaved,
};
pub use self::tokens::{gather_rows, gather_rows_backward, scatter_mask_pe, scatter_rows, scatter_rows_backward};
use super::kernels::{consts, k};
use crate::device::{Buffer, Launch, SharedDevice};
use crate::error::{Error, Result};
use crate::tensor::{DeviceStorage, Readers, Shape, Tensor};

/// Threads per block of the pointwise kernels.
const THREADS: u32 = 256;

/// The grid of a grid-stride kernel over `n` items: a thread an item, up to
/// 65,535 blocks (the grid-stride loop covers the rest). The same on every
/// device, so the emulator runs the geometry a GPU runs.
pub fn grid_stride(n: usize) -> Launch {
    Launch::linear((n.div_ceil(THREADS as usize)).clamp(1, 65_535) as u32, THREADS, 0)
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

/// The f32 values of `t` (widened from its bf16 copy if it is stored as
/// bf16 alone).
fn values<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a Buffer> {
    storage_values(storage(op, t)?)
}

/// The f32 values of a device storage. A tensor stored as bf16 alone
/// (`Readers::Bf16`) is widened once (`bf16_to_f32`, exact) the first time
/// a kernel that reads f32 asks, and keeps both from then on.
pub fn storage_values(s: &DeviceStorage) -> Result<&Buffer> {
    const OP: &str = "bf16_to_f32";
    if let Some(b) = s.f32.get() {
        return Ok(b);
    }
    let b16 = s
        .bf16
        .get()
        .ok_or_else(|| Error::invalid(OP, "a device tensor holds no values"))?;
    convert_once(s, b16, 4, &s.f32)
}

/// The bf16 copy of a device tensor's values, made (one `f32_to_bf16` pass)
/// the first time it is asked for and kept with the values.
fn bf16_copy(t: &Tensor) -> Result<&Buffer> {
    let s = storage("f32_to_bf16", t)?;
    if let Some(b) = s.bf16.get() {
        return Ok(b);
    }
    convert_once(s, storage_values(s)?, 2, &s.bf16)
}

/// A new buffer holding the first `n` f32 values of `src` rounded to bf16
/// (nearest even): what a bf16 all-reduce sends.
pub fn round_to_bf16(dev: &SharedDevice, src: &Buffer, n: usize) -> Result<Buffer> {
    let b = dev.alloc(n.max(1) * 2)?;
    if let Err(e) = k::f32_to_bf16(&**dev, &grid_stride(n), src, &b, n as u64) {
        dev.free(&b);
        return Err(e);
    }
    Ok(b)
}

/// The first `n` bf16 values of `src` widened into the f32 buffer `dst`.
pub fn widen_bf16(dev: &SharedDevice, src: &Buffer, dst: &Buffer, n: usize) -> Result<()> {
    k::bf16_to_f32(&**dev, &grid_stride(n), src, dst, n as u64)
}

/// Fills `cell` of `s` (once; a second writer's buffer is freed) with a new
/// buffer of `elem` bytes a value converted from `src`: widened from bf16
/// (`elem` 4) or rounded to it (`elem` 2).
fn convert_once<'a>(
    s: &'a DeviceStorage,
    src: &Buffer,
    elem: usize,
    cell: &'a std::sync::OnceLock<Buffer>,
) -> Result<&'a Buffer> {
    let b = s.dev.alloc(s.len * elem)?;
    let (cfg, n) = (grid_stride(s.len), s.len as u64);
    let launched = if elem == 4 {
        k::bf16_to_f32(&*s.dev, &cfg, src, &b, n)
    } else {
        k::f32_to_bf16(&*s.dev, &cfg, src, &b, n)
    };
    if let Err(e) = launched {
        s.dev.free(&b);
        return Err(e);
    }
    if let Err(b) = cell.set(b) {
        s.dev.free(&b);
    }
    cell.get()
        .ok_or_else(|| Error::invalid("convert", "the converted values were not kept"))
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

/// A size or index as a kernel's `int`: refused, never wrapped, when it
/// does not fit.
fn int(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid("launch", format!("{v} does not fit a kernel's 32-bit int")))
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
    mode: u32,
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
        Ok(Output {
            t: out.t,
            mode: consts::OUT16_BOTH,
        })
    }

    /// An output held as bf16 alone.
    fn bf16_alone(dev: &SharedDevice, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        let len = shape.numel();
        Ok(Output {
            t: Tensor::from_device(DeviceStorage::bf16_only(dev.clone(), dev.alloc(len * 2)?, len), shape)?,
            mode: consts::OUT16_ONLY,
        })
    }

    /// An f32 output with no bf16 copy, whatever the precision (a kernel
    /// that writes f32 only; a GEMM makes the copy if one reads it).
    fn f32(dev: &SharedDevice, shape: impl Into<Shape>) -> Result<Self> {
        Ok(Output {
            t: empty(dev, shape)?,
            mode: consts::OUT16_NONE,
        })
    }

    /// `(y, y16)`: the f32 values and the bf16 copy (each the other when
    /// the mode leaves it unwritten).
    fn bufs(&self, op: &'static str) -> Result<(&Buffer, &Buffer)> {
        let s = storage(op, &self.t)?;
        match (s.f32.get(), s.bf16.get()) {
            (Some(v), Some(c)) => Ok((v, c)),
            (Some(v), None) => Ok((v, v)),
            (None, Some(c)) => Ok((c, c)),
            (None, None) => Err(Error::invalid(op, "an output with no buffer")),
        }
    }

    /// The `out16` argument.
    fn mode(&self) -> i32 {
        self.mode as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_past_32_bits_is_refused_not_wrapped() {
        assert_eq!(int(i32::MAX as usize).unwrap(), i32::MAX);
        assert!(int(1 << 31).is_err());
        assert!(int((1 << 32) + 5).is_err());
    }
}
