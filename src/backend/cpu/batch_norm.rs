//! BatchNorm3d's numbers on the CPU (ops/batch_norm.rs; SPEC §14): every
//! statistic and every element computed in f64 whatever the storage type,
//! each channel's sums over (item, voxel) in that order, so the result
//! does not depend on the thread count. Channels (for the sums) and
//! (item, channel) planes (for the elements) run in parallel; nothing is
//! widened to f64 as a whole tensor.

use rayon::prelude::*;

use super::CpuFloat;

/// The sizes: `b` items of `c` channels of `vox` voxels.
#[derive(Clone, Copy, Debug)]
pub struct Planes {
    pub b: usize,
    pub c: usize,
    pub vox: usize,
}

impl Planes {
    /// Channel `ch` of item `bi` in a `B × C × vox` tensor.
    fn plane<'a, T>(&self, x: &'a [T], bi: usize, ch: usize) -> &'a [T] {
        &x[(bi * self.c + ch) * self.vox..][..self.vox]
    }

    /// `f(ch, items' planes of channel ch)` for every channel, in parallel.
    fn per_channel<T: Sync, R: Send>(&self, x: &[T], f: impl Fn(usize, Vec<&[T]>) -> R + Sync) -> Vec<R> {
        (0..self.c)
            .into_par_iter()
            .map(|ch| f(ch, (0..self.b).map(|bi| self.plane(x, bi, ch)).collect()))
            .collect()
    }
}

/// Each channel's mean and biased variance (`Σ (x − mean)² / n`).
pub fn moments<T: CpuFloat>(x: &[T], p: Planes) -> (Vec<f64>, Vec<f64>) {
    let n = (p.b * p.vox) as f64;
    p.per_channel(x, |_, planes| {
        let mean = planes.iter().flat_map(|v| v.iter()).map(|v| v.to_f64()).sum::<f64>() / n;
        let var = planes
            .iter()
            .flat_map(|v| v.iter())
            .map(|v| (v.to_f64() - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var)
    })
    .into_iter()
    .unzip()
}

/// The per-channel constants of the normalisation: `mean`, `inv =
/// 1/√(var + eps)`, `gamma` and `beta`.
pub struct Affine<'a> {
    pub mean: &'a [f64],
    pub inv: &'a [f64],
    pub gamma: &'a [f64],
    pub beta: &'a [f64],
}

/// `y = (x − mean)·inv·γ + β`.
pub fn forward<T: CpuFloat>(x: &[T], p: Planes, a: &Affine) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(p.vox)
        .zip(x.par_chunks(p.vox))
        .enumerate()
        .for_each(|(k, (y, x))| {
            let ch = k % p.c;
            for (y, &x) in y.iter_mut().zip(x) {
                let xhat = (x.to_f64() - a.mean[ch]) * a.inv[ch];
                *y = T::from_f64(xhat * a.gamma[ch] + a.beta[ch]);
            }
        });
    y
}

/// The gradients `(dx, dγ, dβ)` from `dy`; with `training`, the batch's
/// statistics depend on x too.
pub fn backward<T: CpuFloat>(dy: &[T], x: &[T], p: Planes, a: &Affine, training: bool) -> (Vec<T>, Vec<f64>, Vec<f64>) {
    let n = (p.b * p.vox) as f64;
    // Per channel: Σ dy and Σ dy·x̂.
    let (db, dg): (Vec<f64>, Vec<f64>) = p
        .per_channel(dy, |ch, g| {
            let (mut sum, mut dot) = (0.0, 0.0);
            for (bi, g) in g.iter().enumerate() {
                for (&g, &x) in g.iter().zip(p.plane(x, bi, ch)) {
                    let g = g.to_f64();
                    sum += g;
                    dot += g * ((x.to_f64() - a.mean[ch]) * a.inv[ch]);
                }
            }
            (sum, dot)
        })
        .into_iter()
        .unzip();
    let mut dx = vec![T::zero(); dy.len()];
    dx.par_chunks_mut(p.vox)
        .zip(dy.par_chunks(p.vox).zip(x.par_chunks(p.vox)))
        .enumerate()
        .for_each(|(k, (dx, (g, x)))| {
            let ch = k % p.c;
            let scale = a.gamma[ch] * a.inv[ch];
            for ((dx, &g), &x) in dx.iter_mut().zip(g).zip(x) {
                let g = g.to_f64();
                *dx = T::from_f64(if training {
                    let xhat = (x.to_f64() - a.mean[ch]) * a.inv[ch];
                    scale * (g - db[ch] / n - xhat * dg[ch] / n)
                } else {
                    scale * g
                });
            }
        });
    (dx, dg, db)
}
