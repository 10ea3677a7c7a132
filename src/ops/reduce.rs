use super::{backward_fn, on_device};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::reduce;
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::tensor::with_dtype;
use crate::tensor::Tensor;

impl Tape {
    /// Mean over `axis`, which is removed from the shape (the token mean pool).
    pub fn mean(&self, x: &Var, axis: usize) -> Result<Var> {
        const OP: &str = "mean";
        let d = x.shape().dims().to_vec();
        if axis >= d.len() {
            return Err(Error::bad_shape(OP, x.shape(), format!("axis {axis} does not exist")));
        }
        if d[axis] == 0 {
            return Err(Error::bad_shape(OP, x.shape(), format!("axis {axis} is empty")));
        }
        let outer: usize = d[..axis].iter().product();
        let n = d[axis];
        let inner: usize = d[axis + 1..].iter().product();
        let mut ys = d.clone();
        ys.remove(axis);
        if on_device(&[x]) {
            let xs = x.shape().clone();
            return Ok(self.record(
                gpu::mean_axis(x.value(), outer, n, inner, ys.into())?,
                &[x],
                backward_fn(OP, move |g, _| {
                    Ok(vec![Some(gpu::mean_axis_backward(g, outer, n, inner, xs.clone())?)])
                }),
            ));
        }
        let dtype = x.value().dtype();
        let y = with_dtype!(dtype, T => Tensor::from_vec(
            reduce::mean_axis(x.value().cpu_slice::<T>()?, outer, n, inner),
            ys,
        )?);
        let xs = x.shape().clone();
        Ok(self.record(
            y,
            &[x],
            backward_fn(OP, move |g, _| {
                with_dtype!(dtype, T => Ok(vec![Some(Tensor::from_vec(
                    reduce::mean_axis_backward(g.cpu_slice::<T>()?, outer, n, inner),
                    &xs,
                )?)]))
            }),
        ))
    }
}
