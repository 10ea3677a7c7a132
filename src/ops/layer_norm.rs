use super::{backward_fn, on_device, same_dtype};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::layer_norm::LayerNormStats;
use crate::backend::cpu::{elementwise, fused, layer_norm, CpuFloat};
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::tensor::with_dtype;
use crate::tensor::{Element, Readers, Tensor};

/// The checks of a layer norm over `x`'s last dimension; gives its width.
fn check(op: &'static str, x: &Var, w: &Var, b: &Var, eps: f64) -> Result<usize> {
    let cols = x.shape().last();
    if x.shape().rank() == 0 || cols == 0 {
        return Err(Error::bad_shape(op, x.shape(), "needs a non-empty last dimension"));
    }
    for p in [w, b] {
        if p.shape().dims() != [cols] {
            return Err(Error::shape_mismatch(
                op,
                x.shape(),
                p.shape(),
                format!("weight and bias must be [{cols}]"),
            ));
        }
    }
    if eps.is_nan() || eps < 0.0 {
        return Err(Error::invalid(op, format!("eps must be ≥ 0, got {eps}")));
    }
    Ok(cols)
}

/// The backward of `s = x + k·a`: `g` for x, `k·g` (by `scale`) for a, each
/// where it is needed.
fn residual_backward(
    g: &Tensor,
    needs: &[bool],
    k: f64,
    scale: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Vec<Option<Tensor>>> {
    let da = match (needs[1], k == 1.0) {
        (false, _) => None,
        (true, true) => Some(g.clone()),
        (true, false) => Some(scale(g)?),
    };
    Ok(vec![needs[0].then(|| g.clone()), da])
}

/// The host backward of a layer norm over `x` (`dx`, `dw`, `db`).
fn host_backward<T: CpuFloat>(
    g: &Tensor,
    x: &Tensor,
    w: &Tensor,
    stats: &LayerNormStats<T>,
    cols: usize,
) -> Result<Vec<Option<Tensor>>> {
    let (dx, dw, db) = layer_norm::backward(
        g.cpu_slice::<T>()?,
        x.cpu_slice::<T>()?,
        w.cpu_slice::<T>()?,
        stats,
        cols,
    );
    Ok(vec![
        Some(Tensor::from_vec(dx, x.shape())?),
        Some(Tensor::from_vec(dw, [cols])?),
        Some(Tensor::from_vec(db, [cols])?),
    ])
}

impl Tape {
    /// A residual and the layer norm after it: `(s, layer_norm(s))` with
    /// `s = x + k·a`. On a device one kernel makes both, recorded as the
    /// add and the norm they are (so the backward is theirs); on the host,
    /// the plain ops (`scale` when `k ≠ 1`, `add`, `layer_norm`).
    /// `readers`: who reads the norm's output (`layer_norm_read_by`).
    #[allow(clippy::too_many_arguments)]
    pub fn add_layer_norm(
        &self,
        x: &Var,
        a: &Var,
        k: f64,
        w: &Var,
        b: &Var,
        eps: f64,
        readers: Readers,
    ) -> Result<(Var, Var)> {
        const OP: &str = "add_layer_norm";
        if x.shape() != a.shape() {
            let a = if k == 1.0 { a.clone() } else { self.scale(a, k)? };
            let s = self.add(x, &a)?;
            let y = self.layer_norm_read_by(&s, w, b, eps, readers)?;
            return Ok((s, y));
        }
        if !on_device(&[x, a, w, b]) {
            return self.add_layer_norm_host(x, a, k, w, b, eps);
        }
        check(OP, x, w, b, eps)?;
        same_dtype(OP, &[x, a, w, b])?;
        let (s, y, mean, rstd) = gpu::add_layer_norm(x.value(), a.value(), k, w.value(), b.value(), eps, readers)?;
        let sum = self.record(
            s.clone(),
            &[x, a],
            backward_fn("add", move |g, needs| {
                residual_backward(g, needs, k, |g| gpu::scale(g, k))
            }),
        );
        let wv = w.value().clone();
        let y = self.record(
            y,
            &[&sum, w, b],
            backward_fn("layer_norm", move |g, _| {
                let (dx, dw, db) = gpu::layer_norm_backward(g, &s, &wv, &mean, &rstd)?;
                Ok(vec![Some(dx), Some(dw), Some(db)])
            }),
        );
        Ok((sum, y))
    }

    /// `add_layer_norm` on the host: the sum and the norm of each row made
    /// together (`fused::add_layer_norm`, the plain ops' bits), recorded as
    /// the add and the norm, with the plain backward of each.
    fn add_layer_norm_host(&self, x: &Var, a: &Var, k: f64, w: &Var, b: &Var, eps: f64) -> Result<(Var, Var)> {
        const OP: &str = "add_layer_norm";
        let cols = check(OP, x, w, b, eps)?;
        let dtype = same_dtype(OP, &[x, a, w, b])?;
        with_dtype!(dtype, T => {
            let (s, y, stats) = fused::add_layer_norm(
                x.value().cpu_slice::<T>()?,
                a.value().cpu_slice::<T>()?,
                T::from_f64(k),
                w.value().cpu_slice::<T>()?,
                b.value().cpu_slice::<T>()?,
                cols,
                eps,
            );
            let s = Tensor::from_vec(s, x.shape())?;
            let sum = self.record(
                s.clone(),
                &[x, a],
                backward_fn("add", move |g, needs| {
                    residual_backward(g, needs, k, |g| {
                        Tensor::from_vec(elementwise::scale(g.cpu_slice::<T>()?, T::from_f64(k)), g.shape())
                    })
                }),
            );
            let wv = w.value().clone();
            let y = self.record(
                Tensor::from_vec(y, s.shape())?,
                &[&sum, w, b],
                backward_fn("layer_norm", move |g, _| host_backward::<T>(g, &s, &wv, &stats, cols)),
            );
            Ok((sum, y))
        })
    }

    /// LayerNorm over the last dimension with affine `w`, `b` (both `[C]`).
    pub fn layer_norm(&self, x: &Var, w: &Var, b: &Var, eps: f64) -> Result<Var> {
        self.layer_norm_read_by(x, w, b, eps, Readers::Any)
    }

    /// `layer_norm` whose output only `readers` read: with `Readers::Bf16`
    /// a mixed-precision device stores it as bf16 alone (its backward needs
    /// the input, not the output). The host keeps f32.
    pub fn layer_norm_read_by(&self, x: &Var, w: &Var, b: &Var, eps: f64, readers: Readers) -> Result<Var> {
        const OP: &str = "layer_norm";
        let cols = check(OP, x, w, b, eps)?;
        let dtype = same_dtype(OP, &[x, w, b])?;
        if on_device(&[x, w, b]) {
            let (y, mean, rstd) = gpu::layer_norm(x.value(), w.value(), b.value(), eps, readers)?;
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
                backward_fn(OP, move |g, _| host_backward::<T>(g, &xv, &wv, &stats, cols)),
            ))
        })
    }
}
