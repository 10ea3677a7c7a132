use super::{backward_fn, on_device, same_dtype};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::elementwise::{self, mul_reduce, reduce_broadcast};
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::tensor::with_dtype;
use crate::tensor::{Element, Tensor};

/// `b` must match a trailing run of `a`'s dimensions (a 0-d `b` always does).
fn check_broadcast(op: &'static str, a: &Var, b: &Var) -> Result<()> {
    if a.shape().ends_with(b.shape()) {
        Ok(())
    } else {
        Err(Error::shape_mismatch(
            op,
            a.shape(),
            b.shape(),
            "the second operand must equal the first or a trailing part of its shape",
        ))
    }
}

impl Tape {
    /// `a + b`, with `b` broadcast over the leading dimensions of `a`.
    pub fn add(&self, a: &Var, b: &Var) -> Result<Var> {
        const OP: &str = "add";
        check_broadcast(OP, a, b)?;
        let dtype = same_dtype(OP, &[a, b])?;
        if on_device(&[a, b]) {
            let (sa, bn) = (a.shape().clone(), b.shape().clone());
            return Ok(self.record(
                gpu::add(a.value(), b.value())?,
                &[a, b],
                backward_fn(OP, move |g, needs| {
                    let da = if needs[0] { Some(g.reshape(&sa)?) } else { None };
                    let db = if needs[1] {
                        Some(gpu::column_sums(g, bn.numel())?.reshape(&bn)?)
                    } else {
                        None
                    };
                    Ok(vec![da, db])
                }),
            ));
        }
        let y = with_dtype!(dtype, T => Tensor::from_vec(
            elementwise::add(a.value().cpu_slice::<T>()?, b.value().cpu_slice::<T>()?),
            a.shape(),
        )?);
        let (sa, sb) = (a.shape().clone(), b.shape().clone());
        Ok(self.record(
            y,
            &[a, b],
            backward_fn(OP, move |g, needs| {
                with_dtype!(dtype, T => {
                    let gs = g.cpu_slice::<T>()?;
                    let da = if needs[0] { Some(g.reshape(&sa)?) } else { None };
                    let db = if needs[1] {
                        Some(Tensor::from_vec(reduce_broadcast(gs, sb.numel()), &sb)?)
                    } else {
                        None
                    };
                    Ok(vec![da, db])
                })
            }),
        ))
    }

    /// `a ⊙ b`, with `b` broadcast over the leading dimensions of `a` (a 0-d
    /// `b` is a learned scale such as `pe_scale`).
    pub fn mul(&self, a: &Var, b: &Var) -> Result<Var> {
        const OP: &str = "mul";
        check_broadcast(OP, a, b)?;
        let dtype = same_dtype(OP, &[a, b])?;
        if on_device(&[a, b]) {
            let (av, bv) = (a.value().clone(), b.value().clone());
            return Ok(self.record(
                gpu::mul(&av, &bv)?,
                &[a, b],
                backward_fn(OP, move |g, needs| {
                    let da = if needs[0] { Some(gpu::mul(g, &bv)?) } else { None };
                    let db = if needs[1] {
                        let ga = gpu::mul(g, &av)?;
                        Some(gpu::column_sums(&ga, bv.numel())?.reshape(bv.shape().clone())?)
                    } else {
                        None
                    };
                    Ok(vec![da, db])
                }),
            ));
        }
        let y = with_dtype!(dtype, T => Tensor::from_vec(
            elementwise::mul(a.value().cpu_slice::<T>()?, b.value().cpu_slice::<T>()?),
            a.shape(),
        )?);
        let (av, bv) = (a.value().clone(), b.value().clone());
        Ok(self.record(
            y,
            &[a, b],
            backward_fn(OP, move |g, needs| {
                with_dtype!(dtype, T => {
                    let gs = g.cpu_slice::<T>()?;
                    let da = if needs[0] {
                        Some(Tensor::from_vec(elementwise::mul(gs, bv.cpu_slice::<T>()?), av.shape())?)
                    } else {
                        None
                    };
                    let db = if needs[1] {
                        Some(Tensor::from_vec(mul_reduce(gs, av.cpu_slice::<T>()?, bv.numel()), bv.shape())?)
                    } else {
                        None
                    };
                    Ok(vec![da, db])
                })
            }),
        ))
    }

