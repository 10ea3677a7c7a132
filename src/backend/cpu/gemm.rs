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

    fn cols_from(self, c0: usize, cols: usize) -> Self {
        MatRef {
            data: &self.data[(c0 * self.cs).min(self.data.len())..],
            cols,
            ..self
        }
    }

    /// The same view over other data of the same layout (the f32 slice
    /// behind a generic one).
    fn over<'b, U>(&self, data: &'b [U]) -> MatRef<'b, U> {
        MatRef {
            data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }

    pub(super) fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `C ← α·A·B + β·C` with `C` strided like a `MatRef`. Callers build the views
/// from validated shapes; a view that reaches past its slice is a bug in the
/// engine, so it is checked here and aborts rather than reading out of bounds.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: CpuFloat>(alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: &mut [T], c_rs: usize, c_cs: usize) {
    // SAFETY: `c` is borrowed mutably for the call, so it aliases neither
    // input and no other task writes it; its length bounds the view.
    unsafe { gemm_ptr(alpha, a, b, beta, c.as_mut_ptr(), c.len(), c_rs, c_cs) }
}

/// `gemm` into `len` elements at `c`.
///
/// # Safety
/// `c .. c + len` must be valid for writes and not read or written by anyone
/// else at the elements the view `(c_rs, c_cs)` of `A·B`'s shape covers.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_ptr<T: CpuFloat>(
    alpha: T,
    a: MatRef<T>,
    b: MatRef<T>,
    beta: T,
    c: *mut T,
    len: usize,
    c_rs: usize,
    c_cs: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions differ");
    assert!(a.fits() && b.fits(), "gemm: operand view outside its slice");
    assert!(
        m == 0 || n == 0 || (m - 1) * c_rs + (n - 1) * c_cs < len,
        "gemm: output view outside its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
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
        c,
        c_rs as isize,
        c_cs as isize,
    )
}

/// `C ← α·A·B + β·C` into a dense row-major `C` (`m × n`), split into row
/// blocks across the rayon pool when the product is large enough to pay.
pub fn matmul<T: CpuFloat>(alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: &mut [T]) {
    assert_eq!(c.len(), a.rows * b.cols, "matmul: output size");
    // SAFETY: `c` is borrowed mutably and holds the `m × n` matrix.
    if unsafe { packed(alpha, a, b, beta, None, c.as_mut_ptr()) } {
        return;
    }
    matmul_matrixmultiply(alpha, a, b, beta, c)
}

/// `matmul` through matrixmultiply alone, never the packed f32 product:
/// the baseline `bench gemm` and the tests set our product beside.
pub fn matmul_matrixmultiply<T: CpuFloat>(alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, c: &mut [T]) {
    let n = b.cols;
    assert_eq!(c.len(), a.rows * n, "matmul: output size");
    let c_ptr = SyncPtr(c.as_mut_ptr());
    let len = c.len();
    for_blocks(a.rows, a.cols, n, |r0, rows, c0, cols| {
        // SAFETY: `c` is borrowed mutably for the whole split and the blocks
        // are disjoint, so each task writes only its own elements, all
        // inside `c` (the view's bounds are checked in `gemm_ptr`).
        unsafe { block_product(alpha, a, b, beta, c_ptr, len, n, (r0, rows, c0, cols)) }
    });
}

/// The block `(r0, rows, c0, cols)` of `C ← α·A·B + β·C`, C dense with `n`
/// columns and `len` elements at `c`.
///
/// # Safety
/// As `gemm_ptr`, for the block's elements of C.
#[allow(clippy::too_many_arguments)]
unsafe fn block_product<T: CpuFloat>(
    alpha: T,
    a: MatRef<T>,
    b: MatRef<T>,
    beta: T,
    c: SyncPtr<T>,
    len: usize,
    n: usize,
    (r0, rows, c0, cols): (usize, usize, usize, usize),
) {
    let at = r0 * n + c0;
    gemm_ptr(
        alpha,
        a.rows_from(r0, rows),
        b.cols_from(c0, cols),
        beta,
        c.get().add(at),
        len - at,
        n,
        1,
    )
}

