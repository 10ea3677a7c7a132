use super::{backward_fn, on_device, same_dtype};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::{elementwise, loss};
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::tensor::with_dtype;
use crate::tensor::{Element, Readers, Tensor};

fn check_pair(op: &'static str, pred: &Tensor, target: &Tensor) -> Result<()> {
    if pred.shape() != target.shape() {
        return Err(Error::shape_mismatch(
            op,
            pred.shape(),
            target.shape(),
            "prediction and target differ",
        ));
    }
    if pred.dtype() != target.dtype() {
        return Err(Error::dtype_mismatch(op, pred.dtype(), target.dtype()));
    }
    Ok(())
}

impl Tape {
    /// MODEL.md §7: per-token MSE over the last dimension of `pred` (`B × N × P`)
    /// against `target`, averaged over the tokens where `mask` (`B × N`, 1 =
    /// masked) is set, or over all tokens when none is. A 0-d result.
    pub fn masked_mse(&self, pred: &Var, target: &Var, mask: &Tensor) -> Result<Var> {
        Ok(self.masked_mse_with_sse(pred, target, mask, Readers::Any)?.0)
    }

    /// `masked_mse` and the sum of squared errors over every value (0-d,
    /// for the PSNR; not recorded), from the same pass over `pred` and
    /// `target` on a device. The error stays where the operands live.
    /// `pred_grad` says who reads the gradient handed to `pred` (on a
    /// mixed-precision device: stored as bf16 alone for GEMMs only).
    pub fn masked_mse_with_sse(
        &self,
        pred: &Var,
        target: &Var,
        mask: &Tensor,
        pred_grad: Readers,
    ) -> Result<(Var, Tensor)> {
        const OP: &str = "masked_mse";
        check_pair(OP, pred.value(), target.value())?;
        let ps = pred.shape();
        if ps.rank() < 2 || ps.last() == 0 || mask.dims() != &ps.dims()[..ps.rank() - 1] {
            return Err(Error::shape_mismatch(
                OP,
                ps,
                mask.shape(),
                "the mask must have the prediction's shape without its last (patch) dimension",
            ));
        }
        let dtype = same_dtype(OP, &[pred, target])?;
        let p = ps.last();
        if on_device(&[pred, target]) {
            // The loss stays on the device (0-d): nothing in the step waits
            // for the host; the trainer reads it back later.
            let m: Vec<f32> = mask.to_f64_vec()?.iter().map(|&v| v as f32).collect();
            let (l, sse) = gpu::masked_mse(pred.value(), target.value(), &m, p)?;
            let (pv, tv) = (pred.value().clone(), target.value().clone());
            let loss = self.record(
                l,
                &[pred, target],
                backward_fn(OP, move |g, needs| {
                    // The target's gradient is made from it: keep f32 then.
                    let readers = if needs[1] { Readers::Any } else { pred_grad };
                    let d = gpu::masked_mse_backward(&pv, &tv, &m, p, g, readers)?;
                    let dt = if needs[1] { Some(gpu::scale(&d, -1.0)?) } else { None };
                    Ok(vec![Some(d), dt])
                }),
            );
            return Ok((loss, sse));
        }
        let mask = mask.to_dtype(dtype)?;
        let l = with_dtype!(dtype, T => loss::masked_mse(
            pred.value().cpu_slice::<T>()?,
            target.value().cpu_slice::<T>()?,
            mask.cpu_slice::<T>()?,
            p,
        ));
        let y = Tensor::scalar(l, dtype);
        let sse = sum_sq_err(pred.value(), target.value())?;
        let (pv, tv) = (pred.value().clone(), target.value().clone());
        let loss = self.record(
            y,
            &[pred, target],
            backward_fn(OP, move |g, needs| {
                let g0 = g.scalar_value()?;
                with_dtype!(dtype, T => {
                    let d = loss::masked_mse_backward(
                        pv.cpu_slice::<T>()?,
                        tv.cpu_slice::<T>()?,
                        mask.cpu_slice::<T>()?,
                        p,
                        g0,
                    );
                    let dt = if needs[1] {
                        Some(Tensor::from_vec(elementwise::scale(&d, T::from_f64(-1.0)), tv.shape())?)
                    } else {
                        None
                    };
                    Ok(vec![Some(Tensor::from_vec(d, pv.shape())?), dt])
                })
            }),
        );
        Ok((loss, sse))
    }
}

/// MODEL.md §7's PSNR over every value of the batch, `−10·log10(MSE + 1e−8)`.
pub fn psnr(pred: &Tensor, target: &Tensor) -> Result<f64> {
    check_pair("psnr", pred, target)?;
    psnr_from_sse(sum_sq_err(pred, target)?.scalar_value()?, pred.numel())
}

/// The sum of squared errors over every value (0-d, where the operands
/// live: on a device it stays there until read). On the host it is f64.
pub fn sum_sq_err(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    check_pair("sum_sq_err", pred, target)?;
    if pred.device_storage().is_some() {
        return gpu::sum_sq_err(pred, target);
    }
    let sse = with_dtype!(pred.dtype(), T => loss::sum_sq_err(pred.cpu_slice::<T>()?, target.cpu_slice::<T>()?));
    Ok(Tensor::scalar(sse, crate::tensor::DType::F64))
}

/// MODEL.md §7's PSNR from a sum of squared errors over `values` values.
pub fn psnr_from_sse(sse: f64, values: usize) -> Result<f64> {
    if values == 0 {
        return Err(Error::invalid("psnr", "no values"));
    }
    let mse = sse / values as f64;
    Ok(-10.0 * (mse + 1e-8).log10())
}
