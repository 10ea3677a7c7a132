//! The f32 attention of the CPU step: one pass per (sequence, head) whose
//! products are small register-blocked loops instead of general GEMM calls.
//!
//! The MATB streams attend over short sequences (a depth stream of 8 to 16
//! rows, a slice of 64 to 256), so a general GEMM spends more time packing
//! its operands and dispatching than multiplying: seven calls per (sequence,
//! head) in a training step, tens of thousands a step. Here every product is
//! `C = α·A·B` with `A` read element by element through any strides and `B`
//! read by contiguous rows, accumulated in registers by fused multiply-adds
//! eight rows and 32 columns at a time with AVX-512, else four rows and
//! sixteen (or 8, 4, 1) columns, compiled for AVX-512, AVX2 and baseline
//! x86-64 (the same operations in the same order on each element, so the
//! same bits on every level). Only `Kᵀ` and `Vᵀ` are copied (a head's
//! `dh × L`), so that every `B` has contiguous rows. The forward keeps the
//! probabilities and dropout factors ([`Saved`]) for the backward.
//!
//! The plain GEMM version in attention.rs stays the reference; the tests
//! below check this one against it, forward and backward, with and without
//! dropout, on both stream layouts.

use rayon::prelude::*;

use super::attention::{AttnDropout, AttnShape, RowsPtr};
use super::fused::{keep_scale, keep_threshold, product_into, softmax_rows, softmax_rows_backward};

/// The longest sequence this pass is used for. Against the GEMM reference
/// (`cargo bench --bench cpu_ops -- attention_step`, forward + backward, two
/// threads, AVX-512): 2.3× faster at 4 rows, 1.6× at 8, 1.15× at 64, level
/// at 16 rows of dh 96, and about 1.5× slower at 128 and 256, where packing
/// pays for itself (docs/BENCHMARKS.md).
pub const MAX_LEN: usize = 64;

/// Rows and columns of one register block.
const ROWS: usize = 4;
const COLS: usize = 16;
/// The block where the CPU has AVX-512.
const WIDE_ROWS: usize = 8;
const WIDE_COLS: usize = 32;

crate::dispatched! {
    /// `C ← α·A·B` (overwriting C): `m × n` with `C(i, j) = c[i·ldc + j]`,
    /// `A(i, p) = a[i·rsa + p·csa]` and `B(p, j) = b[p·ldb + j]`; the sum over
    /// `p` runs in order `0..k`.
    #[allow(clippy::too_many_arguments)]
    fn product(m: usize, n: usize, k: usize, alpha: f32, a: &[f32], rsa: usize, csa: usize, b: &[f32], ldb: usize, c: &mut [f32], ldc: usize) {
        if m == 0 || n == 0 {
            return;
        }
        assert!(k == 0 || ((m - 1) * rsa + (k - 1) * csa < a.len() && (k - 1) * ldb + n <= b.len()), "product: an operand is shorter than its view");
        assert!((m - 1) * ldc + n <= c.len(), "product: C is shorter than its view");
        let ops = Operands { k, alpha, a: a.as_ptr(), rsa, csa, b: b.as_ptr(), ldb };
        let c = c.as_mut_ptr();
        let mut j0 = 0;
        // SAFETY (each call below): every block lies inside the extents
        // checked above, since i < m, j0 + W ≤ n and p < k.
        if m >= WIDE_ROWS && crate::simd::isa() == crate::simd::Isa::Avx512 {
            // 8 × 32: sixteen zmm sums, enough independent FMA chains to
            // keep both FMA ports busy (AVX2's sixteen registers hold
            // 4 × 16 at most beside the operands).
            while j0 + WIDE_COLS <= n {
                unsafe { columns::<WIDE_ROWS, WIDE_COLS>(&ops, m, j0, c, ldc) };
                j0 += WIDE_COLS;
            }
        }
        while j0 + COLS <= n {
            unsafe { columns::<ROWS, COLS>(&ops, m, j0, c, ldc) };
            j0 += COLS;
        }
        if j0 + 8 <= n {
            unsafe { columns::<ROWS, 8>(&ops, m, j0, c, ldc) };
            j0 += 8;
        }
        if j0 + 4 <= n {
            unsafe { columns::<ROWS, 4>(&ops, m, j0, c, ldc) };
            j0 += 4;
        }
        while j0 < n {
            unsafe { columns::<ROWS, 1>(&ops, m, j0, c, ldc) };
            j0 += 1;
        }
    }
}

