use super::{backward_fn, on_device, same_dtype};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::index;
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::tensor::with_dtype;
use crate::tensor::Tensor;

/// Splits a flat `B·n` index list into `n` per item, checking every index
/// against `limit`.
fn per_item(op: &'static str, idx: &[usize], batch: usize, limit: usize) -> Result<usize> {
    if batch == 0 {
        return if idx.is_empty() {
            Ok(0)
        } else {
            Err(Error::invalid(op, "indices given for an empty batch"))
        };
    }
    if !idx.len().is_multiple_of(batch) {
        return Err(Error::invalid(
            op,
            format!("{} indices do not split evenly over a batch of {batch}", idx.len()),
        ));
    }
    if let Some((k, &i)) = idx.iter().enumerate().find(|(_, &i)| i >= limit) {
        return Err(Error::invalid(
            op,
            format!("index {i} at position {k} is out of range for {limit} rows"),
        ));
    }
    Ok(idx.len() / batch)
}

impl Tape {
    /// Selects rows per batch item: `x` is `B × N × E`, `idx` holds `n`
    /// indices per item (flat, `B·n`); the result is `B × n × E`.
    pub fn gather_rows(&self, x: &Var, idx: &[usize]) -> Result<Var> {
        const OP: &str = "gather_rows";
        let d = x.shape().dims();
        if d.len() != 3 {
            return Err(Error::bad_shape(OP, x.shape(), "expected B × N × E"));
        }
        let (b, n_src, e) = (d[0], d[1], d[2]);
        let n = per_item(OP, idx, b, n_src)?;
        let dtype = x.value().dtype();
        let idx = idx.to_vec();
        if on_device(&[x]) {
            return Ok(self.record(
                gpu::gather_rows(x.value(), &idx, b, n_src, e)?,
                &[x],
                backward_fn(OP, move |g, _| {
                    Ok(vec![Some(gpu::gather_rows_backward(g, &idx, b, n_src, e)?)])
                }),
            ));
        }
        let y = with_dtype!(dtype, T => Tensor::from_vec(
            index::gather_rows(x.value().cpu_slice::<T>()?, &idx, b, n_src, e),
            [b, n, e],
        )?);
        Ok(self.record(
            y,
            &[x],
            backward_fn(OP, move |g, _| {
                with_dtype!(dtype, T => Ok(vec![Some(Tensor::from_vec(
                    index::gather_rows_backward(g.cpu_slice::<T>()?, &idx, b, n_src, e),
                    [b, n_src, e],
                )?)]))
            }),
        ))
    }

