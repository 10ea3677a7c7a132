use rayon::prelude::*;

use super::{backward_fn, on_device, same_dtype};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::elementwise::reduce_broadcast;
use crate::backend::cpu::gemm::{gemm, matmul_new, Init, MatRef};
use crate::backend::cpu::CpuFloat;
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::tensor::with_dtype;
use crate::tensor::{Readers, Tensor};

impl Tape {
    /// `y = x·Wᵀ + b` over the last dimension of `x`; `W` is `out × in` (PyTorch's layout).
    pub fn linear(&self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        self.linear_read_by(x, w, b, Readers::Any)
    }

    /// `linear` whose output only `readers` read: with `Readers::Bf16` a
    /// mixed-precision device's GEMM writes it as bf16 alone.
    pub fn linear_read_by(&self, x: &Var, w: &Var, b: Option<&Var>, readers: Readers) -> Result<Var> {
        const OP: &str = "linear";
        let (xs, ws) = (x.shape().clone(), w.shape().clone());
        if ws.rank() != 2 {
            return Err(Error::bad_shape(OP, &ws, "the weight must be 2-d (out × in)"));
        }
        let (out_f, in_f) = (ws.dims()[0], ws.dims()[1]);
        if xs.rank() == 0 || xs.last() != in_f {
            return Err(Error::shape_mismatch(
                OP,
                &xs,
                &ws,
                format!("the last dimension of x must equal in_features = {in_f}"),
            ));
        }
        let mut inputs = vec![x, w];
        if let Some(b) = b {
            if b.shape().dims() != [out_f] {
                return Err(Error::shape_mismatch(
                    OP,
                    &ws,
                    b.shape(),
                    format!("the bias must be [{out_f}]"),
                ));
            }
            inputs.push(b);
        }
        let dtype = same_dtype(OP, &inputs)?;
        if on_device(&inputs) {
            let y = gpu::linear(x.value(), w.value(), b.map(|b| b.value()), readers)?;
            let (xv, wv) = (x.value().clone(), w.value().clone());
            return Ok(self.record(
                y,
                &inputs,
                backward_fn(OP, move |g, needs| {
                    let has_bias = needs.len() > 2;
                    let [dx, dw, db] = gpu::linear_backward(g, &xv, &wv, [needs[0], needs[1], has_bias && needs[2]])?;
                    let mut out = vec![dx, dw];
                    if has_bias {
                        out.push(db);
                    }
                    Ok(out)
                }),
            ));
        }
        let rows = xs.rows();
        let mut ys = xs.dims().to_vec();
        if let Some(last) = ys.last_mut() {
            *last = out_f;
        }
        let y = with_dtype!(dtype, T => {
            // The bias, when there is one, starts as the GEMM's C (β = 1):
            // x·Wᵀ + b without a pass of its own. Where k spans several of
            // the GEMM's k-blocks the bias joins the sum before the last
            // block: a rounding apart from adding it last, the same every run.
            let init = match b {
                Some(b) => Init::Row(b.value().cpu_slice::<T>()?),
                None => Init::Zero,
            };
            let wm = MatRef::rm(w.value().cpu_slice::<T>()?, out_f, in_f);
            let y = matmul_new(T::one(), MatRef::rm(x.value().cpu_slice::<T>()?, rows, in_f), wm.t(), init);
            Tensor::from_vec(y, ys)?
        });
        let (xv, wv) = (x.value().clone(), w.value().clone());
        Ok(self.record(
            y,
            &inputs,
            backward_fn(OP, move |g, needs| {
                with_dtype!(dtype, T => {
                    let gs = g.cpu_slice::<T>()?;
                    let gm = MatRef::rm(gs, rows, out_f);
                    let mut out = vec![None, None];
                    if needs[0] {
                        let dx = matmul_new(T::one(), gm, MatRef::rm(wv.cpu_slice::<T>()?, out_f, in_f), Init::Zero);
                        out[0] = Some(Tensor::from_vec(dx, xv.shape())?);
                    }
                    if needs[1] {
                        let dw = matmul_new(T::one(), gm.t(), MatRef::rm(xv.cpu_slice::<T>()?, rows, in_f), Init::Zero);
                        out[1] = Some(Tensor::from_vec(dw, wv.shape())?);
                    }
                    if needs.len() > 2 {
                        out.push(if needs[2] {
                            Some(Tensor::from_vec(reduce_broadcast(gs, out_f), [out_f])?)
                        } else {
                            None
                        });
                    }
                    Ok(out)
                })
            }),
        ))
    }

