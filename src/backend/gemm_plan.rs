//! How a row-major GEMM of ours becomes the column-major call cuBLAS and
//! cuBLASLt take, written once for both CUDA paths, and a column-major
//! reference GEMM that takes exactly that call (dims, transposes, leading
//! dimensions, which buffer goes first), so the mapping is tested on every
//! machine against the row-major CPU GEMM.
//!
//! Row-major `C (m × n) = op(A)·op(B)` is, read column-major, `Cᵀ (n × m) =
//! op(B)ᵀ·op(A)ᵀ`: the first operand is our B, the second our A, each
//! keeping its own transpose flag, and every leading dimension is the row
//! length of the row-major matrix.

use crate::device::Gemm;

/// One column-major GEMM call: `C(m × n) = op(X)·op(Y)`, `X` the first
/// operand (our B), `Y` the second (our A); `x_rows × x_cols` with leading
/// dimension `ldx` as stored, likewise `Y`; `C` has leading dimension `ldc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColMajor {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_x: bool,
    pub trans_y: bool,
    pub x_rows: usize,
    pub x_cols: usize,
    pub ldx: usize,
    pub y_rows: usize,
    pub y_cols: usize,
    pub ldy: usize,
    pub ldc: usize,
}

impl ColMajor {
    pub fn of(g: &Gemm) -> Self {
        let (x_rows, x_cols) = if g.trans_b { (g.k, g.n) } else { (g.n, g.k) };
        let (y_rows, y_cols) = if g.trans_a { (g.m, g.k) } else { (g.k, g.m) };
        ColMajor {
            m: g.n,
            n: g.m,
            k: g.k,
            trans_x: g.trans_b,
            trans_y: g.trans_a,
            x_rows,
            x_cols,
            ldx: x_rows,
            y_rows,
            y_cols,
            ldy: y_rows,
            ldc: g.n,
        }
    }

    /// The call done literally, as BLAS defines it, in f64 sums:
    /// `C ← α·op(X)·op(Y) + β·C`, then `bias[i]` added to every element of
    /// row `i` of C (cuBLASLt's bias epilogue: one value per row of the
    /// column-major D).
    #[allow(clippy::too_many_arguments)]
    pub fn reference(&self, alpha: f32, x: &[f32], y: &[f32], beta: f32, c: &mut [f32], bias: Option<&[f32]>) {
        let xv = |i: usize, l: usize| {
            if self.trans_x {
                x[l + i * self.ldx]
            } else {
                x[i + l * self.ldx]
            }
        };
        let yv = |l: usize, j: usize| {
            if self.trans_y {
                y[j + l * self.ldy]
            } else {
                y[l + j * self.ldy]
            }
        };
        for j in 0..self.n {
            for i in 0..self.m {
                let s: f64 = (0..self.k).map(|l| xv(i, l) as f64 * yv(l, j) as f64).sum();
                let at = i + j * self.ldc;
                let mut v = alpha as f64 * s + if beta != 0.0 { beta as f64 * c[at] as f64 } else { 0.0 };
                if let Some(b) = bias {
                    v += b[i] as f64;
                }
                c[at] = v as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gemm::{gemm, MatRef};
    use crate::rng::RngStream;

    fn values(n: usize, at: u64) -> Vec<f32> {
        let mut v = vec![0.0f32; n];
        RngStream::new(5, 0x6E).fill_uniform(at, &mut v);
        v.iter_mut().for_each(|x| *x = 2.0 * *x - 1.0);
        v
    }

    /// The column-major call, run by the reference, gives what the
    /// row-major CPU GEMM gives, for every transpose and odd shapes.
    #[test]
    fn the_column_major_call_computes_the_row_major_product() {
        for (m, n, k) in [(1, 1, 1), (3, 5, 7), (17, 2, 9), (4, 13, 1), (6, 6, 6)] {
            for trans_a in [false, true] {
                for trans_b in [false, true] {
                    let g = Gemm {
                        alpha: 0.75,
                        beta: 0.5,
                        ..Gemm::new(m, n, k, trans_a, trans_b)
                    };
                    let (a, b) = (values(m * k, 0), values(k * n, 1000));
                    let c0 = values(m * n, 2000);
                    let bias = values(n, 3000);
                    let am = if trans_a {
                        MatRef::rm(&a, k, m).t()
                    } else {
                        MatRef::rm(&a, m, k)
                    };
                    let bm = if trans_b {
                        MatRef::rm(&b, n, k).t()
                    } else {
                        MatRef::rm(&b, k, n)
                    };
                    let mut want = c0.clone();
                    gemm(g.alpha, am, bm, g.beta, &mut want, n, 1);
                    for row in want.chunks_mut(n) {
                        row.iter_mut().zip(&bias).for_each(|(c, b)| *c += b);
                    }
                    let cm = ColMajor::of(&g);
                    assert_eq!(cm.x_rows * cm.x_cols, k * n);
                    assert_eq!(cm.y_rows * cm.y_cols, m * k);
                    let mut got = c0.clone();
                    cm.reference(g.alpha, &b, &a, g.beta, &mut got, Some(&bias));
                    for (w, v) in want.iter().zip(&got) {
                        assert!((w - v).abs() < 1e-5, "{m}×{n}×{k} {trans_a} {trans_b}: {w} vs {v}");
                    }
                }
            }
        }
    }
}
