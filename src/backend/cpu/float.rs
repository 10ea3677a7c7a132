use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use crate::tensor::Element;

/// The arithmetic the CPU kernels need, for f32 and f64.
pub trait CpuFloat:
    Element
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
{
    fn zero() -> Self {
        Self::from_f64(0.0)
    }
    fn one() -> Self {
        Self::from_f64(1.0)
    }
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn erf(self) -> Self;
    fn max(self, other: Self) -> Self;

    /// The softmax of each row of `cols` values of `p`, in place, on the
    /// attention's hot path: f32 vectorised (`fused::softmax_rows`), f64
    /// the plain `softmax::softmax_row`.
    fn softmax_rows(p: &mut [Self], cols: usize);

    /// The slice as f32 when `Self` is f32 (the type of the CPU's fast
    /// paths), else `None`.
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
    /// One value as an f32 when `Self` is f32.
    fn as_f32_value(self) -> Option<f32> {
        Self::as_f32(&[self]).map(|v| v[0])
    }

    /// `C ← α·A·B + β·C` on raw strided operands (see `gemm::gemm`).
    ///
    /// # Safety
    /// Every index `i·rs + j·cs` of each operand must lie inside its allocation.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

/// Both float types, with their libm erf and matrixmultiply GEMM.
macro_rules! impl_cpu_float {
    ($t:ty, $erf:path, $gemm:path, $softmax_rows:path, $as_f32:expr, $as_f32_mut:expr) => {
        impl CpuFloat for $t {
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn erf(self) -> Self {
                $erf(self)
            }
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            fn softmax_rows(p: &mut [Self], cols: usize) {
                $softmax_rows(p, cols)
            }
            fn as_f32(s: &[Self]) -> Option<&[f32]> {
                $as_f32(s)
            }
            fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
                $as_f32_mut(s)
            }
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
            }
        }
    };
}

impl_cpu_float!(
    f32,
    libm::erff,
    matrixmultiply::sgemm,
    super::fused::softmax_rows,
    Some,
    Some
);
impl_cpu_float!(
    f64,
    libm::erf,
    matrixmultiply::dgemm,
    plain_softmax_rows,
    |_| None,
    |_| None
);

fn plain_softmax_rows(p: &mut [f64], cols: usize) {
    p.chunks_mut(cols).for_each(super::softmax::softmax_row);
}