/// The operands of one `product`, as raw pointers after its bounds checks.
struct Operands {
    k: usize,
    alpha: f32,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
}

/// Columns `j0 .. j0 + W` of every row of C.
///
/// # Safety
/// Rows `0..m` and columns `j0 .. j0 + W` must lie inside the operands'
/// checked extents.
#[inline(always)]
unsafe fn columns<const R: usize, const W: usize>(ops: &Operands, m: usize, j0: usize, c: *mut f32, ldc: usize) {
    let mut i = 0;
    while i + R <= m {
        block::<R, W>(ops, i, j0, c, ldc);
        i += R;
    }
    while i + ROWS <= m {
        block::<ROWS, W>(ops, i, j0, c, ldc);
        i += ROWS;
    }
    while i < m {
        block::<1, W>(ops, i, j0, c, ldc);
        i += 1;
    }
}

/// One `R × W` block of C at `(i0, j0)`, its sums held in registers.
///
/// # Safety
/// As for `columns`, for rows `i0 .. i0 + R`.
#[inline(always)]
unsafe fn block<const R: usize, const W: usize>(ops: &Operands, i0: usize, j0: usize, c: *mut f32, ldc: usize) {
    let mut acc = [[0.0f32; W]; R];
    let rows: [*const f32; R] = std::array::from_fn(|r| ops.a.add((i0 + r) * ops.rsa));
    for p in 0..ops.k {
        let brow: [f32; W] = std::ptr::read_unaligned(ops.b.add(p * ops.ldb + j0) as *const [f32; W]);
        for r in 0..R {
            let av = *rows[r].add(p * ops.csa);
            for t in 0..W {
                acc[r][t] = av.mul_add(brow[t], acc[r][t]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let crow = c.add((i0 + r) * ldc + j0);
        for (t, &v) in acc.iter().enumerate() {
            *crow.add(t) = ops.alpha * v;
        }
    }
}

/// Head `h`'s columns of a part (`0` q, `1` k, `2` v) of sequence `s`'s
/// rows, transposed into `out` (`dh × L`, row `d` holding feature d of
/// every position).
fn transposed(qkv: &[f32], sh: &AttnShape, s: usize, part: usize, h: usize, out: &mut [f32]) {
    let (l, e, dh) = (sh.layout.len, sh.width, sh.head_dim());
    let (first, rs) = (sh.layout.base(s) * 3 * e + part * e + h * dh, sh.layout.step * 3 * e);
    assert!(l == 0 || dh == 0 || (first + (l - 1) * rs + dh <= qkv.len() && out.len() >= dh * l));
    transpose(&qkv[first..], rs, l, dh, out);
}

/// `out[d·l + j] = src[j·rs + d]` for `j < l`, `d < dh`: whole 8 × 8
/// tiles by eight-lane shuffles where the CPU has AVX (any level with a
/// kernel here), the edges and a CPU without AVX value by value.
fn transpose(src: &[f32], rs: usize, l: usize, dh: usize, out: &mut [f32]) {
    if l == 0 || dh == 0 {
        return;
    }
    assert!(
        (l - 1) * rs + dh <= src.len() && dh * l <= out.len(),
        "transpose: a view is longer than its slice"
    );
    let (l8, d8) = (l / 8 * 8, dh / 8 * 8);
    let (mut d_done, mut j_done) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if crate::simd::isa() != crate::simd::Isa::Baseline {
        for j0 in (0..l8).step_by(8) {
            for d0 in (0..d8).step_by(8) {
                // SAFETY: the CPU has AVX; rows j0 .. j0 + 8 of src hold
                // columns d0 .. d0 + 8 and rows d0 .. d0 + 8 of out hold
                // columns j0 .. j0 + 8, inside the extents checked above.
                unsafe { tile8_avx(src.as_ptr().add(j0 * rs + d0), rs, out.as_mut_ptr().add(d0 * l + j0), l) };
            }
        }
        // Four rows left over (the encoder's depth streams have four).
        let l4 = l / 4 * 4;
        if l4 > l8 {
            for d0 in (0..d8).step_by(8) {
                // SAFETY: as above, for rows l8 .. l8 + 4 of src and columns
                // l8 .. l8 + 4 of out.
                unsafe { tile4x8_avx(src.as_ptr().add(l8 * rs + d0), rs, out.as_mut_ptr().add(d0 * l + l8), l) };
            }
        }
        (d_done, j_done) = (d8, l4);
    }
    for j in 0..l {
        let d_from = if j < j_done { d_done } else { 0 };
        for d in d_from..dh {
            out[d * l + j] = src[j * rs + d];
        }
    }
}

/// Four rows of eight values (at `src + r·rs`) rearranged so that
/// register `c` holds column `c` of the four rows in its low half and
/// column `c + 4` in its high half: the rows interleaved in pairs, then
/// the pairs' halves joined.
///
/// # Safety
/// AVX present (inlined into the AVX functions below); the rows lie
/// inside their allocation.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn four_rows(src: *const f32, rs: usize) -> [std::arch::x86_64::__m256; 4] {
    use std::arch::x86_64::*;
    let r0 = _mm256_loadu_ps(src);
    let r1 = _mm256_loadu_ps(src.add(rs));
    let r2 = _mm256_loadu_ps(src.add(2 * rs));
    let r3 = _mm256_loadu_ps(src.add(3 * rs));
    // (a0 b0 a1 b1 | a4 b4 a5 b5) and (a2 b2 a3 b3 | a6 b6 a7 b7).
    let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
    let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
    [
        _mm256_shuffle_ps::<0x44>(t0, t2),
        _mm256_shuffle_ps::<0xEE>(t0, t2),
        _mm256_shuffle_ps::<0x44>(t1, t3),
        _mm256_shuffle_ps::<0xEE>(t1, t3),
    ]
}

/// One 8 × 8 tile: rows `r` of `src` (8 values at `src + r·rs`) into
/// columns `r` of `out` (row `c` at `out + c·ld`).
///
/// # Safety
/// AVX present; both views lie inside their allocations.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn tile8_avx(src: *const f32, rs: usize, out: *mut f32, ld: usize) {
    use std::arch::x86_64::*;
    let (top, bottom) = (four_rows(src, rs), four_rows(src.add(4 * rs), rs));
    // A loop, not closures: a closure would lose the target feature.
    for c in 0..4 {
        // Column c: the low halves of rows 0–3 and 4–7; column c + 4: the high.
        _mm256_storeu_ps(out.add(c * ld), _mm256_permute2f128_ps::<0x20>(top[c], bottom[c]));
        _mm256_storeu_ps(out.add((c + 4) * ld), _mm256_permute2f128_ps::<0x31>(top[c], bottom[c]));
    }
}

/// Four rows `r` of `src` (8 values at `src + r·rs`) into columns `r` of
/// `out` (row `c`, four values, at `out + c·ld`).
///
/// # Safety
/// As for [`tile8_avx`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn tile4x8_avx(src: *const f32, rs: usize, out: *mut f32, ld: usize) {
    use std::arch::x86_64::*;
    for (c, &u) in four_rows(src, rs).iter().enumerate() {
        _mm_storeu_ps(out.add(c * ld), _mm256_castps256_ps128(u));
        _mm_storeu_ps(out.add((c + 4) * ld), _mm256_extractf128_ps::<1>(u));
    }
}

