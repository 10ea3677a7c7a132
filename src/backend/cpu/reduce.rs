//! Mean over one axis of a tensor seen as `outer × n × inner`.

use rayon::prelude::*;

use super::CpuFloat;

pub fn mean_axis<T: CpuFloat>(x: &[T], outer: usize, n: usize, inner: usize) -> Vec<T> {
    let mut y = vec![T::zero(); outer * inner];
    if n == 0 || inner == 0 {
        return y;
    }
    let inv = 1.0 / n as f64;
    y.par_chunks_mut(inner).zip(x.par_chunks(n * inner)).for_each(|(y, x)| {
        let mut acc = vec![0.0f64; inner];
        for row in x.chunks(inner) {
            acc.iter_mut().zip(row).for_each(|(a, v)| *a += v.to_f64());
        }
        y.iter_mut().zip(&acc).for_each(|(y, a)| *y = T::from_f64(a * inv));
    });
    y
}

pub fn mean_axis_backward<T: CpuFloat>(g: &[T], outer: usize, n: usize, inner: usize) -> Vec<T> {
    let mut dx = vec![T::zero(); outer * n * inner];
    if n == 0 || inner == 0 {
        return dx;
    }
    let inv = T::from_f64(1.0 / n as f64);
    dx.par_chunks_mut(n * inner)
        .zip(g.par_chunks(inner))
        .for_each(|(dx, g)| {
            for row in dx.chunks_mut(inner) {
                row.iter_mut().zip(g).for_each(|(d, &g)| *d = g * inv);
            }
        });
    dx
}
