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
    if let (Some(x), Some(w), Some(b)) = (T::as_f32(x), T::as_f32(w), T::as_f32(b)) {
        if let Some(y) = T::as_f32_mut(y) {
            let (mu, rs) = row_f32(x, w, b, eps, y);
            return (T::from_f64(mu as f64), T::from_f64(rs as f64));
        }
    }
    row_in_lanes(x, w, b, eps, y)
}

crate::dispatched! {
    /// `row` in f32, compiled for each instruction set (the same bits at
    /// every level: the lanes below fix the order of every sum).
    fn row_f32(x: &[f32], w: &[f32], b: &[f32], eps: f64, y: &mut [f32]) -> (f32, f32) {
        row_in_lanes(x, w, b, eps, y)
    }
}

/// How many f64 partial sums a row's moments keep.
const LANES: usize = 8;

/// `row` as written: two passes in f64 (a row of 768 f32 values loses
/// digits otherwise), value `c` summed into lane `c % 8` and the lanes
/// added in order, so the passes are vector loops.
#[inline(always)]
pub(super) fn row_in_lanes<T: CpuFloat>(x: &[T], w: &[T], b: &[T], eps: f64, y: &mut [T]) -> (T, T) {
    let cols = x.len();
    let mu = in_lanes(x, |v| v) / cols as f64;
    let var = in_lanes(x, |v| (v - mu) * (v - mu)) / cols as f64;
    let rs = 1.0 / (var + eps).sqrt();
    let (mu_t, rs_t) = (T::from_f64(mu), T::from_f64(rs));
    for (y, ((&x, &w), &b)) in y.iter_mut().zip(x.iter().zip(w).zip(b)) {
        *y = (x - mu_t) * rs_t * w + b;
    }
    (mu_t, rs_t)
}

/// Σ f(x) in f64, `f(x[c])` in lane `c % 8`, the lanes added in order.
#[inline(always)]
fn in_lanes<T: CpuFloat>(x: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let mut whole = x.chunks_exact(LANES);
    for c in &mut whole {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += f(v.to_f64());
        }
    }
    for (l, v) in lanes.iter_mut().zip(whole.remainder()) {
        *l += f(v.to_f64());
    }
    lanes.iter().fold(0.0, |s, &l| s + l)
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
                backward_row(g, x, w, (stats.mean[row], stats.rstd[row]), dx, &mut dw, &mut db);
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

/// One row of the backward: `dx` written, the row's `dw` and `db` terms
/// added to the task's sums.
#[inline]
fn backward_row<T: CpuFloat>(g: &[T], x: &[T], w: &[T], stats: (T, T), dx: &mut [T], dw: &mut [T], db: &mut [T]) {
    let (mu, rs) = (stats.0.as_f32_value(), stats.1.as_f32_value());
    if let (Some(g), Some(x), Some(w), Some(mu), Some(rs)) = (T::as_f32(g), T::as_f32(x), T::as_f32(w), mu, rs) {
        if let (Some(dx), Some(dw), Some(db)) = (T::as_f32_mut(dx), T::as_f32_mut(dw), T::as_f32_mut(db)) {
            return backward_row_f32(g, x, w, mu, rs, dx, dw, db);
        }
    }
    backward_row_in_lanes(g, x, w, stats, dx, dw, db)
}

crate::dispatched! {
    /// `backward_row` in f32, compiled for each instruction set.
    #[allow(clippy::too_many_arguments)]
    fn backward_row_f32(g: &[f32], x: &[f32], w: &[f32], mu: f32, rs: f32, dx: &mut [f32], dw: &mut [f32], db: &mut [f32]) {
        backward_row_in_lanes(g, x, w, (mu, rs), dx, dw, db)
    }
}

/// How many partial sums the backward's two row sums keep.
const BACKWARD_LANES: usize = 16;

