//! Multi-head scaled dot-product attention over sequences of rows of a fused
//! QKV matrix (`rows × 3E`, columns `[q | k | v]`, head `h` at columns
//! `h·dh .. (h+1)·dh` of each part: PyTorch's `in_proj` layout). The output is
//! `rows × E`, heads concatenated, ready for the output projection.
//!
//! Each sequence is read in place through strided matrix views; its `L × L`
//! scores live only in a per-task buffer. Backward recomputes the
//! probabilities (and the dropout mask, from the same Philox stream) instead
//! of storing them.

use rayon::prelude::*;

use super::gemm::{gemm, MatRef};
use super::softmax::softmax_row_backward;
use super::CpuFloat;
use crate::rng::RngStream;
use crate::tensor::SeqLayout;

/// Dropout on the attention probabilities: drop with probability `p`,
/// scale survivors by `1/(1 − p)`. The draw for `(seq, head, i, j)` is value
/// `((seq·heads + head)·L + i)·L + j` of `rng`.
#[derive(Clone, Copy, Debug)]
pub struct AttnDropout {
    pub p: f64,
    pub rng: RngStream,
}

#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub layout: SeqLayout,
    pub heads: usize,
    /// `E`, the model width of q, k and v.
    pub width: usize,
}

impl AttnShape {
    pub(super) fn head_dim(&self) -> usize {
        self.width / self.heads
    }
}

/// Scores → probabilities (after dropout) for one (sequence, head), into `p`
/// (`L × L`); returns the dropout multipliers when dropout is on.
fn probabilities<T: CpuFloat>(
    qkv: &[T],
    sh: &AttnShape,
    s: usize,
    h: usize,
    dropout: Option<&AttnDropout>,
    p: &mut [T],
    keep: &mut [T],
) {
    let (l, e, dh) = (sh.layout.len, sh.width, sh.head_dim());
    let base = sh.layout.base(s) * 3 * e;
    let rs = sh.layout.step * 3 * e;
    let q = MatRef::strided(qkv, base + h * dh, l, dh, rs);
    let k = MatRef::strided(qkv, base + e + h * dh, l, dh, rs);
    let scale = T::from_f64(1.0 / (dh as f64).sqrt());
    gemm(scale, q, k.t(), T::zero(), p, l, 1);
    T::softmax_rows(p, l);
    if let Some(d) = dropout {
        let start = ((s * sh.heads + h) * l * l) as u64;
        let mut u = vec![0.0f32; l * l];
        d.rng.fill_uniform(start, &mut u);
        let kept = T::from_f64(1.0 / (1.0 - d.p));
        for (k, &u) in keep.iter_mut().zip(&u) {
            *k = if (u as f64) >= d.p { kept } else { T::zero() };
        }
    }
}

/// The attention of each sequence into the rows of `y` that the layout owns
/// (others untouched): the reference, through general GEMM calls.
pub fn forward_plain_into<T: CpuFloat>(qkv: &[T], sh: &AttnShape, dropout: Option<&AttnDropout>, y: &mut [T]) {
    let (l, e, dh) = (sh.layout.len, sh.width, sh.head_dim());
    let y_rows = RowsPtr::new(y, e, sh);
    (0..sh.layout.num_seqs()).into_par_iter().for_each(|s| {
        let mut out = vec![T::zero(); l * e];
        let mut p = vec![T::zero(); l * l];
        let mut keep = vec![T::zero(); if dropout.is_some() { l * l } else { 0 }];
        let base = sh.layout.base(s) * 3 * e;
        let rs = sh.layout.step * 3 * e;
        for h in 0..sh.heads {
            probabilities(qkv, sh, s, h, dropout, &mut p, &mut keep);
            if dropout.is_some() {
                p.iter_mut().zip(&keep).for_each(|(p, &k)| *p *= k);
            }
            let v = MatRef::strided(qkv, base + 2 * e + h * dh, l, dh, rs);
            gemm(T::one(), MatRef::rm(&p, l, l), v, T::zero(), &mut out[h * dh..], e, 1);
        }
        y_rows.put_sequence(sh, s, &out);
    });
}

