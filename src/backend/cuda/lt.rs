//! GEMMs through cuBLASLt: f32 with compute type `32F` (no TF32, for
//! verification) or bf16 operands with f32 accumulation (mixed precision)
//! and an f32 or bf16 output, with the f32 bias epilogue fused.
//!
//! Each GEMM shape gets a plan once: its descriptors, layouts and the
//! algorithm the heuristic chose, kept for every later call of that shape
//! (an eager step would otherwise create five descriptors and run the
//! heuristic for every GEMM). Whether cuBLASLt takes a bf16 D with an f32
//! bias (the bias type normally follows D) is asked then too; where it
//! does not, the plan writes f32 and the device rounds it in one pass.
//!
//! The row-major to column-major mapping is `ColMajor::of` (backend/gemm_plan.rs),
//! shared with the reference GEMM that tests it.
//!
//! Written against cuBLASLt's C API (through cudarc's raw bindings) because
//! cudarc's safe wrapper runs f32 with TF32 and keeps C in the operand type.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::Mutex;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublaslt::{result as lt, sys};

use crate::backend::gemm_plan::ColMajor;
use crate::device::Gemm;
use crate::error::{Error, Result};

fn lt_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::device("cuBLASLt", what, format!("{e:?}"))
}

/// The cuBLASLt interface this build is written against (CUDA 13).
const LT_MAJOR: usize = 13;

/// What makes two GEMMs share a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    bf16: bool,
    bf16_out: bool,
    bias: bool,
}

impl Key {
    fn of(g: &Gemm, bias: bool) -> Self {
        Key {
            m: g.m,
            n: g.n,
            k: g.k,
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            bf16: g.bf16,
            bf16_out: g.bf16_out,
            bias,
        }
    }
}

/// One shape's descriptors and algorithm.
struct Plan {
    desc: Desc,
    first: Layout,
    second: Layout,
    out: Layout,
    algo: sys::cublasLtMatmulAlgo_t,
}

/// How a GEMM runs: as asked, or (a bf16 output cuBLASLt refused) in f32
/// then rounded.
pub enum Route {
    Direct,
    F32ThenRound,
}

/// One cuBLASLt handle and the plans made on it.
pub struct Lt {
    handle: sys::cublasLtHandle_t,
    plans: Mutex<Plans>,
}

#[derive(Default)]
struct Plans {
    made: HashMap<Key, Plan>,
    /// bf16-output shapes cuBLASLt had no algorithm for (their f32 twin
    /// runs instead).
    refused: std::collections::HashSet<Key>,
}

// SAFETY: a cuBLASLt handle may be used from any thread; plans are used
// under their lock, one call at a time.
unsafe impl Send for Lt {}
unsafe impl Sync for Lt {}

