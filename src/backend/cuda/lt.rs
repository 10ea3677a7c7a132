//! GEMMs through cuBLASLt: f32 with compute type `32F` (no TF32, for
//! verification) or bf16 operands with f32 accumulation (mixed precision)
//! and an f32 or bf16 output, with the f32 bias epilogue fused. Row-major `C = op(A)·op(B)` is
//! column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`, so B goes first and keeps its own
//! transpose flag.
//!
//! Written against cuBLASLt's C API (through cudarc's raw bindings) because
//! cudarc's safe wrapper runs f32 with TF32 and keeps C in the operand type.

use std::ffi::c_void;
use std::mem::size_of;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublaslt::{result as lt, sys};

use crate::backend::device::Gemm;
use crate::error::{Error, Result};

fn lt_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::invalid("cuBLASLt", format!("{what}: {e:?}"))
}

/// One cuBLASLt handle and its workspace.
pub struct Lt {
    handle: sys::cublasLtHandle_t,
}

// SAFETY: a cuBLASLt handle may be used from any thread; the device
// serialises calls through its memory lock.
unsafe impl Send for Lt {}
unsafe impl Sync for Lt {}

impl Lt {
    /// Loads cuBLASLt (an error, not a panic, when the library is missing).
    pub fn new() -> Result<Self> {
        // SAFETY: only checks whether the shared library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::invalid(
                "cuBLASLt",
                "libcublasLt could not be loaded; install the CUDA toolkit's cuBLAS or set LD_LIBRARY_PATH",
            ));
        }
        let handle = lt::create_handle().map_err(|e| lt_err("create handle", e))?;
        Ok(Lt { handle })
    }

    /// Runs `g` on raw device pointers. `a` and `b` hold bf16 values when
    /// `g.bf16`, else f32; `c` is bf16 when `g.bf16_out`, else f32; `bias`
    /// is f32.
    ///
    /// # Safety
    /// Every pointer must address enough device memory for the shapes in `g`
    /// (`bias`: `g.n` values), and `workspace` `workspace_bytes` bytes, all
    /// on the context of `stream`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul(
        &self,
        g: &Gemm,
        a: u64,
        b: u64,
        c: u64,
        bias: Option<u64>,
        workspace: u64,
        workspace_bytes: usize,
        stream: sys::cudaStream_t,
    ) -> Result<()> {
        let op_t = sys::cudaDataType_t::CUDA_R_32F;
        let operand_t = if g.bf16 {
            sys::cudaDataType_t::CUDA_R_16BF
        } else {
            sys::cudaDataType_t::CUDA_R_32F
        };
        let (m, n, k) = (g.m as u64, g.n as u64, g.k as u64);
        // Column-major views: first operand = B (n × k after op), second = A (k × m after op).
        let (b_rows, b_cols) = if g.trans_b { (k, n) } else { (n, k) };
        let (a_rows, a_cols) = if g.trans_a { (m, k) } else { (k, m) };
        let first = Layout::new(operand_t, b_rows, b_cols)?;
        let second = Layout::new(operand_t, a_rows, a_cols)?;
        let out_t = if g.bf16_out {
            sys::cudaDataType_t::CUDA_R_16BF
        } else {
            op_t
        };
        let out = Layout::new(out_t, n, m)?;
        let desc = Desc::new()?;
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T as i32
            } else {
                cublasOperation_t::CUBLAS_OP_N as i32
            }
        };
        desc.set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            &op(g.trans_b),
        )?;
        desc.set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
            &op(g.trans_a),
        )?;
        if let Some(bias) = bias {
            let epi = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
            desc.set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi)?;
            desc.set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bias,
            )?;
            desc.set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                &sys::cudaDataType_t::CUDA_R_32F,
            )?;
        }
        let pref = lt::create_matmul_pref().map_err(|e| lt_err("preference", e))?;
        let pref = Pref(pref);
        lt::set_matmul_pref_attribute(
            pref.0,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &workspace_bytes as *const usize as *const c_void,
            size_of::<usize>(),
        )
        .map_err(|e| lt_err("workspace preference", e))?;
        let heuristic = lt::get_matmul_algo_heuristic(self.handle, desc.0, first.0, second.0, out.0, out.0, pref.0)
            .map_err(|e| {
                lt_err(
                    &format!(
                        "no algorithm for {}×{}×{} (bf16 {}, bf16 out {})",
                        g.m, g.n, g.k, g.bf16, g.bf16_out
                    ),
                    e,
                )
            })?;
        lt::matmul(
            self.handle,
            desc.0,
            &g.alpha as *const f32 as *const c_void,
            &g.beta as *const f32 as *const c_void,
            b as *const c_void,
            first.0,
            a as *const c_void,
            second.0,
            c as *const c_void,
            out.0,
            c as *mut c_void,
            out.0,
            &heuristic.algo,
            workspace as *mut c_void,
            workspace_bytes,
            stream,
        )
        .map_err(|e| lt_err("matmul", e))
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `Lt::new` and is destroyed once.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// A column-major matrix layout (leading dimension = rows), destroyed on drop.
struct Layout(sys::cublasLtMatrixLayout_t);

impl Layout {
    fn new(t: sys::cudaDataType, rows: u64, cols: u64) -> Result<Self> {
        lt::create_matrix_layout(t, rows, cols, rows.max(1) as i64)
            .map(Layout)
            .map_err(|e| lt_err("matrix layout", e))
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

/// A matmul description: compute in f32 (no TF32), scale factors f32.
struct Desc(sys::cublasLtMatmulDesc_t);

impl Desc {
    fn new() -> Result<Self> {
        lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map(Desc)
        .map_err(|e| lt_err("matmul description", e))
    }

    fn set<T>(&self, attr: sys::cublasLtMatmulDescAttributes_t, v: &T) -> Result<()> {
        // SAFETY: `v` is a plain value of the size the attribute expects.
        unsafe { lt::set_matmul_desc_attribute(self.0, attr, v as *const T as *const c_void, size_of::<T>()) }
            .map_err(|e| lt_err("matmul attribute", e))
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

struct Pref(sys::cublasLtMatmulPreference_t);

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created above, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}
