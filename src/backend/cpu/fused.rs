//! The CPU's fused f32 paths of the training step: one pass over memory
//! where the plain ops make several, in the spirit of the device kernels.
//! Each is checked against the plain ops it replaces (elementwise.rs,
//! layer_norm.rs), which stay the reference.
//!
//! - `dropout`: the mask comes from the Philox words of each chunk as it is
//!   applied (no uniform buffer, no stored mask; the backward draws it
//!   again). The same bits as the plain op.
//! - `gelu_dropout`: GELU and that mask in one pass each way, the normal
//!   CDF and density from vecmath (within 3e-7 of libm's), so the loop
//!   vectorises.
//! - `add_layer_norm`: `s = x + k·a` and the layer norm of each row of `s`
//!   while the row is in cache.

use rayon::prelude::*;

use super::layer_norm::LayerNormStats;
use super::{par_chunks_new, par_chunks_new_pair, rows_per_task, vecmath, CpuFloat};
use crate::rng::RngStream;

/// Elements a task handles (a multiple of 4, so each chunk starts on a
/// Philox block); its random words live on the task's stack.
const CHUNK: usize = 4096;

/// A value is kept when its 24-bit uniform `k·2⁻²⁴` is ≥ p, that is when
/// `k ≥ ⌈p·2²⁴⌉`: exactly the plain dropout's test, in integers.
pub(super) fn keep_threshold(p: f64) -> u32 {
    (p * 16_777_216.0).ceil() as u32
}

/// The factor of kept values, `1/(1 − p)` rounded to f32 as the plain
/// dropout's mask holds it.
pub(super) fn keep_scale(p: f64) -> f32 {
    (1.0 / (1.0 - p)) as f32
}