impl Lt {
    /// Loads cuBLASLt and checks its version (an error, not a panic, when
    /// the library is missing or from another CUDA major version).
    pub fn new() -> Result<Self> {
        // SAFETY: only checks whether the shared library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::invalid(
                "cuBLASLt",
                "libcublasLt could not be loaded; install the CUDA 13 toolkit's cuBLAS or set LD_LIBRARY_PATH",
            ));
        }
        // SAFETY: a plain query of the loaded library.
        let version = unsafe { sys::cublasLtGetVersion() };
        if version / 10_000 != LT_MAJOR {
            return Err(Error::invalid(
                "cuBLASLt",
                format!(
                    "the libcublasLt found is version {}.{}.{}, but this build uses CUDA {LT_MAJOR}'s cuBLASLt \
                     interface; put CUDA {LT_MAJOR}'s libcublasLt.so.{LT_MAJOR} first on LD_LIBRARY_PATH",
                    version / 10_000,
                    version / 100 % 100,
                    version % 100
                ),
            ));
        }
        let handle = lt::create_handle().map_err(|e| lt_err("create handle", e))?;
        Ok(Lt {
            handle,
            plans: Mutex::new(Plans::default()),
        })
    }

    /// Makes sure `g` has a plan, and says how it runs.
    pub fn prepare(&self, g: &Gemm, bias: bool, workspace_bytes: usize) -> Result<Route> {
        let key = Key::of(g, bias);
        let mut plans = self.plans.lock().map_err(|_| lt_err("plans", "poisoned lock"))?;
        if plans.made.contains_key(&key) {
            return Ok(Route::Direct);
        }
        let f32_key = Key { bf16_out: false, ..key };
        if plans.refused.contains(&key) {
            return Ok(Route::F32ThenRound);
        }
        match self.plan(&key, workspace_bytes) {
            Ok(p) => {
                plans.made.insert(key, p);
                Ok(Route::Direct)
            }
            Err(e) if g.bf16_out => {
                eprintln!(
                    "note: cuBLASLt has no bf16-output algorithm with an f32 bias for {}×{}×{} ({e}); this shape \
                     writes f32 and rounds it",
                    g.m, g.n, g.k
                );
                if let std::collections::hash_map::Entry::Vacant(v) = plans.made.entry(f32_key) {
                    v.insert(self.plan(&f32_key, workspace_bytes)?);
                }
                plans.refused.insert(key);
                Ok(Route::F32ThenRound)
            }
            Err(e) => Err(e),
        }
    }

    fn plan(&self, key: &Key, workspace_bytes: usize) -> Result<Plan> {
        let operand_t = if key.bf16 {
            sys::cudaDataType_t::CUDA_R_16BF
        } else {
            sys::cudaDataType_t::CUDA_R_32F
        };
        let out_t = if key.bf16_out {
            sys::cudaDataType_t::CUDA_R_16BF
        } else {
            sys::cudaDataType_t::CUDA_R_32F
        };
        let cm = ColMajor::of(&Gemm {
            m: key.m,
            n: key.n,
            k: key.k,
            trans_a: key.trans_a,
            trans_b: key.trans_b,
            ..Gemm::new(0, 0, 0, false, false)
        });
        let first = Layout::new(operand_t, cm.x_rows, cm.x_cols, cm.ldx)?;
        let second = Layout::new(operand_t, cm.y_rows, cm.y_cols, cm.ldy)?;
        let out = Layout::new(out_t, cm.m, cm.n, cm.ldc)?;
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
            &op(cm.trans_x),
        )?;
        desc.set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
            &op(cm.trans_y),
        )?;
        if key.bias {
            let epi = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
            desc.set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi)?;
            desc.set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                &sys::cudaDataType_t::CUDA_R_32F,
            )?;
        }
        let pref = Pref(lt::create_matmul_pref().map_err(|e| lt_err("preference", e))?);
        // SAFETY: the attribute is a size_t, passed by pointer with its size.
        unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &workspace_bytes as *const usize as *const c_void,
                size_of::<usize>(),
            )
        }
        .map_err(|e| lt_err("workspace preference", e))?;
        // SAFETY: every descriptor is live and describes this GEMM.
        let heuristic =
            unsafe { lt::get_matmul_algo_heuristic(self.handle, desc.0, first.0, second.0, out.0, out.0, pref.0) }
                .map_err(|e| {
                    lt_err(
                        &format!(
                            "no algorithm for {}×{}×{} (bf16 {}, bf16 out {}, bias {})",
                            key.m, key.n, key.k, key.bf16, key.bf16_out, key.bias
                        ),
                        e,
                    )
                })?;
        Ok(Plan {
            desc,
            first,
            second,
            out,
            algo: heuristic.algo,
        })
    }

    /// Runs `g` (prepared with `prepare`, writing f32 when its route is
    /// `F32ThenRound`) on raw device pointers. `a` and `b` hold bf16 values
    /// when `g.bf16`, else f32; `c` is bf16 when `g.bf16_out`, else f32;
    /// `bias` is f32.
    ///
    /// # Safety
    /// Every pointer must address enough device memory for the shapes in `g`
    /// (`bias`: `g.n` values), and `workspace` `workspace_bytes` bytes, all
    /// on the context of `stream`, which must be current.
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
        let key = Key::of(g, bias.is_some());
        let plans = self.plans.lock().map_err(|_| lt_err("plans", "poisoned lock"))?;
        let plan = plans
            .made
            .get(&key)
            .ok_or_else(|| lt_err("matmul", format!("no plan for {key:?}")))?;
        if let Some(bias) = bias {
            // The bias address is the one attribute that changes between
            // GEMMs of a shape; cuBLASLt reads it when the call is made.
            plan.desc.set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bias,
            )?;
        }
        // Column-major: the first operand is B, the second A (ColMajor::of).
        lt::matmul(
            self.handle,
            plan.desc.0,
            &g.alpha as *const f32 as *const c_void,
            &g.beta as *const f32 as *const c_void,
            b as *const c_void,
            plan.first.0,
            a as *const c_void,
            plan.second.0,
            c as *const c_void,
            plan.out.0,
            c as *mut c_void,
            plan.out.0,
            &plan.algo,
            workspace as *mut c_void,
            workspace_bytes,
            stream,
        )
        .map_err(|e| lt_err("matmul", e))
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        if let Ok(mut p) = self.plans.lock() {
            p.made.clear();
        }
        // SAFETY: the handle was created by `Lt::new` and is destroyed once.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// A column-major matrix layout, destroyed on drop.
struct Layout(sys::cublasLtMatrixLayout_t);

impl Layout {
    fn new(t: sys::cudaDataType, rows: usize, cols: usize, ld: usize) -> Result<Self> {
        lt::create_matrix_layout(t, rows as u64, cols as u64, ld.max(1) as i64)
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
