use super::{backward_fn, on_device, same_dtype};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::layer_norm;
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::with_dtype;

impl Tape {
    /// LayerNorm over the last dimension with affine `w`, `b` (both `[C]`).
    pub fn layer_norm(&self, x: &Var, w: &Var, b: &Var, eps: f64) -> Result<Var> {
        const OP: &str = "layer_norm";
        let cols = x.shape().last();
        if x.shape().rank() == 0 || cols == 0 {
            return Err(Error::bad_shape(OP, x.shape(), "needs a non-empty last dimension"));
        }
        for p in [w, b] {
            if p.shape().dims() != [cols] {
                return Err(Error::shape_mismatch(
                    OP,
                    x.shape(),
                    p.shape(),
                    format!("weight and bias must be [{cols}]"),
                ));
            }
        }
        if eps.is_nan() || eps < 0.0 {
            return Err(Error::invalid(OP, format!("eps must be ≥ 0, got {eps}")));
        }
        let dtype = same_dtype(OP, &[x, w, b])?;
        if on_device(&[x, w, b]) {
            let (y, mean, rstd) = gpu::layer_norm(x.value(), w.value(), b.value(), eps)?;
            let (xv, wv) = (x.value().clone(), w.value().clone());
            return Ok(self.record(
                y,
                &[x, w, b],
                backward_fn(OP, move |g, _| {
                    let (dx, dw, db) = gpu::layer_norm_backward(g, &xv, &wv, &mean, &rstd)?;
                    Ok(vec![Some(dx), Some(dw), Some(db)])
                }),
            ));
        }
        with_dtype!(dtype, T => {
            let (y, stats) = layer_norm::forward(
                x.value().cpu_slice::<T>()?,
                w.value().cpu_slice::<T>()?,
                b.value().cpu_slice::<T>()?,
                cols,
                eps,
            );
            let y = Tensor::from_vec(y, x.shape())?;
            let (xv, wv) = (x.value().clone(), w.value().clone());
            Ok(self.record(
                y,
                &[x, w, b],
                backward_fn(OP, move |g, _| {
                    let (dx, dw, db) = layer_norm::backward(
                        g.cpu_slice::<T>()?,
                        xv.cpu_slice::<T>()?,
                        wv.cpu_slice::<T>()?,
                        &stats,
                        cols,
                    );
                    Ok(vec![
                        Some(Tensor::from_vec(dx, xv.shape())?),
                        Some(Tensor::from_vec(dw, [cols])?),
                        Some(Tensor::from_vec(db, [cols])?),
                    ])
                }),
            ))
        })
    }
}