/// The gradient with respect to the fused QKV input (`rows × 3E`) into the
/// rows of `dqkv` that the layout owns (others untouched): the reference.
pub fn backward_plain_into<T: CpuFloat>(
    g: &[T],
    qkv: &[T],
    sh: &AttnShape,
    dropout: Option<&AttnDropout>,
    dqkv: &mut [T],
) {
    let (l, e, dh) = (sh.layout.len, sh.width, sh.head_dim());
    let scale = T::from_f64(1.0 / (dh as f64).sqrt());
    let d_rows = RowsPtr::new(dqkv, 3 * e, sh);
    (0..sh.layout.num_seqs()).into_par_iter().for_each(|s| {
        let mut d = vec![T::zero(); l * 3 * e];
        let mut p = vec![T::zero(); l * l];
        let mut keep = vec![T::zero(); if dropout.is_some() { l * l } else { 0 }];
        let mut dp = vec![T::zero(); l * l];
        let base = sh.layout.base(s) * 3 * e;
        let rs = sh.layout.step * 3 * e;
        let go = sh.layout.base(s) * e;
        for h in 0..sh.heads {
            probabilities(qkv, sh, s, h, dropout, &mut p, &mut keep);
            let q = MatRef::strided(qkv, base + h * dh, l, dh, rs);
            let k = MatRef::strided(qkv, base + e + h * dh, l, dh, rs);
            let v = MatRef::strided(qkv, base + 2 * e + h * dh, l, dh, rs);
            let dout = MatRef::strided(g, go + h * dh, l, dh, sh.layout.step * e);
            // dV = P̃ᵀ·dO with P̃ the probabilities after dropout.
            let p_used: Vec<T> = if dropout.is_some() {
                p.iter().zip(&keep).map(|(&p, &k)| p * k).collect()
            } else {
                p.clone()
            };
            gemm(
                T::one(),
                MatRef::rm(&p_used, l, l).t(),
                dout,
                T::zero(),
                &mut d[2 * e + h * dh..],
                3 * e,
                1,
            );
            // dP = (dO·Vᵀ) ⊙ keep, then the softmax adjoint row by row.
            gemm(T::one(), dout, v.t(), T::zero(), &mut dp, l, 1);
            if dropout.is_some() {
                dp.iter_mut().zip(&keep).for_each(|(d, &k)| *d *= k);
            }
            dp.chunks_mut(l)
                .zip(p.chunks(l))
                .for_each(|(d, p)| softmax_row_backward(d, p));
            gemm(scale, MatRef::rm(&dp, l, l), k, T::zero(), &mut d[h * dh..], 3 * e, 1);
            gemm(
                scale,
                MatRef::rm(&dp, l, l).t(),
                q,
                T::zero(),
                &mut d[e + h * dh..],
                3 * e,
                1,
            );
        }
        d_rows.put_sequence(sh, s, &d);
    });
}

/// A matrix whose rows the sequence tasks write in parallel, each task the
/// rows of its own sequence (which the layout's validation makes disjoint).
pub struct RowsPtr<T> {
    ptr: *mut T,
    width: usize,
}

// SAFETY: only used to hand the disjoint rows of distinct sequences to
// tasks; every write is checked to lie inside the matrix.
unsafe impl<T: Send> Send for RowsPtr<T> {}
unsafe impl<T: Send> Sync for RowsPtr<T> {}

impl<T: Copy> RowsPtr<T> {
    /// `m`, rows of `width` values; every row of every sequence of `sh`
    /// must lie inside it (checked here, once).
    pub fn new(m: &mut [T], width: usize, sh: &AttnShape) -> Self {
        let (rows, l) = (m.len() / width.max(1), sh.layout.len);
        assert!(
            (0..sh.layout.num_seqs()).all(|s| l == 0 || sh.layout.row(s, l - 1) < rows),
            "attention: a sequence reaches past its matrix"
        );
        RowsPtr {
            ptr: m.as_mut_ptr(),
            width,
        }
    }

    /// Runs `fill` on sequence `s`'s rows (`L × width`, every value of
    /// which it must write) and leaves them in the matrix: on the rows
    /// themselves when they are consecutive (`step == 1`, the spatial
    /// streams), else on the first `L × width` values of `buf`, copied to
    /// their places afterwards.
    pub fn fill_sequence(&self, sh: &AttnShape, s: usize, buf: &mut [T], fill: impl FnOnce(&mut [T])) {
        let l = sh.layout.len;
        if sh.layout.step == 1 && l > 0 {
            // SAFETY: `new` checked that row(s, l − 1) = row(s, 0) + l − 1
            // lies inside the matrix, and the layout covers each row once,
            // so these rows are this sequence's task's alone (as in
            // `put_sequence`).
            let rows = unsafe {
                std::slice::from_raw_parts_mut(self.ptr.add(sh.layout.row(s, 0) * self.width), l * self.width)
            };
            fill(rows);
        } else {
            let block = &mut buf[..l * self.width];
            fill(block);
            self.put_sequence(sh, s, block);
        }
    }

    /// The `L` rows of sequence `s` (`block`, `L × width`) to their places.
    pub fn put_sequence(&self, sh: &AttnShape, s: usize, block: &[T]) {
        for (i, row) in block.chunks_exact(self.width).take(sh.layout.len).enumerate() {
            // SAFETY: `new` checked that each row of each sequence lies
            // inside the matrix, and the layout covers each row once, so
            // this sequence's rows are written by this task alone.
            unsafe {
                std::ptr::copy_nonoverlapping(row.as_ptr(), self.ptr.add(sh.layout.row(s, i) * self.width), self.width)
            };
        }
    }
}