/// What the forward keeps for the backward: every (sequence, head)'s
/// probabilities before dropout and, with dropout, their factors (0 or
/// 1/(1 − p)), `L × L` each in (sequence, head) order. The backward reads
/// them instead of computing `Kᵀ`, `Q·Kᵀ`, the softmax and the dropout
/// words again: `heads · L` values a token row, 1.5 MB a block at the
/// small preset's longest stream.
pub struct Saved {
    p: Vec<f32>,
    keep: Vec<f32>,
}

/// A forward task's buffers, made once per task of the pool and reused
/// over its sequences and their heads (every value is written before it
/// is read, so nothing is cleared between them).
struct Scratch {
    /// The head's `Kᵀ` (`dh × L`).
    kt: Vec<f32>,
    /// The Philox words of the head's dropout factors; empty without
    /// dropout.
    words: Vec<u32>,
    /// The head's probabilities after dropout; empty without dropout.
    dropped: Vec<f32>,
}

impl Scratch {
    fn new(sh: &AttnShape, dropout: Option<&AttnDropout>) -> Self {
        let (l, dh) = (sh.layout.len, sh.head_dim());
        let drop_len = if dropout.is_some() { l * l } else { 0 };
        Scratch {
            kt: vec![0.0; dh * l],
            words: vec![0; drop_len],
            dropped: vec![0.0; drop_len],
        }
    }

