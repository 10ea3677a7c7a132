//! Softmax over the last dimension, max-subtracted.

use rayon::prelude::*;

use super::{rows_per_task, CpuFloat};

/// Softmax of one row, in place.
pub fn softmax_row<T: CpuFloat>(row: &mut [T]) {
    let max = row.iter().copied().fold(T::from_f64(f64::NEG_INFINITY), T::max);
    let mut sum = T::zero();
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = T::one() / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `dx = y ⊙ (g − Σ g⊙y)` for one row, written into `g`.
pub fn softmax_row_backward<T: CpuFloat>(g: &mut [T], y: &[T]) {
    let dot: T = g.iter().zip(y).map(|(&g, &y)| g * y).sum();
    g.iter_mut().zip(y).for_each(|(g, &y)| *g = y * (*g - dot));
}

pub fn forward<T: CpuFloat>(x: &[T], cols: usize) -> Vec<T> {
    let mut y = x.to_vec();
    let blk = rows_per_task(x.len() / cols.max(1), cols) * cols;
    y.par_chunks_mut(blk.max(1))
        .for_each(|b| b.chunks_mut(cols).for_each(softmax_row));
    y
}

pub fn backward<T: CpuFloat>(g: &[T], y: &[T], cols: usize) -> Vec<T> {
    let mut dx = g.to_vec();
    let blk = rows_per_task(y.len() / cols.max(1), cols) * cols;
    dx.par_chunks_mut(blk.max(1))
        .zip(y.par_chunks(blk.max(1)))
        .for_each(|(d, y)| {
            d.chunks_mut(cols)
                .zip(y.chunks(cols))
                .for_each(|(d, y)| softmax_row_backward(d, y))
        });
    dx
}
