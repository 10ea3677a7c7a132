//! Row gather and scatter within each batch item: the token selection of
//! dual masking and the decoder's mask-token fill. Indices were validated by
//! the op (in range; unique for scatter).

use rayon::prelude::*;

use super::CpuFloat;

/// `y[b, j] = x[b, idx[b, j]]`; `x` is `B × N × E`, `idx` is `B × n`.
pub fn gather_rows<T: CpuFloat>(x: &[T], idx: &[usize], batch: usize, n_src: usize, e: usize) -> Vec<T> {
    let n = idx.len() / batch.max(1);
    let mut y = vec![T::zero(); batch * n * e];
    if e == 0 {
        return y;
    }
    y.par_chunks_mut(e).enumerate().for_each(|(r, row)| {
        let b = r / n;
        let src = (b * n_src + idx[r]) * e;
        row.copy_from_slice(&x[src..src + e]);
    });
    y
}

/// The adjoint of `gather_rows`: rows are added back where they came from
/// (an index used twice receives both gradients).
pub fn gather_rows_backward<T: CpuFloat>(g: &[T], idx: &[usize], batch: usize, n_src: usize, e: usize) -> Vec<T> {
    let n = idx.len() / batch.max(1);
    let mut dx = vec![T::zero(); batch * n_src * e];
    if e == 0 || n_src == 0 {
        return dx;
    }
    dx.par_chunks_mut(n_src * e).enumerate().for_each(|(b, dxb)| {
        for j in 0..n {
            let dst = idx[b * n + j] * e;
            let src = (b * n + j) * e;
            dxb[dst..dst + e]
                .iter_mut()
                .zip(&g[src..src + e])
                .for_each(|(d, &v)| *d += v);
        }
    });
    dx
}

/// `y[b, idx[b, j]] = x[b, j]`; every other row of `y` (`B × N × E`) is `fill`.
pub fn scatter_rows<T: CpuFloat>(x: &[T], idx: &[usize], fill: &[T], batch: usize, n_dst: usize) -> Vec<T> {
    let e = fill.len();
    let n = idx.len() / batch.max(1);
    let mut y = vec![T::zero(); batch * n_dst * e];
    if e == 0 || n_dst == 0 {
        return y;
    }
    y.par_chunks_mut(n_dst * e).enumerate().for_each(|(b, yb)| {
        for row in yb.chunks_mut(e) {
            row.copy_from_slice(fill);
        }
        for j in 0..n {
            let dst = idx[b * n + j] * e;
            let src = (b * n + j) * e;
            yb[dst..dst + e].copy_from_slice(&x[src..src + e]);
        }
    });
    y
}

/// Returns `(dx, dfill)`: `dx` gathers the scattered rows' gradients, `dfill`
/// sums the gradients of every row that kept the fill value.
pub fn scatter_rows_backward<T: CpuFloat>(
    g: &[T],
    idx: &[usize],
    batch: usize,
    n_dst: usize,
    e: usize,
) -> (Vec<T>, Vec<T>) {
    let dx = gather_rows(g, idx, batch, n_dst, e);
    let n = idx.len() / batch.max(1);
    let mut dfill = vec![0.0f64; e];
    let mut scattered = vec![false; n_dst];
    for b in 0..batch {
        scattered.iter_mut().for_each(|s| *s = false);
        for &i in &idx[b * n..(b + 1) * n] {
            scattered[i] = true;
        }
        for (r, &hit) in scattered.iter().enumerate() {
            if !hit {
                let row = &g[(b * n_dst + r) * e..(b * n_dst + r + 1) * e];
                dfill.iter_mut().zip(row).for_each(|(d, v)| *d += v.to_f64());
            }
        }
    }
    (dx, dfill.into_iter().map(T::from_f64).collect())
}

/// Rows of `[a | b]`: `rows` rows of `ca` values of `a` then `cb` of `b`.
pub fn concat_rows<T: Copy>(a: &[T], b: &[T], rows: usize, ca: usize, cb: usize) -> Vec<T> {
    let mut y = Vec::with_capacity(rows * (ca + cb));
    for r in 0..rows {
        y.extend_from_slice(&a[r * ca..(r + 1) * ca]);
        y.extend_from_slice(&b[r * cb..(r + 1) * cb]);
    }
    y
}

/// Rows of `ca + cb` values split back into their `ca` and `cb` parts.
pub fn split_rows<T: Copy>(g: &[T], ca: usize, cb: usize) -> (Vec<T>, Vec<T>) {
    let rows = g.len() / (ca + cb).max(1);
    let (mut a, mut b) = (Vec::with_capacity(rows * ca), Vec::with_capacity(rows * cb));
    for row in g.chunks(ca + cb) {
        a.extend_from_slice(&row[..ca]);
        b.extend_from_slice(&row[ca..]);
    }
    (a, b)
}
