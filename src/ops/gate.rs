use super::{backward_fn, on_device, same_dtype};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::{elementwise, CpuFloat};
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::tensor::with_dtype;
use crate::tensor::Tensor;

impl Tape {
    /// The adaptive patch embedding's gate, `(1 − a)·x + a·y`, with `a` a
    /// one-element tensor (`sigmoid(alpha)`).
    pub fn gate_mix(&self, x: &Var, y: &Var, a: &Var) -> Result<Var> {
        const OP: &str = "gate_mix";
        if x.shape() != y.shape() {
            return Err(Error::shape_mismatch(
                OP,
                x.shape(),
                y.shape(),
                "x and y must have one shape",
            ));
        }
        if a.value().numel() != 1 {
            return Err(Error::shape_mismatch(
                OP,
                x.shape(),
                a.shape(),
                "the gate must be a scalar",
            ));
        }
        let dtype = same_dtype(OP, &[x, y, a])?;
        let (xv, yv, av) = (x.value().clone(), y.value().clone(), a.value().clone());
        if on_device(&[x, y, a]) {
            return Ok(self.record(
                gpu::gate_mix(&xv, &yv, &av)?,
                &[x, y, a],
                backward_fn(OP, move |g, needs| {
                    let (dx, dy, da) = gpu::gate_mix_backward(g, &xv, &yv, &av)?;
                    Ok(vec![
                        needs[0].then_some(dx),
                        needs[1].then_some(dy),
                        needs[2].then_some(da),
                    ])
                }),
            ));
        }
        let out = with_dtype!(dtype, T => {
            let a0 = av.cpu_slice::<T>()?[0];
            Tensor::from_vec(elementwise::gate_mix(xv.cpu_slice::<T>()?, yv.cpu_slice::<T>()?, a0), xv.shape())?
        });
        Ok(self.record(
            out,
            &[x, y, a],
            backward_fn(OP, move |g, needs| {
                with_dtype!(dtype, T => {
                    let gs = g.cpu_slice::<T>()?;
                    let a0 = av.cpu_slice::<T>()?[0];
                    let dx = if needs[0] {
                        Some(Tensor::from_vec(elementwise::scale(gs, T::one() - a0), xv.shape())?)
                    } else {
                        None
                    };
                    let dy = if needs[1] {
                        Some(Tensor::from_vec(elementwise::scale(gs, a0), yv.shape())?)
                    } else {
                        None
                    };
                    let da = if needs[2] {
                        let d = elementwise::gate_mix_grad_a(gs, xv.cpu_slice::<T>()?, yv.cpu_slice::<T>()?);
                        Some(Tensor::from_vec(vec![d], av.shape())?)
                    } else {
                        None
                    };
                    Ok(vec![dx, dy, da])
                })
            }),
        ))
    }
}
