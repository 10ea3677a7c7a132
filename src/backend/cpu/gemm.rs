//! Matrix products on strided views. A transposed or strided operand (the
//! depth stream's rows, `Wᵀ` of a linear layer) is just another pair of
//! strides, so nothing is copied before a product.

use rayon::prelude::*;

use super::CpuFloat;

/// A read-only `rows × cols` matrix inside a slice: element `(i, j)` is at
/// `i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A dense row-major matrix.
    pub fn rm(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// A matrix whose rows sit `rs` elements apart, starting at `offset`.
    pub fn strided(data: &'a [T], offset: usize, rows: usize, cols: usize, rs: usize) -> Self {
        MatRef {
            data: &data[offset.min(data.len())..],
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn rows_from(self, r0: usize, rows: usize) -> Self {
        MatRef {
            data: &self.data[(r0 * self.rs).min(self.data.len())..],
            rows,
            ..self
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `C ← α·A·B + β·C` with `C` strided like a `MatRef`. Callers build the views
/// from validated shapes; a view that reaches past its slice is a bug in the
/// engine, so it is checked here and aborts rather than reading out of bounds.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: CpuFloat>(alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: &mut [T], c_rs: usize, c_cs: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions differ");
    assert!(a.fits() && b.fits(), "gemm: operand view outside its slice");
    assert!(
        m == 0 || n == 0 || (m - 1) * c_rs + (n - 1) * c_cs < c.len(),
        "gemm: output view outside its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: all three views were checked to lie inside their slices, and
    // `c` is borrowed mutably, so it aliases neither input.
    unsafe {
        T::gemm_raw(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr(),
            c_rs as isize,
            c_cs as isize,
        )
    }
}

/// `C ← α·A·B + β·C` into a dense row-major `C` (`m × n`), split into row
/// blocks across the rayon pool when the product is large enough to pay.
pub fn matmul<T: CpuFloat>(alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: &mut [T]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(c.len(), m * n, "matmul: output size");
    const PARALLEL_WORK: usize = 1 << 18;
    let threads = rayon::current_num_threads();
    if threads == 1 || m < 16 || m * k * n < PARALLEL_WORK {
        gemm(alpha, a, b, beta, c, n, 1);
        return;
    }
    let block = m.div_ceil(threads * 2).max(8);
    c.par_chunks_mut(block * n).enumerate().for_each(|(i, c_blk)| {
        let r0 = i * block;
        let rows = c_blk.len() / n;
        gemm(alpha, a.rows_from(r0, rows), b, beta, c_blk, n, 1);
    });
}