    /// Head `h` of sequence `s`: the probabilities into `p` and, with
    /// dropout, the kept factors into `keep` (`L × L` each).
    #[allow(clippy::too_many_arguments)]
    fn probabilities(
        &mut self,
        qkv: &[f32],
        sh: &AttnShape,
        s: usize,
        h: usize,
        dropout: Option<&AttnDropout>,
        p: &mut [f32],
        keep: &mut [f32],
    ) {
        let (l, e, dh) = (sh.layout.len, sh.width, sh.head_dim());
        let (base, rs) = (sh.layout.base(s) * 3 * e, sh.layout.step * 3 * e);
        transposed(qkv, sh, s, 1, h, &mut self.kt);
        let scale = (1.0 / (dh as f64).sqrt()) as f32;
        product(l, l, dh, scale, &qkv[base + h * dh..], rs, 1, &self.kt, l, p, l);
        softmax_rows(p, l);
        if let Some(d) = dropout {
            d.rng.fill_bits(((s * sh.heads + h) * l * l) as u64, &mut self.words);
            let (threshold, kept) = (keep_threshold(d.p), keep_scale(d.p));
            for (k, &w) in keep.iter_mut().zip(&self.words) {
                *k = if w >> 8 >= threshold { kept } else { 0.0 };
            }
        }
    }
}

/// The probabilities after dropout: `p ⊙ keep` in `buf`, or `p` itself
/// without dropout (`keep` empty).
fn after_dropout<'a>(p: &'a [f32], keep: &[f32], buf: &'a mut [f32]) -> &'a [f32] {
    if keep.is_empty() {
        return p;
    }
    product_into(p, keep, buf);
    buf
}

/// `attention::forward_plain_into` for f32: the rows of `y` that the layout
/// owns. Returns what the backward reads.
pub fn forward_into(qkv: &[f32], sh: &AttnShape, dropout: Option<&AttnDropout>, y: &mut [f32]) -> Saved {
    let (l, e, dh) = (sh.layout.len, sh.width, sh.head_dim());
    assert!(
        qkv.len() / (3 * e).max(1) >= y.len() / e.max(1),
        "attention: qkv shorter than the output's rows"
    );
    let per_seq = sh.heads * l * l;
    let seqs = sh.layout.num_seqs();
    // Zeroed by the pool's threads, not by this one alone.
    let zeros = |n: usize| super::par_chunks_new::<f32>(n, 1 << 16, |_, _| {});
    let mut saved = Saved {
        p: zeros(seqs * per_seq),
        keep: zeros(if dropout.is_some() { seqs * per_seq } else { 0 }),
    };
    if per_seq == 0 {
        return saved;
    }
    let y_rows = RowsPtr::new(y, e, sh);
    let keeps: Vec<&mut [f32]> = if dropout.is_some() {
        saved.keep.chunks_mut(per_seq).collect()
    } else {
        (0..seqs).map(|_| &mut [][..]).collect()
    };
    saved.p.par_chunks_mut(per_seq).zip(keeps).enumerate().for_each_init(
        || (Scratch::new(sh, dropout), vec![0.0f32; l * e]),
        |(head, buf), (s, (p_seq, keep_seq))| {
            let (base, rs) = (sh.layout.base(s) * 3 * e, sh.layout.step * 3 * e);
            // Each head's columns of the sequence's output rows.
            y_rows.fill_sequence(sh, s, buf, |out| {
                for h in 0..sh.heads {
                    let head_range = h * l * l..(h + 1) * l * l;
                    let p = &mut p_seq[head_range.clone()];
                    let keep = keep_seq.get_mut(head_range).unwrap_or_default();
                    head.probabilities(qkv, sh, s, h, dropout, p, keep);
                    let pt = after_dropout(p, keep, &mut head.dropped);
                    product(
                        l,
                        dh,
                        l,
                        1.0,
                        pt,
                        l,
                        1,
                        &qkv[base + 2 * e + h * dh..],
                        rs,
                        &mut out[h * dh..],
                        e,
                    );
                }
            });
        },
    );
    saved
}

