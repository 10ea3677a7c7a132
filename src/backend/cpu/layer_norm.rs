//! Layer norm over the last dimension, biased variance, as PyTorch.

use rayon::prelude::*;

use super::{rows_per_task, CpuFloat};

/// What the backward pass needs from the forward: per-row mean and 1/σ.
pub struct LayerNormStats<T> {
    pub mean: Vec<T>,
    pub rstd: Vec<T>,
}

pub fn forward<T: CpuFloat>(x: &[T], w: &[T], b: &[T], cols: usize, eps: f64) -> (Vec<T>, LayerNormStats<T>) {
    let rows = x.len() / cols.max(1);
    let mut y = vec![T::zero(); x.len()];
    let mut mean = vec![T::zero(); rows];
    let mut rstd = vec![T::zero(); rows];
    let blk = rows_per_task(rows, cols);
    y.par_chunks_mut(blk * cols)
        .zip(x.par_chunks(blk * cols))
        .zip(mean.par_chunks_mut(blk).zip(rstd.par_chunks_mut(blk)))
        .for_each(|((y, x), (mean, rstd))| {
            for (r, (y, x)) in y.chunks_mut(cols).zip(x.chunks(cols)).enumerate() {
                (mean[r], rstd[r]) = row(x, w, b, eps, y);
            }
        });
    (y, LayerNormStats { mean, rstd })
}

/// One row: `y = (x − μ)/σ·w + b`; returns `(μ, 1/σ)`.
#[inline]
pub fn row<T: CpuFloat>(x: &[T], w: &[T], b: &[T], eps: f64, y: &mut [T]) -> (T, T) {
    let cols = x.len();
    // Two passes in f64: a row of 768 f32 values loses digits otherwise.
    let mu = x.iter().map(|v| v.to_f64()).sum::<f64>() / cols as f64;
    let var = x.iter().map(|v| (v.to_f64() - mu).powi(2)).sum::<f64>() / cols as f64;
    let rs = 1.0 / (var + eps).sqrt();
    let (mu_t, rs_t) = (T::from_f64(mu), T::from_f64(rs));
    for c in 0..cols {
        y[c] = (x[c] - mu_t) * rs_t * w[c] + b[c];
    }
    (mu_t, rs_t)
}

/// Returns `(dx, dw, db)`.
pub fn backward<T: CpuFloat>(
    g: &[T],
    x: &[T],
    w: &[T],
    stats: &LayerNormStats<T>,
    cols: usize,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let rows = x.len() / cols.max(1);
    let n = T::from_f64(cols as f64);
    let mut dx = vec![T::zero(); x.len()];
    let blk = rows_per_task(rows, cols);
    let partials: Vec<(Vec<T>, Vec<T>)> = dx
        .par_chunks_mut(blk * cols)
        .zip(g.par_chunks(blk * cols).zip(x.par_chunks(blk * cols)))
        .enumerate()
        .map(|(t, (dx, (g, x)))| {
            let mut dw = vec![T::zero(); cols];
            let mut db = vec![T::zero(); cols];
            for (r, (dx, (g, x))) in dx.chunks_mut(cols).zip(g.chunks(cols).zip(x.chunks(cols))).enumerate() {
                let row = t * blk + r;
                let (mu, rs) = (stats.mean[row], stats.rstd[row]);
                let mut sum_dxhat = T::zero();
                let mut sum_dxhat_xhat = T::zero();
                for c in 0..cols {
                    let xhat = (x[c] - mu) * rs;
                    let dxhat = g[c] * w[c];
                    sum_dxhat += dxhat;
                    sum_dxhat_xhat += dxhat * xhat;
                    dw[c] += g[c] * xhat;
                    db[c] += g[c];
                }
                let (m1, m2) = (sum_dxhat / n, sum_dxhat_xhat / n);
                for c in 0..cols {
                    let xhat = (x[c] - mu) * rs;
                    dx[c] = rs * (g[c] * w[c] - m1 - xhat * m2);
                }
            }
            (dw, db)
        })
        .collect();
    // Block partials added in block order: independent of rayon's splitting.
    let mut dw = vec![T::zero(); cols];
    let mut db = vec![T::zero(); cols];
    for (pw, pb) in &partials {
        dw.iter_mut().zip(pw).for_each(|(a, &b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, &b)| *a += b);
    }
    (dx, dw, db)
}
