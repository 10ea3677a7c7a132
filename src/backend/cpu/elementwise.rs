//! Pointwise kernels. Binary ops broadcast the second operand over leading
//! dimensions: `b` repeats every `b.len()` elements of `a` (a bias over rows,
//! a positional table over a batch, a 0-d scalar over everything).

use rayon::prelude::*;

use super::{par_chunks_new, CpuFloat};

const CHUNK: usize = 1 << 14;

fn map<T: CpuFloat>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    par_chunks_new(x.len(), CHUNK, |c, y| {
        let x = &x[c * CHUNK..][..y.len()];
        y.iter_mut().zip(x).for_each(|(y, &x)| *y = f(x))
    })
}

fn zip_map<T: CpuFloat>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    assert_eq!(a.len(), b.len(), "zip_map: lengths differ");
    par_chunks_new(a.len(), CHUNK, |c, y| {
        let (a, b) = (&a[c * CHUNK..][..y.len()], &b[c * CHUNK..][..y.len()]);
        y.iter_mut().zip(a.iter().zip(b)).for_each(|(y, (&a, &b))| *y = f(a, b))
    })
}

/// `out[i] = f(a[i], b[i mod |b|])`.
fn broadcast_map<T: CpuFloat>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let nb = b.len();
    if nb == a.len() || a.is_empty() {
        return zip_map(a, b, f);
    }
    // Whole repeats of `b` per task.
    let per = (CHUNK / nb).max(1) * nb;
    par_chunks_new(a.len(), per, |c, y| {
        let a = &a[c * per..][..y.len()];
        for (y, a) in y.chunks_mut(nb).zip(a.chunks(nb)) {
            y.iter_mut().zip(a.iter().zip(b)).for_each(|(y, (&a, &b))| *y = f(a, b));
        }
    })
}

/// Sums `g` (length a multiple of `nb`) down to `nb` values: the gradient of
/// a broadcast operand. Partial sums per block keep the reduction parallel.
pub fn reduce_broadcast<T: CpuFloat>(g: &[T], nb: usize) -> Vec<T> {
    if nb == g.len() || nb == 0 {
        return g[..nb].to_vec();
    }
    let per_task = (CHUNK / nb).max(1);
    // Partial sums per fixed block, collected in order and then added in
    // order: the result does not depend on how rayon splits the work, so a
    // run and its resumption agree bit for bit.
    let partials: Vec<Vec<T>> = g
        .par_chunks(per_task * nb)
        .map(|blk| {
            let mut acc = vec![T::zero(); nb];
            match (T::as_f32(blk), T::as_f32_mut(&mut acc)) {
                (Some(blk), Some(acc)) => add_rows_f32(blk, acc),
                _ => add_rows(blk, &mut acc),
            }
            acc
        })
        .collect();
    let mut out = vec![T::zero(); nb];
    for p in &partials {
        out.iter_mut().zip(p).for_each(|(o, &v)| *o += v);
    }
    out
}

/// `acc[j] += rows[r·n + j]` for every row `r` in order (`n = acc.len()`).
#[inline(always)]
fn add_rows<T: CpuFloat>(rows: &[T], acc: &mut [T]) {
    for rep in rows.chunks(acc.len()) {
        acc.iter_mut().zip(rep).for_each(|(a, &v)| *a += v);
    }
}

crate::dispatched! {
    /// `add_rows` in f32, compiled for each instruction set (the same adds
    /// in the same order).
    fn add_rows_f32(rows: &[f32], acc: &mut [f32]) {
        add_rows(rows, acc)
    }
}

pub fn add<T: CpuFloat>(a: &[T], b: &[T]) -> Vec<T> {
    broadcast_map(a, b, |a, b| a + b)
}

pub fn mul<T: CpuFloat>(a: &[T], b: &[T]) -> Vec<T> {
    broadcast_map(a, b, |a, b| a * b)
}

pub fn scale<T: CpuFloat>(x: &[T], c: T) -> Vec<T> {
    map(x, |x| x * c)
}

/// `Σ a[i]·b[i mod |b|]` folded to `|b|` values: the gradient of the
/// broadcast factor of `mul`.
pub fn mul_reduce<T: CpuFloat>(g: &[T], a: &[T], nb: usize) -> Vec<T> {
    reduce_broadcast(&zip_map(g, a, |g, a| g * a), nb)
}