/// `backward_row` as written: `x̂ = (x − μ)/σ`, `dx̂ = g·w`, the row's
/// means of `dx̂` and `dx̂·x̂` (summed with value `c` in lane `c % 16`,
/// the lanes added in order), then `dx = (dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))/σ`.
#[inline(always)]
fn backward_row_in_lanes<T: CpuFloat>(
    g: &[T],
    x: &[T],
    w: &[T],
    (mu, rs): (T, T),
    dx: &mut [T],
    dw: &mut [T],
    db: &mut [T],
) {
    const L: usize = BACKWARD_LANES;
    let mut s1 = [T::zero(); L];
    let mut s2 = [T::zero(); L];
    // Value `c` of the row goes to lane `j = c % L`: whole groups of L
    // first (a vector loop), then the remainder.
    let mut add = |j: usize, g: T, x: T, w: T, dw: &mut T, db: &mut T| {
        let xhat = (x - mu) * rs;
        let dxhat = g * w;
        s1[j] += dxhat;
        s2[j] += dxhat * xhat;
        *dw += g * xhat;
        *db += g;
    };
    let whole = g.len() / L * L;
    let groups = g[..whole]
        .chunks_exact(L)
        .zip(x[..whole].chunks_exact(L))
        .zip(w[..whole].chunks_exact(L));
    for (((g, x), w), (dw, db)) in groups.zip(dw[..whole].chunks_exact_mut(L).zip(db[..whole].chunks_exact_mut(L))) {
        for j in 0..L {
            add(j, g[j], x[j], w[j], &mut dw[j], &mut db[j]);
        }
    }
    for j in 0..g.len() - whole {
        let c = whole + j;
        add(j, g[c], x[c], w[c], &mut dw[c], &mut db[c]);
    }
    let n = T::from_f64(g.len() as f64);
    let sum = |s: &[T]| s.iter().fold(T::zero(), |a, &b| a + b);
    let (m1, m2) = (sum(&s1) / n, sum(&s2) / n);
    for (dx, ((&g, &x), &w)) in dx.iter_mut().zip(g.iter().zip(x).zip(w)) {
        let xhat = (x - mu) * rs;
        *dx = rs * (g * w - m1 - xhat * m2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut v = vec![0.0f32; n];
        crate::rng::RngStream::new(seed, 5).fill_normal(0, &mut v);
        // An offset, so the mean matters.
        v.iter().map(|x| 3.0 + 1.7 * x).collect()
    }

    fn wide(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    /// The layer norm and its gradients written out in f64 from the
    /// definition: `(y, dx, dw, db)` of one row.
    fn textbook(x: &[f64], g: &[f64], w: &[f64], b: &[f64], eps: f64) -> [Vec<f64>; 4] {
        let n = x.len() as f64;
        let mu = x.iter().sum::<f64>() / n;
        let rs = 1.0 / (x.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / n + eps).sqrt();
        let xhat: Vec<f64> = x.iter().map(|v| (v - mu) * rs).collect();
        let y = (0..x.len()).map(|c| xhat[c] * w[c] + b[c]).collect();
        let dxhat: Vec<f64> = (0..x.len()).map(|c| g[c] * w[c]).collect();
        let m1 = dxhat.iter().sum::<f64>() / n;
        let m2 = (0..x.len()).map(|c| dxhat[c] * xhat[c]).sum::<f64>() / n;
        let dx = (0..x.len()).map(|c| rs * (dxhat[c] - m1 - xhat[c] * m2)).collect();
        let dw = (0..x.len()).map(|c| g[c] * xhat[c]).collect();
        [y, dx, dw, g.to_vec()]
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// One row forward and backward, in f32 at this CPU's instruction set,
    /// in f32 compiled plainly and in f64, at widths off the lane counts:
    /// the f32 copies give the same bits, and both dtypes agree with the
    /// definition written out (f64 to 1e-12, f32 to its precision).
    #[test]
    fn rows_match_the_definition_with_the_same_bits_at_every_level() {
        let eps = 1e-6;
        for cols in [1usize, 7, 8, 15, 16, 17, 192, 203] {
            let (x, g, w, b) = (values(cols, 1), values(cols, 2), values(cols, 3), values(cols, 4));
            let want = textbook(&wide(&x), &wide(&g), &wide(&w), &wide(&b), eps);

            let (mut y, mut y_plain, mut y64) = (vec![0f32; cols], vec![0f32; cols], vec![0f64; cols]);
            let st = row(&x, &w, &b, eps, &mut y);
            let st_plain = row_in_lanes(&x, &w, &b, eps, &mut y_plain);
            let st64 = row(&wide(&x), &wide(&w), &wide(&b), eps, &mut y64);
            assert_eq!(
                (st.0.to_bits(), st.1.to_bits()),
                (st_plain.0.to_bits(), st_plain.1.to_bits()),
                "cols {cols}"
            );
            assert_eq!(bits(&y), bits(&y_plain), "cols {cols}");

            // The gradient sums start from non-zero partials, as in a task.
            let (mut dx, mut dw, mut db) = (vec![0f32; cols], vec![0f32; cols], vec![0f32; cols]);
            let (mut dx_p, mut dw_p, mut db_p) = (vec![0f32; cols], vec![0f32; cols], vec![0f32; cols]);
            let (mut dx64, mut dw64, mut db64) = (vec![0f64; cols], vec![0f64; cols], vec![0f64; cols]);
            backward_row(&g, &x, &w, st, &mut dx, &mut dw, &mut db);
            backward_row_in_lanes(&g, &x, &w, st, &mut dx_p, &mut dw_p, &mut db_p);
            backward_row(&wide(&g), &wide(&x), &wide(&w), st64, &mut dx64, &mut dw64, &mut db64);
            assert_eq!(bits(&dx), bits(&dx_p), "cols {cols}");
            assert_eq!(bits(&dw), bits(&dw_p), "cols {cols}");
            assert_eq!(bits(&db), bits(&db_p), "cols {cols}");

            let got32 = [&y, &dx, &dw, &db].map(|v| wide(v));
            let got64 = [y64, dx64, dw64, db64];
            for (k, name) in ["y", "dx", "dw", "db"].iter().enumerate() {
                let scale = want[k].iter().fold(1.0f64, |m, v| m.max(v.abs()));
                for c in 0..cols {
                    let e = want[k][c];
                    assert!(
                        (got64[k][c] - e).abs() <= 1e-12 * scale,
                        "f64 cols {cols} {name}[{c}]: {} vs {e}",
                        got64[k][c]
                    );
                    assert!(
                        (got32[k][c] - e).abs() <= 2e-5 * scale,
                        "f32 cols {cols} {name}[{c}]: {} vs {e}",
                        got32[k][c]
                    );
                }
            }
        }
    }

    /// The lanes are the documented order: value `c` in lane `c % 8`, the
    /// lanes added in order.
    #[test]
    fn row_sums_are_the_documented_lanes() {
        let x = values(203, 9);
        let mut lanes = [0.0f64; 8];
        for (c, &v) in x.iter().enumerate() {
            lanes[c % 8] += v as f64;
        }
        let want = lanes.iter().fold(0.0, |s, &l| s + l);
        assert_eq!(in_lanes(&x, |v| v).to_bits(), want.to_bits());
    }
}