    /// Batched matrix product `[.., m, k] · [.., k, n] → [.., m, n]`; the
    /// leading (batch) dimensions must be equal.
    pub fn matmul(&self, a: &Var, b: &Var) -> Result<Var> {
        const OP: &str = "matmul";
        let (as_, bs) = (a.shape().clone(), b.shape().clone());
        let r = as_.rank();
        if r < 2 || bs.rank() != r || as_.dims()[..r - 2] != bs.dims()[..r - 2] || as_.dims()[r - 1] != bs.dims()[r - 2]
        {
            return Err(Error::shape_mismatch(
                OP,
                &as_,
                &bs,
                "expected [.., m, k] and [.., k, n] with equal leading dimensions",
            ));
        }
        let dtype = same_dtype(OP, &[a, b])?;
        let (m, k, n) = (as_.dims()[r - 2], as_.dims()[r - 1], bs.dims()[r - 1]);
        let batch: usize = as_.dims()[..r - 2].iter().product();
        let mut ys = as_.dims().to_vec();
        ys[r - 1] = n;
        let y = with_dtype!(dtype, T => {
            let y = batched(a.value().cpu_slice::<T>()?, b.value().cpu_slice::<T>()?, batch, m, k, n, false, false);
            Tensor::from_vec(y, ys)?
        });
        let (av, bv) = (a.value().clone(), b.value().clone());
        Ok(self.record(
            y,
            &[a, b],
            backward_fn(OP, move |g, needs| {
                with_dtype!(dtype, T => {
                    let gs = g.cpu_slice::<T>()?;
                    let da = if needs[0] {
                        // dA = dC·Bᵀ: (m × n)·(n × k)
                        Some(Tensor::from_vec(batched(gs, bv.cpu_slice::<T>()?, batch, m, n, k, false, true), av.shape())?)
                    } else {
                        None
                    };
                    let db = if needs[1] {
                        // dB = Aᵀ·dC: (k × m)·(m × n)
                        Some(Tensor::from_vec(batched(av.cpu_slice::<T>()?, gs, batch, k, m, n, true, false), bv.shape())?)
                    } else {
                        None
                    };
                    Ok(vec![da, db])
                })
            }),
        ))
    }
}

/// `batch` products `op(A)·op(B)` giving `m × n` each, where `op(A)` is
/// `m × k` (stored `k × m` when `ta`) and `op(B)` is `k × n` (stored `n × k`
/// when `tb`). One product per rayon task.
#[allow(clippy::too_many_arguments)]
fn batched<T: CpuFloat>(a: &[T], b: &[T], batch: usize, m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<T> {
    let mut y = vec![T::zero(); batch * m * n];
    if m * n == 0 {
        return y;
    }
    y.par_chunks_mut(m * n).enumerate().for_each(|(i, yb)| {
        let ab = &a[i * m * k..(i + 1) * m * k];
        let bb = &b[i * k * n..(i + 1) * k * n];
        let am = if ta {
            MatRef::rm(ab, k, m).t()
        } else {
            MatRef::rm(ab, m, k)
        };
        let bm = if tb {
            MatRef::rm(bb, n, k).t()
        } else {
            MatRef::rm(bb, k, n)
        };
        gemm(T::one(), am, bm, T::zero(), yb, n, 1);
    });
    y
}