/// What a new product's `C` holds before `A·B` is added to it.
#[derive(Clone, Copy)]
pub enum Init<'a, T> {
    /// Nothing: `C = α·A·B`.
    Zero,
    /// Every row of `C` starts as this row (a linear layer's bias).
    Row(&'a [T]),
}

/// A new dense row-major `m × n` matrix `init + α·A·B`. Each task of the
/// parallel split starts its own block of `C` (the bias copied in, or
/// nothing: with β = 0 the GEMM writes `C` without reading it), so the
/// output is never zeroed or filled by one thread before the product.
pub fn matmul_new<T: CpuFloat>(alpha: T, a: MatRef<T>, b: MatRef<T>, init: Init<T>) -> Vec<T> {
    let (m, n) = (a.rows, b.cols);
    if let Init::Row(row) = init {
        assert_eq!(row.len(), n, "matmul_new: the initial row must have n values");
    }
    let mut c: Vec<T> = Vec::with_capacity(m * n);
    let row = match init {
        Init::Zero => None,
        Init::Row(row) => Some(row),
    };
    // SAFETY: the capacity holds `m·n` elements; the packed product
    // writes each of them without reading it first (β = 0, or the row).
    if unsafe { packed(alpha, a, b, T::zero(), row, c.as_mut_ptr()) } {
        // SAFETY: every element was written by the product.
        unsafe { c.set_len(m * n) };
        return c;
    }
    let c_ptr = SyncPtr(c.as_mut_ptr());
    let len = m * n;
    for_blocks(m, a.cols, n, |r0, rows, c0, cols| {
        // SAFETY: the capacity holds `m·n` elements and the blocks are
        // disjoint. A block is either written whole by its bias rows before
        // the GEMM reads it (β = 1), or written by the GEMM without being
        // read (β = 0, matrixmultiply's documented contract).
        unsafe {
            let beta = match init {
                Init::Zero => T::zero(),
                Init::Row(row) => {
                    for i in 0..rows {
                        let at = (r0 + i) * n + c0;
                        std::ptr::copy_nonoverlapping(row.as_ptr().add(c0), c_ptr.get().add(at), cols);
                    }
                    T::one()
                }
            };
            block_product(alpha, a, b, beta, c_ptr, len, n, (r0, rows, c0, cols))
        }
    });
    // SAFETY: the blocks cover every element of the `m × n` matrix and each
    // has been written above (a product with m or n zero has no elements).
    unsafe { c.set_len(m * n) };
    c
}

/// Products below this many multiply-adds stay with matrixmultiply.
const PACKED_WORK: usize = 1 << 18;

/// Whether an f32 product of these operands goes to `sgemm`: big enough,
/// and A row-major. A k-major A (the weight gradients `dYᵀ·X`, k the token
/// count) stays with matrixmultiply, which measured faster there
/// (docs/DESIGN.md, "Our own f32 product").
fn packed_takes<T>(a: &MatRef<T>, b: &MatRef<T>) -> bool {
    a.cs == 1 && a.rows * a.cols * b.cols >= PACKED_WORK
}

/// Which engine `matmul` uses for f32 operands like these on this CPU, for
/// `bench gemm` to name.
pub fn f32_engine(a: &MatRef<f32>, b: &MatRef<f32>) -> &'static str {
    if packed_takes(a, b) && super::sgemm::has_kernel() {
        "ours"
    } else {
        "matrixmultiply"
    }
}

/// The f32 product of our own (`sgemm`) into the dense `m × n` matrix at
/// `c`, when `T` is f32, the product is big enough and the CPU has the
/// kernel; false (nothing done) otherwise.
///
/// # Safety
/// As `sgemm::product`.
unsafe fn packed<T: CpuFloat>(alpha: T, a: MatRef<T>, b: MatRef<T>, beta: T, row: Option<&[T]>, c: *mut T) -> bool {
    assert!(a.fits() && b.fits(), "gemm: operand view outside its slice");
    if !packed_takes(&a, &b) {
        return false;
    }
    let (Some(ad), Some(bd)) = (T::as_f32(a.data), T::as_f32(b.data)) else {
        return false;
    };
    let row = match row.map(T::as_f32) {
        None => None,
        Some(Some(r)) => Some(r),
        Some(None) => return false,
    };
    let (alpha, beta) = (alpha.to_f64() as f32, beta.to_f64() as f32);
    unsafe { super::sgemm::product(alpha, a.over(ad), b.over(bd), beta, row, c.cast::<f32>()) }
}

