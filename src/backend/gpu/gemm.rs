//! GEMMs: `linear` and its gradients, in the device's precision (bf16
//! operands from each tensor's bf16 copy in mixed precision, f32 sums), the
//! bias fused into the GEMM.

use super::{bf16_copy, column_sums, device_of, empty, storage, values, Output};
use crate::device::{Gemm, SharedDevice};
use crate::error::Result;
use crate::tensor::{Readers, Shape, Tensor};

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
pub(super) fn product(
    dev: &SharedDevice,
    g: Gemm,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    shape: impl Into<Shape>,
    readers: Readers,
) -> Result<Tensor> {
    const OP: &str = "gemm";
    let bias = bias.map(|t| values(OP, t)).transpose()?;
    if super::stores_bf16_alone(dev, readers) {
        let y = Output::bf16_alone(dev, shape)?;
        let g = Gemm {
            bf16: true,
            bf16_inputs: true,
            bf16_out: true,
            ..g
        };
        dev.gemm(&g, bf16_copy(a)?, bf16_copy(b)?, y.bufs(OP)?.1, bias)?;
        return Ok(y.t);
    }
    let y = empty(dev, shape)?;
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