    /// Places rows per batch item: `x` is `B × n × E`, `idx` holds `n`
    /// distinct indices per item into `0..n_dst`; the result is
    /// `B × n_dst × E`, every other row equal to `fill` (`[E]`, e.g. the
    /// decoder's mask token, which receives their gradient).
    pub fn scatter_rows(&self, x: &Var, idx: &[usize], n_dst: usize, fill: &Var) -> Result<Var> {
        const OP: &str = "scatter_rows";
        let d = x.shape().dims();
        if d.len() != 3 {
            return Err(Error::bad_shape(OP, x.shape(), "expected B × n × E"));
        }
        let (b, n_in, e) = (d[0], d[1], d[2]);
        if fill.shape().dims() != [e] {
            return Err(Error::shape_mismatch(
                OP,
                x.shape(),
                fill.shape(),
                format!("the fill row must be [{e}]"),
            ));
        }
        let n = per_item(OP, idx, b, n_dst)?;
        if n != n_in {
            return Err(Error::invalid(
                OP,
                format!("{n} indices per item for {n_in} rows of x {}", x.shape()),
            ));
        }
        let mut seen = vec![false; n_dst];
        for item in idx.chunks(n.max(1)) {
            seen.iter_mut().for_each(|s| *s = false);
            for &i in item {
                if std::mem::replace(&mut seen[i], true) {
                    return Err(Error::invalid(OP, format!("index {i} appears twice in one item")));
                }
            }
        }
        let dtype = same_dtype(OP, &[x, fill])?;
        let idx = idx.to_vec();
        if on_device(&[x, fill]) {
            return Ok(self.record(
                gpu::scatter_rows(x.value(), &idx, fill.value(), b, n_dst)?,
                &[x, fill],
                backward_fn(OP, move |g, _| {
                    let (dx, df) = gpu::scatter_rows_backward(g, &idx, b, n_dst, e)?;
                    Ok(vec![Some(dx.reshape([b, n, e])?), Some(df)])
                }),
            ));
        }
        let y = with_dtype!(dtype, T => Tensor::from_vec(
            index::scatter_rows(x.value().cpu_slice::<T>()?, &idx, fill.value().cpu_slice::<T>()?, b, n_dst),
            [b, n_dst, e],
        )?);
        Ok(self.record(
            y,
            &[x, fill],
            backward_fn(OP, move |g, _| {
                with_dtype!(dtype, T => {
                    let (dx, df) = index::scatter_rows_backward(g.cpu_slice::<T>()?, &idx, b, n_dst, e);
                    Ok(vec![
                        Some(Tensor::from_vec(dx, [b, n, e])?),
                        Some(Tensor::from_vec(df, [e])?),
                    ])
                })
            }),
        ))
    }

    /// The decoder's input (MODEL.md §6): `scatter_rows(x, idx, n_dst, fill)`
    /// plus `s · pe` on every item, `pe` an `n_dst × E` constant and `s` a
    /// one-element scale. On a device it is one fused kernel
    /// (`scatter_mask_pe`); on the CPU the composition of the three ops.
    pub fn scatter_rows_add_pe(
        &self,
        x: &Var,
        idx: &[usize],
        n_dst: usize,
        fill: &Var,
        pe: &Var,
        s: &Var,
    ) -> Result<Var> {
        const OP: &str = "scatter_rows_add_pe";
        if !on_device(&[x, fill, pe, s]) {
            let y = self.scatter_rows(x, idx, n_dst, fill)?;
            return self.add(&y, &self.mul(pe, s)?);
        }
        let d = x.shape().dims();
        if d.len() != 3 || fill.shape().dims() != [d[2]] || pe.shape().dims() != [n_dst, d[2]] || s.value().numel() != 1
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "expected x B × n × E, fill [E], pe [{n_dst}, E] and a scalar scale; got {}, {}, {}, {}",
                    x.shape(),
                    fill.shape(),
                    pe.shape(),
                    s.shape()
                ),
            ));
        }
        let (b, e) = (d[0], d[2]);
        let n = per_item(OP, idx, b, n_dst)?;
        if n != d[1] {
            return Err(Error::invalid(
                OP,
                format!("{n} indices per item for {} rows of x", d[1]),
            ));
        }
        let idx = idx.to_vec();
        let (pv, sv) = (pe.value().clone(), s.value().clone());
        let y = gpu::scatter_mask_pe(x.value(), &idx, fill.value(), &pv, &sv, b, n_dst)?;
        Ok(self.record(
            y,
            &[x, fill, pe, s],
            backward_fn(OP, move |g, needs| {
                let (dx, df) = gpu::scatter_rows_backward(g, &idx, b, n_dst, e)?;
                let dpe = if needs[2] {
                    Some(gpu::column_sums(&gpu::mul(g, &sv)?, n_dst * e)?.reshape([n_dst, e])?)
                } else {
                    None
                };
                let ds = if needs[3] {
                    Some(gpu::sum(&gpu::mul(g, &pv)?)?.reshape(sv.shape().clone())?)
                } else {
                    None
                };
                Ok(vec![Some(dx.reshape([b, n, e])?), Some(df), dpe, ds])
            }),
        ))
    }
}