/// A new vector from `body(chunk index, random words, chunk of a, chunk of
/// out)` over `CHUNK`-sized pieces in parallel; the words are value
/// `c·CHUNK + i` of `rng` (all zero, so every value kept, when `p == 0`).
fn new_with_bits(
    a: &[f32],
    p: f64,
    rng: RngStream,
    body: impl Fn(usize, &[u32], &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    par_chunks_new(a.len(), CHUNK, |c, out| {
        let a = &a[c * CHUNK..c * CHUNK + out.len()];
        let mut words = [0u32; CHUNK];
        let words = &mut words[..a.len()];
        if p > 0.0 {
            rng.fill_bits((c * CHUNK) as u64, words);
        }
        body(c, words, a, out);
    })
}

crate::dispatched! {
    /// `y = x·m` with m the dropout factor of each word.
    fn mask_chunk(x: &[f32], words: &[u32], threshold: u32, scale: f32, y: &mut [f32]) {
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(words) {
            *y = x * if w >> 8 >= threshold { scale } else { 0.0 };
        }
    }
}

crate::dispatched! {
    /// `y = x·Φ(x)·m`.
    fn gelu_mask_chunk(x: &[f32], words: &[u32], threshold: u32, scale: f32, y: &mut [f32]) {
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(words) {
            let (cdf, _) = vecmath::normal_cdf_pdf(x);
            *y = x * cdf * if w >> 8 >= threshold { scale } else { 0.0 };
        }
    }
}

crate::dispatched! {
    /// `y = x·Φ(x)·m` and the derivative `d = m·(Φ(x) + x·φ(x))`.
    fn gelu_mask_derivative_chunk(x: &[f32], words: &[u32], threshold: u32, scale: f32, y: &mut [f32], d: &mut [f32]) {
        for (((y, d), &x), &w) in y.iter_mut().zip(d.iter_mut()).zip(x).zip(words) {
            let (cdf, pdf) = vecmath::normal_cdf_pdf(x);
            let m = if w >> 8 >= threshold { scale } else { 0.0 };
            *y = x * cdf * m;
            *d = m * (cdf + x * pdf);
        }
    }
}

crate::dispatched! {
    /// `dx = g·m·(Φ(x) + x·φ(x))`.
    fn gelu_mask_backward_chunk(g: &[f32], x: &[f32], words: &[u32], threshold: u32, scale: f32, dx: &mut [f32]) {
        for (((dx, &g), &x), &w) in dx.iter_mut().zip(g).zip(x).zip(words) {
            let (cdf, pdf) = vecmath::normal_cdf_pdf(x);
            *dx = g * if w >> 8 >= threshold { scale } else { 0.0 } * (cdf + x * pdf);
        }
    }
}

crate::dispatched! {
    /// The softmax of each row of `cols` values, in place: the
    /// exponentials from vecmath (a vector loop), the sum in eight lanes.
    /// Rows shorter than a vector (the depth stream's 4 to 8 positions)
    /// have their maxima taken off row by row and the exponentials in one
    /// loop over the whole slice, which vectorises where a row alone would
    /// not; the values are the same. `softmax::softmax_row` is its
    /// reference.
    pub fn softmax_rows(p: &mut [f32], cols: usize) {
        if cols == 0 {
            return;
        }
        let short = cols < 16;
        if short {
            for row in p.chunks_mut(cols) {
                let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                row.iter_mut().for_each(|x| *x -= m);
            }
            for x in p.iter_mut() {
                *x = vecmath::exp(*x);
            }
        }
        for row in p.chunks_mut(cols) {
            if !short {
                // The maximum lane by lane (a vector max), then across lanes.
                let mut top = [f32::NEG_INFINITY; 16];
                let chunks = row.chunks_exact(16);
                let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                for c in chunks {
                    for t in 0..16 {
                        top[t] = top[t].max(c[t]);
                    }
                }
                let m = top.iter().fold(rest, |m, &x| m.max(x));
                for x in row.iter_mut() {
                    *x = vecmath::exp(*x - m);
                }
            }
            let mut lanes = [0.0f32; 8];
            let chunks = row.chunks_exact(8);
            let tail: f32 = chunks.remainder().iter().sum();
            for c in chunks {
                for t in 0..8 {
                    lanes[t] += c[t];
                }
            }
            let inv = 1.0 / (lanes.iter().sum::<f32>() + tail);
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

crate::dispatched! {
    /// The softmax adjoint of each row of `cols` values, in place:
    /// `g ← y ⊙ (g − Σ g⊙y)` with `y` the row's probabilities. The dot
    /// product runs in sixteen lanes (value `c` in lane `c % 16`, the lanes
    /// added in order), so the loop vectorises with the same bits at every
    /// level. `softmax::softmax_row_backward` is its reference.
    pub fn softmax_rows_backward(g: &mut [f32], y: &[f32], cols: usize) {
        const L: usize = 16;
        if cols == 0 {
            return;
        }
        let whole = cols / L * L;
        for (g, y) in g.chunks_mut(cols).zip(y.chunks(cols)) {
            let mut lanes = [0.0f32; L];
            for (gc, yc) in g[..whole].chunks_exact(L).zip(y[..whole].chunks_exact(L)) {
                for j in 0..L {
                    lanes[j] += gc[j] * yc[j];
                }
            }
            for (l, (&g, &y)) in lanes.iter_mut().zip(g[whole..].iter().zip(&y[whole..])) {
                *l += g * y;
            }
            // Lanes past a short row hold 0 and add nothing.
            let dot = lanes[..cols.min(L)].iter().fold(0.0f32, |s, &l| s + l);
            g.iter_mut().zip(y).for_each(|(g, &y)| *g = y * (*g - dot));
        }
    }
}

crate::dispatched! {
    /// `out = a ⊙ b`.
    pub fn product_into(a: &[f32], b: &[f32], out: &mut [f32]) {
        for (o, (&a, &b)) in out.iter_mut().zip(a.iter().zip(b)) {
            *o = a * b;
        }
    }
}

/// Inverted dropout of `x` (value `i` kept when value `i` of `rng` is ≥ p);
/// also its own backward, applied to the upstream gradient.
pub fn dropout(x: &[f32], p: f64, rng: RngStream) -> Vec<f32> {
    let (threshold, scale) = (keep_threshold(p), keep_scale(p));
    new_with_bits(x, p, rng, |_, words, x, y| mask_chunk(x, words, threshold, scale, y))
}

/// `dropout(gelu(x))` (no dropout when p is 0).
pub fn gelu_dropout(x: &[f32], p: f64, rng: RngStream) -> Vec<f32> {
    let (threshold, scale) = (keep_threshold(p), keep_scale(p));
    new_with_bits(x, p, rng, |_, words, x, y| {
        gelu_mask_chunk(x, words, threshold, scale, y)
    })
}

/// `gelu_dropout(x)` and its derivative at `x`, dropout factor included,
/// for a training step's backward (`times_derivative`): the normal CDF and
/// density are computed once and no Philox word is drawn twice. The output
/// is `gelu_dropout`'s, bit for bit.
pub fn gelu_dropout_with_derivative(x: &[f32], p: f64, rng: RngStream) -> (Vec<f32>, Vec<f32>) {
    let (threshold, scale) = (keep_threshold(p), keep_scale(p));
    par_chunks_new_pair(x.len(), CHUNK, |c, y, d| {
        let x = &x[c * CHUNK..c * CHUNK + y.len()];
        let mut words = [0u32; CHUNK];
        let words = &mut words[..x.len()];
        if p > 0.0 {
            rng.fill_bits((c * CHUNK) as u64, words);
        }
        gelu_mask_derivative_chunk(x, words, threshold, scale, y, d)
    })
}

/// The gradient `g·d` of `gelu_dropout` from the derivative `d` that
/// `gelu_dropout_with_derivative` made.
pub fn times_derivative(g: &[f32], d: &[f32]) -> Vec<f32> {
    par_chunks_new(g.len(), CHUNK, |c, dx| {
        let at = c * CHUNK..c * CHUNK + dx.len();
        product_into(&g[at.clone()], &d[at], dx)
    })
}

/// The gradient of `gelu_dropout` at `x` for the upstream `g`.
pub fn gelu_dropout_backward(g: &[f32], x: &[f32], p: f64, rng: RngStream) -> Vec<f32> {
    let (threshold, scale) = (keep_threshold(p), keep_scale(p));
    new_with_bits(g, p, rng, |c, words, g, dx| {
        let x = &x[c * CHUNK..c * CHUNK + g.len()];
        gelu_mask_backward_chunk(g, x, words, threshold, scale, dx)
    })
}

/// `s = x + k·a` and the layer norm of `s` over rows of `cols` (weight `w`,
/// bias `b`): `(s, y, stats)`, each row's sum and norm made while it is in
/// cache. The same arithmetic per element as `scale`, `add` and
/// `layer_norm::forward` in turn.
#[allow(clippy::type_complexity)]
pub fn add_layer_norm<T: CpuFloat>(
    x: &[T],
    a: &[T],
    k: T,
    w: &[T],
    b: &[T],
    cols: usize,
    eps: f64,
) -> (Vec<T>, Vec<T>, LayerNormStats<T>) {
    let rows = x.len() / cols.max(1);
    let mut s = vec![T::zero(); x.len()];
    let mut y = vec![T::zero(); x.len()];
    let mut mean = vec![T::zero(); rows];
    let mut rstd = vec![T::zero(); rows];
    let blk = rows_per_task(rows, cols);
    let one = k == T::one();
    s.par_chunks_mut(blk * cols)
        .zip(y.par_chunks_mut(blk * cols))
        .zip(x.par_chunks(blk * cols).zip(a.par_chunks(blk * cols)))
        .zip(mean.par_chunks_mut(blk).zip(rstd.par_chunks_mut(blk)))
        .for_each(|(((s, y), (x, a)), (mean, rstd))| {
            for (r, ((s, y), (x, a))) in s
                .chunks_mut(cols)
                .zip(y.chunks_mut(cols))
                .zip(x.chunks(cols).zip(a.chunks(cols)))
                .enumerate()
            {
                let (m, rs) = add_row(x, a, k, one, (w, b, eps), s, y);
                mean[r] = m;
                rstd[r] = rs;
            }
        });
    (s, y, LayerNormStats { mean, rstd })
}

/// One row of `add_layer_norm`: `s = x + k·a` (`x + a` when `one`), then
/// `layer_norm::row` of it.
#[inline]
fn add_row<T: CpuFloat>(
    x: &[T],
    a: &[T],
    k: T,
    one: bool,
    norm: (&[T], &[T], f64),
    s: &mut [T],
    y: &mut [T],
) -> (T, T) {
    let (w, b, eps) = norm;
    let ins = (T::as_f32(x), T::as_f32(a), T::as_f32(w), T::as_f32(b), k.as_f32_value());
    if let (Some(x), Some(a), Some(w), Some(b), Some(k)) = ins {
        if let (Some(s), Some(y)) = (T::as_f32_mut(s), T::as_f32_mut(y)) {
            let (m, rs) = add_row_f32(x, a, k, one, w, b, eps, s, y);
            return (T::from_f64(m as f64), T::from_f64(rs as f64));
        }
    }
    add_scaled(x, a, k, one, s);
    super::layer_norm::row(s, w, b, eps, y)
}

crate::dispatched! {
    /// `add_row` in f32, compiled for each instruction set.
    #[allow(clippy::too_many_arguments)]
    fn add_row_f32(x: &[f32], a: &[f32], k: f32, one: bool, w: &[f32], b: &[f32], eps: f64, s: &mut [f32], y: &mut [f32]) -> (f32, f32) {
        add_scaled(x, a, k, one, s);
        super::layer_norm::row_in_lanes(s, w, b, eps, y)
    }
}

/// `s = x + k·a`, or `x + a` when `one`: `scale` then `add`, per element.
#[inline(always)]
fn add_scaled<T: CpuFloat>(x: &[T], a: &[T], k: T, one: bool, s: &mut [T]) {
    if one {
        s.iter_mut().zip(x.iter().zip(a)).for_each(|(s, (&x, &a))| *s = x + a);
    } else {
        s.iter_mut()
            .zip(x.iter().zip(a))
            .for_each(|(s, (&x, &a))| *s = x + k * a);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{elementwise, layer_norm};
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut v = vec![0.0f32; n];
        RngStream::new(seed, 9).fill_normal(0, &mut v);
        v.iter().map(|x| 2.5 * x).collect()
    }

    fn plain_mask(n: usize, p: f64, rng: RngStream) -> Vec<f32> {
        let mut u = vec![0.0f32; n];
        rng.fill_uniform(0, &mut u);
        u.iter()
            .map(|&u| if (u as f64) >= p { (1.0 / (1.0 - p)) as f32 } else { 0.0 })
            .collect()
    }

    /// Lengths around the chunk size, so chunks past the first are covered.
    const LENGTHS: [usize; 4] = [1, 1000, CHUNK + 3, 3 * CHUNK + 17];

    #[test]
    fn dropout_is_the_plain_op_bit_for_bit() {
        let rng = RngStream::new(3, 44);
        for n in LENGTHS {
            let x = data(n, 1);
            for p in [0.1, 0.5, 0.9] {
                let want = elementwise::apply_mask(&x, &plain_mask(n, p, rng));
                assert_eq!(dropout(&x, p, rng), want, "n {n} p {p}");
            }
            assert_eq!(dropout(&x, 0.0, rng), x);
        }
    }

    #[test]
    fn gelu_dropout_matches_the_plain_ops() {
        let rng = RngStream::new(8, 2);
        for n in LENGTHS {
            let (x, g) = (data(n, 4), data(n, 5));
            for p in [0.0, 0.2] {
                let mask = plain_mask(n, p, rng);
                let want = elementwise::apply_mask(&elementwise::gelu(&x), &mask);
                let want_dx = elementwise::gelu_backward(&elementwise::apply_mask(&g, &mask), &x);
                let (y, dx) = (gelu_dropout(&x, p, rng), gelu_dropout_backward(&g, &x, p, rng));
                // The training step's form: the same output, the gradient
                // from the saved derivative.
                let (y2, d) = gelu_dropout_with_derivative(&x, p, rng);
                let dx2 = times_derivative(&g, &d);
                assert!(
                    y.iter().zip(&y2).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "n {n} p {p}"
                );
                for i in 0..n {
                    let s = (1.0 / (1.0 - p)) as f32;
                    let tol = 4e-7 * s * g[i].abs() * (1.0 + x[i].abs()) + 1e-6 * want_dx[i].abs();
                    assert!((dx2[i] - want_dx[i]).abs() <= tol, "dx from d: n {n} p {p} at {i}");
                    if mask[i] == 0.0 {
                        assert_eq!(dx2[i], 0.0, "dropped n {n} p {p} at {i}");
                    }
                }
                for i in 0..n {
                    // |ΔΦ| ≤ 3e-7 scaled by |x|, plus f32 rounding.
                    let tol = |v: f32, s: f32| 4e-7 * s * (1.0 + x[i].abs()) + 1e-6 * v.abs();
                    let s = (1.0 / (1.0 - p)) as f32;
                    assert!((y[i] - want[i]).abs() <= tol(want[i], s), "y n {n} p {p} at {i}");
                    assert!(
                        (dx[i] - want_dx[i]).abs() <= tol(want_dx[i], s * g[i].abs()),
                        "dx n {n} p {p} at {i}"
                    );
                    if mask[i] == 0.0 {
                        assert_eq!((y[i], dx[i]), (0.0, 0.0), "dropped n {n} p {p} at {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn softmax_rows_match_the_plain_rows() {
        for cols in [1usize, 7, 8, 16, 64, 67] {
            let x = data(5 * cols, cols as u64);
            let mut fast = x.clone();
            softmax_rows(&mut fast, cols);
            let mut want = x.clone();
            want.chunks_mut(cols).for_each(super::super::softmax::softmax_row);
            for (i, (a, b)) in fast.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-6 * b.max(1e-3), "cols {cols} at {i}: {a} vs {b}");
            }
        }
    }

    /// The softmax adjoint rows against the plain row adjoint (f64 sums
    /// there would differ only by rounding), and against the documented
    /// lanes written out, bit for bit.
    #[test]
    fn softmax_rows_backward_match_the_plain_rows_and_the_lanes() {
        for cols in [1usize, 7, 8, 16, 17, 64, 67] {
            let mut y = data(5 * cols, cols as u64 + 100);
            softmax_rows(&mut y, cols);
            let g = data(5 * cols, cols as u64 + 200);
            let mut fast = g.clone();
            softmax_rows_backward(&mut fast, &y, cols);
            let mut want = g.clone();
            want.chunks_mut(cols)
                .zip(y.chunks(cols))
                .for_each(|(g, y)| super::super::softmax::softmax_row_backward(g, y));
            for (r, ((f, w), (g, y))) in fast
                .chunks(cols)
                .zip(want.chunks(cols))
                .zip(g.chunks(cols).zip(y.chunks(cols)))
                .enumerate()
            {
                let mut lanes = [0.0f32; 16];
                for c in 0..cols {
                    lanes[c % 16] += g[c] * y[c];
                }
                let dot = lanes.iter().fold(0.0f32, |s, &l| s + l);
                let size: f32 = g.iter().zip(y).map(|(g, y)| (g * y).abs()).sum();
                for c in 0..cols {
                    assert_eq!(
                        f[c].to_bits(),
                        (y[c] * (g[c] - dot)).to_bits(),
                        "cols {cols} row {r} at {c}"
                    );
                    assert!(
                        (f[c] - w[c]).abs() <= 1e-6 * y[c] * (1.0 + size),
                        "cols {cols} row {r} at {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn add_layer_norm_is_the_plain_ops_bit_for_bit() {
        let (rows, cols) = (37, 48);
        let (x, a) = (data(rows * cols, 1), data(rows * cols, 2));
        let (w, b) = (data(cols, 3), data(cols, 4));
        for k in [1.0f32, 0.3] {
            let (s, y, st) = add_layer_norm(&x, &a, k, &w, &b, cols, 1e-6);
            let a_k = if k == 1.0 { a.clone() } else { elementwise::scale(&a, k) };
            let want_s = elementwise::add(&x, &a_k);
            let (want_y, want_st) = layer_norm::forward(&want_s, &w, &b, cols, 1e-6);
            assert_eq!(s, want_s);
            assert_eq!(y, want_y);
            assert_eq!(st.mean, want_st.mean);
            assert_eq!(st.rstd, want_st.rstd);
        }
    }
}