    /// `c·x` for a constant `c`.
    pub fn scale(&self, x: &Var, c: f64) -> Result<Var> {
        const OP: &str = "scale";
        let dtype = x.value().dtype();
        if on_device(&[x]) {
            return Ok(self.record(
                gpu::scale(x.value(), c)?,
                &[x],
                backward_fn(OP, move |g, _| Ok(vec![Some(gpu::scale(g, c)?)])),
            ));
        }
        let y = with_dtype!(dtype, T => Tensor::from_vec(
            elementwise::scale(x.value().cpu_slice::<T>()?, T::from_f64(c)),
            x.shape(),
        )?);
        Ok(self.record(
            y,
            &[x],
            backward_fn(OP, move |g, _| {
                with_dtype!(dtype, T => Ok(vec![Some(Tensor::from_vec(
                    elementwise::scale(g.cpu_slice::<T>()?, T::from_f64(c)),
                    g.shape(),
                )?)]))
            }),
        ))
    }

    /// The same values under another shape with as many elements.
    pub fn reshape(&self, x: &Var, shape: impl Into<crate::tensor::Shape>) -> Result<Var> {
        let y = x.value().reshape(shape)?;
        let sx = x.shape().clone();
        Ok(self.record(
            y,
            &[x],
            backward_fn("reshape", move |g, _| Ok(vec![Some(g.reshape(&sx)?)])),
        ))
    }
}

impl Tape {
    /// `[a | b]` along `axis` of two 2-d tensors (rows: axis 0, columns:
    /// axis 1) or two 1-d ones (axis 0): the fused weights of both MATB
    /// streams.
    pub fn concat(&self, a: &Var, b: &Var, axis: usize) -> Result<Var> {
        const OP: &str = "concat";
        let dtype = same_dtype(OP, &[a, b])?;
        let (sa, sb) = (a.shape().clone(), b.shape().clone());
        let (rows, ca, cb, shape) = sa.concat(&sb, axis)?;
        if on_device(&[a, b]) {
            return Ok(self.record(
                gpu::concat(a.value(), b.value(), axis)?,
                &[a, b],
                backward_fn(OP, move |g, _| {
                    let (ga, gb) = gpu::concat_backward(g, &sa, &sb, axis)?;
                    Ok(vec![Some(ga), Some(gb)])
                }),
            ));
        }
        let y = with_dtype!(dtype, T => {
            let (av, bv) = (a.value().cpu_slice::<T>()?, b.value().cpu_slice::<T>()?);
            Tensor::from_vec(crate::backend::cpu::index::concat_rows(av, bv, rows, ca, cb), shape)?
        });
        Ok(self.record(
            y,
            &[a, b],
            backward_fn(OP, move |g, _| {
                with_dtype!(dtype, T => {
                    let (ga, gb) = crate::backend::cpu::index::split_rows(g.cpu_slice::<T>()?, ca, cb);
                    Ok(vec![Some(Tensor::from_vec(ga, &sa)?), Some(Tensor::from_vec(gb, &sb)?)])
                })
            }),
        ))
    }
}

impl Tape {
    /// `B × M × N → B × N × M`: tokens (`B × N × E`) to channels over the
    /// grid (`B × E × N`, then reshaped to `B × E × Dp × Hp × Wp`) for the
    /// segmentation decoder (SPEC §14), and back.
    pub fn transpose12(&self, x: &Var) -> Result<Var> {
        const OP: &str = "transpose12";
        let xs = x.shape().clone();
        if xs.rank() != 3 {
            return Err(Error::bad_shape(OP, &xs, "the input must be B × M × N"));
        }
        if on_device(&[x]) {
            return Ok(self.record(
                gpu::transpose12(x.value())?,
                &[x],
                backward_fn(OP, |g, _| Ok(vec![Some(gpu::transpose12(g)?)])),
            ));
        }
        let [b, m, n] = [xs.dims()[0], xs.dims()[1], xs.dims()[2]];
        let swap = move |v: &[f64], m: usize, n: usize| {
            let mut out = vec![0.0; v.len()];
            for bi in 0..b {
                let base = bi * m * n;
                for i in 0..m {
                    for j in 0..n {
                        out[base + j * m + i] = v[base + i * n + j];
                    }
                }
            }
            out
        };
        let dtype = x.value().dtype();
        let y = Tensor::from_f64_slice(&swap(&x.value().to_f64_vec()?, m, n), [b, n, m], dtype)?;
        Ok(self.record(
            y,
            &[x],
            backward_fn(OP, move |g, _| {
                Ok(vec![Some(Tensor::from_f64_slice(
                    &swap(&g.to_f64_vec()?, n, m),
                    xs.clone(),
                    dtype,
                )?)])
            }),
        ))
    }
}
