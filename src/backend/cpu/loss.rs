//! The masked per-token MSE of MODEL.md §7 and the PSNR metric.

use rayon::prelude::*;

use super::CpuFloat;

/// Per-token mean squared error `e_n` over `p` values, in f64.
fn token_errors<T: CpuFloat>(pred: &[T], target: &[T], p: usize) -> Vec<f64> {
    pred.par_chunks(p)
        .zip(target.par_chunks(p))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(&a, &b)| (a.to_f64() - b.to_f64()).powi(2))
                .sum::<f64>()
                / p as f64
        })
        .collect()
}

/// The weight of each token in the loss: `mask_n / Σ mask`, or `1 / tokens`
/// when nothing is masked (the loss is then the plain mean of `e_n`).
pub fn token_weights<T: CpuFloat>(mask: &[T]) -> Vec<f64> {
    let total: f64 = mask.iter().map(|m| m.to_f64()).sum();
    if total == 0.0 {
        vec![1.0 / mask.len().max(1) as f64; mask.len()]
    } else {
        mask.iter().map(|m| m.to_f64() / total).collect()
    }
}

pub fn masked_mse<T: CpuFloat>(pred: &[T], target: &[T], mask: &[T], p: usize) -> f64 {
    let e = token_errors(pred, target, p);
    token_weights(mask).iter().zip(&e).map(|(w, e)| w * e).sum()
}

/// `∂loss/∂pred`, scaled by the upstream gradient `g`.
pub fn masked_mse_backward<T: CpuFloat>(pred: &[T], target: &[T], mask: &[T], p: usize, g: f64) -> Vec<T> {
    let w = token_weights(mask);
    let mut d = vec![T::zero(); pred.len()];
    d.par_chunks_mut(p)
        .zip(pred.par_chunks(p).zip(target.par_chunks(p)))
        .zip(w.par_iter())
        .for_each(|((d, (a, b)), &w)| {
            let c = g * w * 2.0 / p as f64;
            for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
                *d = T::from_f64(c * (a.to_f64() - b.to_f64()));
            }
        });
    d
}

/// Σ (pred − target)² over every value, in f64 (chunk partials added in order).
pub fn sum_sq_err<T: CpuFloat>(pred: &[T], target: &[T]) -> f64 {
    let partials: Vec<f64> = pred
        .par_chunks(1 << 14)
        .zip(target.par_chunks(1 << 14))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(&a, &b)| (a.to_f64() - b.to_f64()).powi(2))
                .sum::<f64>()
        })
        .collect();
    partials.iter().sum()
}