/// `attention::backward_plain_into` for f32: the rows of `dqkv` the layout
/// owns, from the probabilities the forward saved.
pub fn backward_into(
    g: &[f32],
    qkv: &[f32],
    sh: &AttnShape,
    dropout: Option<&AttnDropout>,
    saved: &Saved,
    dqkv: &mut [f32],
) {
    let (l, e, dh) = (sh.layout.len, sh.width, sh.head_dim());
    let rows = dqkv.len() / (3 * e).max(1);
    assert!(
        qkv.len() >= rows * 3 * e && g.len() >= rows * e,
        "attention: inputs shorter than the gradient's rows"
    );
    let per_seq = sh.heads * l * l;
    assert!(
        saved.p.len() == sh.layout.num_seqs() * per_seq
            && saved.keep.len() == if dropout.is_some() { saved.p.len() } else { 0 },
        "attention: the saved probabilities are of another shape"
    );
    let scale = (1.0 / (dh as f64).sqrt()) as f32;
    let d_rows = RowsPtr::new(dqkv, 3 * e, sh);
    // A task's buffers, made once and reused over its sequences: each
    // value is written before it is read.
    let scratch = || {
        let buf = vec![0.0f32; l * 3 * e];
        let (vt, dp) = (vec![0.0f32; dh * l], vec![0.0f32; l * l]);
        let p_used = vec![0.0f32; if dropout.is_some() { l * l } else { 0 }];
        (buf, vt, dp, p_used)
    };
    (0..sh.layout.num_seqs())
        .into_par_iter()
        .for_each_init(scratch, |(buf, vt, dp, p_used), s| {
            let (base, rs) = (sh.layout.base(s) * 3 * e, sh.layout.step * 3 * e);
            let (go, gs) = (sh.layout.base(s) * e, sh.layout.step * e);
            // Each head's dq, dk and dv columns of the sequence's rows.
            d_rows.fill_sequence(sh, s, buf, |d| {
                for h in 0..sh.heads {
                    let head_range = s * per_seq + h * l * l..s * per_seq + (h + 1) * l * l;
                    let p = &saved.p[head_range.clone()];
                    let keep = saved.keep.get(head_range).unwrap_or_default();
                    transposed(qkv, sh, s, 2, h, vt);
                    let dout = &g[go + h * dh..];
                    // dV = P̃ᵀ·dO with P̃ the probabilities after dropout (Aᵀ is A
                    // read with its strides swapped).
                    let pt = after_dropout(p, keep, p_used);
                    product(l, dh, l, 1.0, pt, 1, l, dout, gs, &mut d[2 * e + h * dh..], 3 * e);
                    // dP = (dO·Vᵀ) ⊙ keep, then the softmax adjoint row by row.
                    product(l, l, dh, 1.0, dout, gs, 1, vt, l, dp, l);
                    if dropout.is_some() {
                        product_into(dp, keep, p_used);
                        std::mem::swap(dp, p_used);
                    }
                    softmax_rows_backward(dp, p, l);
                    // dQ = s·dS·K and dK = s·dSᵀ·Q.
                    product(
                        l,
                        dh,
                        l,
                        scale,
                        dp,
                        l,
                        1,
                        &qkv[base + e + h * dh..],
                        rs,
                        &mut d[h * dh..],
                        3 * e,
                    );
                    product(
                        l,
                        dh,
                        l,
                        scale,
                        dp,
                        1,
                        l,
                        &qkv[base + h * dh..],
                        rs,
                        &mut d[e + h * dh..],
                        3 * e,
                    );
                }
            });
        });
}

