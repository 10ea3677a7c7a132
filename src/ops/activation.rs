use super::{backward_fn, on_device};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::{elementwise, fused, softmax};
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::rng::RngStream;
use crate::tensor::with_dtype;
use crate::tensor::{Readers, Tensor};

impl Tape {
    /// Exact (erf) GELU.
    pub fn gelu(&self, x: &Var) -> Result<Var> {
        if on_device(&[x]) {
            let xv = x.value().clone();
            return Ok(self.record(
                gpu::gelu(&xv)?,
                &[x],
                backward_fn("gelu", move |g, _| Ok(vec![Some(gpu::gelu_backward(g, &xv)?)])),
            ));
        }
        let dtype = x.value().dtype();
        let y = with_dtype!(dtype, T => Tensor::from_vec(elementwise::gelu(x.value().cpu_slice::<T>()?), x.shape())?);
        let xv = x.value().clone();
        Ok(self.record(
            y,
            &[x],
            backward_fn("gelu", move |g, _| {
                with_dtype!(dtype, T => Ok(vec![Some(Tensor::from_vec(
                    elementwise::gelu_backward(g.cpu_slice::<T>()?, xv.cpu_slice::<T>()?),
                    xv.shape(),
                )?)]))
            }),
        ))
    }

    /// `dropout(gelu(x))` with dropout `(p, stream)` when given (the FFN's
    /// hidden activation). One kernel each way on a device; on the host the
    /// two ops.
    pub fn gelu_dropout(&self, x: &Var, dropout: Option<(f64, RngStream)>, readers: Readers) -> Result<Var> {
        const OP: &str = "gelu_dropout";
        let (p, rng) = dropout.unwrap_or((0.0, RngStream::new(0, 0)));
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid(OP, format!("probability must be in [0, 1), got {p}")));
        }
        if on_device(&[x]) {
            let xv = x.value().clone();
            return Ok(self.record(
                gpu::gelu_dropout(&xv, p, rng, readers)?,
                &[x],
                backward_fn(OP, move |g, _| {
                    Ok(vec![Some(gpu::gelu_dropout_backward(g, &xv, p, rng, readers)?)])
                }),
            ));
        }
        if let Ok(xs) = x.value().cpu_slice::<f32>() {
            // f32 on the host: one fused pass each way (the plain ops below
            // are its reference, tests/ in backend::cpu::fused). When a
            // gradient will flow back, the forward keeps the derivative
            // (dropout factor included) in place of x, and the backward is
            // one product.
            if self.is_recording() && x.tracked() {
                let (y, d) = fused::gelu_dropout_with_derivative(xs, p, rng);
                let d = Tensor::from_vec(d, x.value().shape())?;
                return Ok(self.record(
                    Tensor::from_vec(y, x.value().shape())?,
                    &[x],
                    backward_fn(OP, move |g, _| {
                        let dx = fused::times_derivative(g.cpu_slice::<f32>()?, d.cpu_slice::<f32>()?);
                        Ok(vec![Some(Tensor::from_vec(dx, d.shape())?)])
                    }),
                ));
            }
            let xv = x.value().clone();
            return Ok(self.record(
                Tensor::from_vec(fused::gelu_dropout(xs, p, rng), xv.shape())?,
                &[x],
                backward_fn(OP, move |g, _| {
                    let dx = fused::gelu_dropout_backward(g.cpu_slice::<f32>()?, xv.cpu_slice::<f32>()?, p, rng);
                    Ok(vec![Some(Tensor::from_vec(dx, xv.shape())?)])
                }),
            ));
        }
        let y = self.gelu(x)?;
        if p > 0.0 {
            self.dropout(&y, p, rng)
        } else {
            Ok(y)
        }
    }

    pub fn sigmoid(&self, x: &Var) -> Result<Var> {
        if on_device(&[x]) {
            let y = gpu::sigmoid(x.value())?;
            let yv = y.clone();
            return Ok(self.record(
                y,
                &[x],
                backward_fn("sigmoid", move |g, _| Ok(vec![Some(gpu::sigmoid_backward(g, &yv)?)])),
            ));
        }
        let dtype = x.value().dtype();
        let y =
            with_dtype!(dtype, T => Tensor::from_vec(elementwise::sigmoid(x.value().cpu_slice::<T>()?), x.shape())?);
        let yv = y.clone();
        Ok(self.record(
            y,
            &[x],
            backward_fn("sigmoid", move |g, _| {
                with_dtype!(dtype, T => Ok(vec![Some(Tensor::from_vec(
                    elementwise::sigmoid_backward(g.cpu_slice::<T>()?, yv.cpu_slice::<T>()?),
                    yv.shape(),
                )?)]))
            }),
        ))
    }

    /// Softmax over the last dimension.
    pub fn softmax(&self, x: &Var) -> Result<Var> {
        const OP: &str = "softmax";
        let cols = x.shape().last();
        if x.shape().rank() == 0 || cols == 0 {
            return Err(Error::bad_shape(OP, x.shape(), "needs a non-empty last dimension"));
        }
        let dtype = x.value().dtype();
        let y =
            with_dtype!(dtype, T => Tensor::from_vec(softmax::forward(x.value().cpu_slice::<T>()?, cols), x.shape())?);
        let yv = y.clone();
        Ok(self.record(
            y,
            &[x],
            backward_fn(OP, move |g, _| {
                with_dtype!(dtype, T => Ok(vec![Some(Tensor::from_vec(
                    softmax::backward(g.cpu_slice::<T>()?, yv.cpu_slice::<T>()?, cols),
                    yv.shape(),
                )?)]))
            }),
        ))
    }
}