/// Runs `f(r0, rows, c0, cols)` over blocks of an `m × n` output: one block
/// when the product is small, else one block per thread. Every block packs
/// the shared operand again, so fewer blocks pack less; the longer side of
/// `C` is the one split.
fn for_blocks(m: usize, k: usize, n: usize, f: impl Fn(usize, usize, usize, usize) + Sync) {
    const PARALLEL_WORK: usize = 1 << 18;
    let threads = rayon::current_num_threads();
    if threads == 1 || m < 16 || m * k * n < PARALLEL_WORK {
        f(0, m, 0, n);
    } else if n > m {
        let block = n.div_ceil(threads).max(16);
        let starts: Vec<usize> = (0..n).step_by(block).collect();
        starts.par_iter().for_each(|&c0| f(0, m, c0, block.min(n - c0)));
    } else {
        let block = m.div_ceil(threads).max(8);
        let starts: Vec<usize> = (0..m).step_by(block).collect();
        starts.par_iter().for_each(|&r0| f(r0, block.min(m - r0), 0, n));
    }
}

/// A raw pointer the column-block tasks share (each writes its own columns).
#[derive(Clone, Copy)]
struct SyncPtr<T>(*mut T);
// SAFETY: only used to hand disjoint column blocks of one slice to tasks.
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new product, zero-started or bias-started, in every split: the
    /// same bits as `matmul` into a zeroed or bias-filled C.
    #[test]
    fn new_products_match_matmul_into_an_initialised_c() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (m, k, n) in [
            (100usize, 300usize, 20usize),
            (20, 300, 100),
            (37, 513, 61),
            (5, 4, 3),
            (9, 0, 4),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25 - 1.0).collect();
            let (am, bm) = (MatRef::rm(&a, m, k), MatRef::rm(&b, k, n));
            let zero = pool.install(|| matmul_new(1.5, am, bm, Init::Zero));
            let mut want = vec![0.0f32; m * n];
            pool.install(|| matmul(1.5, am, bm, 0.0, &mut want));
            assert_eq!(zero, want, "{m}×{k}×{n} zero-started");
            let biased = pool.install(|| matmul_new(1.5, am, bm, Init::Row(&bias)));
            let mut want = bias.repeat(m);
            pool.install(|| matmul(1.5, am, bm, 1.0, &mut want));
            assert_eq!(biased, want, "{m}×{k}×{n} bias-started");
        }
    }

    /// Both parallel splits (rows when C is tall, columns when it is wide)
    /// and the transposed views against a plain triple loop.
    #[test]
    fn parallel_splits_match_the_naive_product() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (m, k, n) in [(100usize, 300usize, 20usize), (20, 300, 100), (37, 513, 61)] {
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 13) as f64 - 6.0) / 5.0).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 11) as f64 - 5.0) / 3.0).collect();
            for trans in [false, true] {
                // With `trans`, B is stored n × k and used as its transpose.
                let bt: Vec<f64> = if trans {
                    (0..n * k).map(|i| b[(i % k) * n + i / k]).collect()
                } else {
                    b.clone()
                };
                let bm = if trans {
                    MatRef::rm(&bt, n, k).t()
                } else {
                    MatRef::rm(&bt, k, n)
                };
                let mut c = vec![1.0f64; m * n];
                pool.install(|| matmul(2.0, MatRef::rm(&a, m, k), bm, 0.5, &mut c));
                for i in 0..m {
                    for j in 0..n {
                        let want = 2.0 * (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f64>() + 0.5;
                        assert!((c[i * n + j] - want).abs() < 1e-9, "{m}×{k}×{n} {trans} ({i}, {j})");
                    }
                }
            }
        }
    }
}