pub fn sigmoid<T: CpuFloat>(x: &[T]) -> Vec<T> {
    map(x, |x| T::one() / (T::one() + (-x).exp()))
}

/// `g·y·(1 − y)` from the saved output `y`.
pub fn sigmoid_backward<T: CpuFloat>(g: &[T], y: &[T]) -> Vec<T> {
    zip_map(g, y, |g, y| g * y * (T::one() - y))
}

/// `max(x, 0)`.
pub fn relu<T: CpuFloat>(x: &[T]) -> Vec<T> {
    map(x, |x| if x > T::zero() { x } else { T::zero() })
}

/// `g` where the saved input `x` was positive, else 0 (PyTorch's gradient
/// at 0).
pub fn relu_backward<T: CpuFloat>(g: &[T], x: &[T]) -> Vec<T> {
    zip_map(g, x, |g, x| if x > T::zero() { g } else { T::zero() })
}

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1/√(2π): the standard normal density at 0.
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Exact GELU, `x·Φ(x) = ½·x·(1 + erf(x/√2))`, as PyTorch's default.
pub fn gelu<T: CpuFloat>(x: &[T]) -> Vec<T> {
    let half = T::from_f64(0.5);
    let r = T::from_f64(FRAC_1_SQRT_2);
    map(x, |x| half * x * (T::one() + (x * r).erf()))
}

/// `g·(Φ(x) + x·φ(x))`.
pub fn gelu_backward<T: CpuFloat>(g: &[T], x: &[T]) -> Vec<T> {
    let half = T::from_f64(0.5);
    let r = T::from_f64(FRAC_1_SQRT_2);
    let c = T::from_f64(INV_SQRT_2PI);
    zip_map(g, x, |g, x| {
        let cdf = half * (T::one() + (x * r).erf());
        let pdf = c * (-half * x * x).exp();
        g * (cdf + x * pdf)
    })
}

/// `(1 − a)·x + a·y`.
pub fn gate_mix<T: CpuFloat>(x: &[T], y: &[T], a: T) -> Vec<T> {
    let one_minus = T::one() - a;
    zip_map(x, y, |x, y| one_minus * x + a * y)
}

/// `∂/∂a = Σ g·(y − x)`, accumulated in f64 over the whole tensor.
pub fn gate_mix_grad_a<T: CpuFloat>(g: &[T], x: &[T], y: &[T]) -> T {
    let partials: Vec<f64> = g
        .par_chunks(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
        .map(|(g, (x, y))| {
            g.iter()
                .zip(x.iter().zip(y))
                .map(|(&g, (&x, &y))| (g * (y - x)).to_f64())
                .sum::<f64>()
        })
        .collect();
    let s: f64 = partials.iter().sum();
    T::from_f64(s)
}

/// Multiplies by a precomputed keep-mask already divided by `1 − p`.
pub fn apply_mask<T: CpuFloat>(x: &[T], mask: &[T]) -> Vec<T> {
    zip_map(x, mask, |x, m| x * m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The column sums of the f32 path (compiled per instruction set) give
    /// the bits of the plain loop over the same blocks, and agree with f64
    /// sums; widths below, at and past one task's chunk.
    #[test]
    fn broadcast_sums_match_the_plain_loop_and_f64() {
        for (nb, rows) in [(1usize, 5000usize), (7, 300), (192, 200), (576, 90), (20_000, 3)] {
            let g: Vec<f32> = (0..nb * rows).map(|i| ((i * 31 % 113) as f32 - 56.0) / 7.0).collect();
            let got = reduce_broadcast(&g, nb);
            let per_task = (CHUNK / nb).max(1);
            let mut want = vec![0.0f32; nb];
            for blk in g.chunks(per_task * nb) {
                let mut acc = vec![0.0f32; nb];
                add_rows(blk, &mut acc);
                want.iter_mut().zip(&acc).for_each(|(w, &a)| *w += a);
            }
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "nb {nb}"
            );
            for (j, &v) in got.iter().enumerate() {
                let exact: f64 = (0..rows).map(|r| g[r * nb + j] as f64).sum();
                assert!(
                    (v as f64 - exact).abs() <= 1e-5 * (1.0 + exact.abs()) * rows as f64,
                    "nb {nb} column {j}"
                );
            }
        }
    }
}