#[cfg(test)]
mod tests {
    use super::super::attention;
    use super::*;
    use crate::rng::RngStream;
    use crate::tensor::SeqLayout;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let rng = RngStream::new(seed, 7);
        let mut v = vec![0.0f32; n];
        rng.fill_normal(0, &mut v);
        v
    }

    /// The transpose against its definition, at sizes with and without
    /// whole 8 × 8 tiles and edges on either side, rows wider than read.
    #[test]
    fn transpose_is_the_definition() {
        for (l, dh) in [
            (1usize, 1usize),
            (4, 32),
            (8, 8),
            (64, 32),
            (13, 19),
            (16, 96),
            (9, 7),
            (12, 24),
            (7, 16),
        ] {
            let rs = dh + 5;
            let src = data((l - 1) * rs + dh, 3);
            let mut out = vec![f32::NAN; dh * l];
            transpose(&src, rs, l, dh, &mut out);
            for j in 0..l {
                for d in 0..dh {
                    assert_eq!(
                        out[d * l + j].to_bits(),
                        src[j * rs + d].to_bits(),
                        "{l} × {dh} at ({j}, {d})"
                    );
                }
            }
        }
    }

    /// The product against a plain triple loop of fused multiply-adds, at
    /// widths that take every block size (32 with AVX-512, 16, 8, 4 and
    /// single columns) and row counts off every block height.
    #[test]
    fn product_is_the_plain_sum() {
        for (m, n, k) in [
            (1usize, 1usize, 1usize),
            (5, 16, 3),
            (9, 27, 33),
            (4, 8, 7),
            (13, 41, 2),
            (17, 64, 33),
            (11, 77, 6),
        ] {
            for (rsa, csa) in [(k, 1), (1, m)] {
                let a = data(m * k, 1);
                let ldb = n + 2;
                let b = data(k * ldb, 2);
                let ldc = n + 3;
                let mut c = vec![9.0f32; (m - 1) * ldc + n];
                product(m, n, k, 0.5, &a, rsa, csa, &b, ldb, &mut c, ldc);
                for i in 0..m {
                    for j in 0..n {
                        let mut sum = 0.0f32;
                        for p in 0..k {
                            sum = a[i * rsa + p * csa].mul_add(b[p * ldb + j], sum);
                        }
                        assert_eq!(c[i * ldc + j], 0.5 * sum, "{m}×{n}×{k} ({i}, {j})");
                    }
                }
            }
        }
    }

    /// Both stream layouts, interleaved as in the MATB, with and without
    /// dropout: forward and backward within f32 rounding of the reference.
    #[test]
    fn matches_the_gemm_reference() {
        let (batch, t, per, heads, e) = (2usize, 5usize, 7usize, 3usize, 24usize);
        let rows = batch * t * per;
        let qkv = data(2 * rows * 3 * e, 3);
        let g = data(2 * rows * e, 4);
        for (which, layout) in [SeqLayout::spatial(batch, t, per), SeqLayout::depth(batch, t, per)]
            .into_iter()
            .enumerate()
        {
            for p in [0.0, 0.25] {
                let sh = AttnShape {
                    layout: layout.interleaved(2, which),
                    heads,
                    width: e,
                };
                let drop = AttnDropout {
                    p,
                    rng: RngStream::new(11, 3),
                };
                let drop = (p > 0.0).then_some(&drop);
                let (mut y, mut want) = (vec![7.0f32; 2 * rows * e], vec![7.0f32; 2 * rows * e]);
                let saved = forward_into(&qkv, &sh, drop, &mut y);
                attention::forward_plain_into(&qkv, &sh, drop, &mut want);
                close(&y, &want, "forward");
                let (mut d, mut want) = (vec![5.0f32; qkv.len()], vec![5.0f32; qkv.len()]);
                backward_into(&g, &qkv, &sh, drop, &saved, &mut d);
                attention::backward_plain_into(&g, &qkv, &sh, drop, &mut want);
                close(&d, &want, "backward");
            }
        }
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what} at {i}: {a} vs {b}");
        }
    }
}
