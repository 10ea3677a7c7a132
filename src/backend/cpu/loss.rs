//! The masked per-token MSE of MODEL.md §7 and the PSNR metric.

use rayon::prelude::*;

use super::CpuFloat;

/// Per-token mean squared error `e_n` over `p` values, in f64.
fn token_errors<T: CpuFloat>(pred: &[T], target: &[T], p: usize) -> Vec<f64> {
    pred.par_chunks(p)
        .zip(target.par_chunks(p))
        .map(|(a, b)| squared_error_sum(a, b) / p as f64)
        .collect()
}

/// `Σ (a − b)²` in f64, value `i` into lane `i mod 8` and the lanes added
/// in order at the end: eight independent chains, so the sum runs at the
/// adder's rate rather than its latency (a single chain was the loss's
/// whole cost), in the same order on every CPU.
fn squared_error_sum<T: CpuFloat>(a: &[T], b: &[T]) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0.0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| (x.to_f64() - y.to_f64()).powi(2))
        .sum();
    for (x, y) in ca.zip(cb) {
        for t in 0..LANES {
            let d = x[t].to_f64() - y[t].to_f64();
            lanes[t] += d * d;
        }
    }
    lanes.iter().sum::<f64>() + tail
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
        .map(|(a, b)| squared_error_sum(a, b))
        .collect();
    partials.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane sum against the plain one: equal where every partial sum
    /// is exact (small integers), within f64 rounding elsewhere, at lengths
    /// off the lane count; and the masked loss it feeds against its
    /// definition.
    #[test]
    fn squared_error_sums_match_the_plain_sum() {
        for n in [0usize, 1, 7, 8, 9, 512, 1003] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7) % 13) as f32).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5) % 11) as f32).collect();
            let plain: f64 = a.iter().zip(&b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
            assert_eq!(squared_error_sum(&a, &b), plain, "integers, n = {n}");
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f64 = a.iter().zip(&b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
            let got = squared_error_sum(&a, &b);
            assert!(
                (got - plain).abs() <= 1e-14 * plain.max(1.0),
                "n = {n}: {got} against {plain}"
            );
        }
        // Two tokens of 10 values, only the second masked: the loss is its
        // mean squared error.
        let pred: Vec<f32> = (0..20).map(|i| i as f32 / 4.0).collect();
        let target = vec![0.5f32; 20];
        let want = pred[10..].iter().map(|&x| (x as f64 - 0.5).powi(2)).sum::<f64>() / 10.0;
        assert!((masked_mse(&pred, &target, &[0.0f32, 1.0], 10) - want).abs() < 1e-12);
    }
}
