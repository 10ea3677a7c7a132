//! The CUDA device: the `RawDevice` of a real GPU through cudarc (driver
//! API, cuBLASLt, loaded at run time). Kernels are compiled by NVRTC for the
//! GPU's architecture on first use and cached on disk by (source hash,
//! architecture, NVRTC version); `NEMESIS_KERNEL_CACHE` names the folder,
//! so kernels compiled elsewhere (tools/device-check.sh) are used as they are.
//!
//! One stream carries everything, so stream order alone orders uses and
//! frees (cudarc's per-allocation events are off). Copies to and from the
//! host go through page-locked staging buffers and events (queue.rs,
//! backend/staging.rs). Every raw driver call binds the context first, so
//! a loader thread may call in. `NEMESIS_CUDA_SYNC=1` waits after every
//! launch and GEMM and names the one that failed (kernel faults otherwise
//! surface at a later call).
//!
//! Not yet run on a GPU: `tools/device-check.sh` is the first thing to run
//! where one is lent.

mod graph;
mod lt;
pub mod nccl;
mod queue;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm as _, GemmConfig};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr};
use cudarc::nvrtc::Ptx;

use self::graph::BuiltGraph;
use self::queue::CudaQueue;
use super::cuda_probe::{driver_api, probe, CudaProbe};
use super::gemm_plan::ColMajor;
use super::graph::{Op, Recorder};
use super::kernels::KERNELS;
use super::limits::{self, OptIns};
use super::nvrtc::Nvrtc;
use super::raw::RawDevice;
use super::staging::{HostBuf, Staging};
use crate::device::{Arg, Buffer, DeviceSettings, Gemm, Launch, Peers, Reduce};
use crate::error::{Error, Result};

fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::device("cuda", what, format!("{e:?}"))
}

/// The CUDA version this build's driver bindings are written for.
const DRIVER_VERSION: i32 = 13_000;

/// Every driver entry point this device calls, itself or through cudarc,
/// checked at open: cudarc panics at the first call of a missing one.
const DRIVER_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceGetAttribute",
    "cuDeviceGetName",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamQuery",
    "cuStreamWaitEvent",
    "cuStreamBeginCapture_v2",
    "cuStreamEndCapture",
    "cuStreamGetCaptureInfo_v3",
    "cuGraphInstantiateWithFlags",
    "cuGraphUpload",
    "cuGraphLaunch",
    "cuGraphExecKernelNodeSetParams_v2",
    "cuGraphExecDestroy",
    "cuGraphDestroy",
    "cuMemAllocAsync",
    "cuMemFreeAsync",
    "cuMemsetD8Async",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyHtoDAsync_v2",
    "cuMemHostAlloc",
    "cuMemFreeHost",
    "cuDeviceGetDefaultMemPool",
    "cuMemPoolSetAttribute",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventQuery",
    "cuEventSynchronize",
    "cuEventDestroy_v2",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuFuncSetAttribute",
    "cuLaunchKernel",
    "cuGetErrorName",
    "cuGetErrorString",
];

/// cuBLASLt's workspace (32 MiB, NVIDIA's advice for Hopper).
const WORKSPACE_BYTES: usize = 32 << 20;

pub struct CudaDevice {
    bf16: bool,
    settings: DeviceSettings,
    /// Fill fresh allocations with 0xFF bytes (NaN as f32), so a value a
    /// kernel fails to write shows up in a check (as on the emulator).
    poison: bool,
    /// `NEMESIS_CUDA_SYNC=1`: wait after every launch and GEMM.
    sync_each: bool,
    /// The ranks' NCCL communicator, once joined; dropped before the
    /// context.
    nccl: Mutex<Option<nccl::Comm>>,
    /// The stream gradients are all-reduced on while the backward pass
    /// goes on (made when the device joins other ranks).
    side: Mutex<Option<Arc<CudaStream>>>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// `None` unless `NEMESIS_GEMM=cublas` selects the classic SGEMM.
    blas: Option<CudaBlas>,
    /// `None` when `NEMESIS_GEMM=cublas`.
    lt: Option<lt::Lt>,
    workspace: Buffer,
    nvrtc: Nvrtc,
    arch: String,
    name: String,
    next: AtomicU64,
    mem: Mutex<HashMap<u64, CudaSlice<u8>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    queue: Arc<CudaQueue>,
    staging: Staging,
    opt_ins: OptIns,
    /// Device scratch of the GEMMs that round f32 operands or an f32
    /// result to bf16, grown (never inside a capture) and reused.
    scratch: Mutex<[Option<Buffer>; 3]>,
    /// Scratch outgrown: kept until the device closes, since a captured
    /// graph may still address it.
    retired: Mutex<Vec<Buffer>>,
    /// A graph is being captured (no scratch may grow).
    capturing: AtomicBool,
    /// The step graph's recording (backend/graph.rs) and the CUDA graph
    /// built from it.
    graph: Mutex<Recorder>,
    cuda_graph: Mutex<Option<BuiltGraph>>,
}

/// Where compiled kernels are kept between runs.
fn module_cache() -> PathBuf {
    std::env::var_os("NEMESIS_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("nemesis-kernels"))
}

/// The file a compiled kernel source is cached in.
pub fn cached_module_name(file: &str, arch: &str, nvrtc: (i32, i32)) -> String {
    let src = super::kernels::source(file).unwrap_or_default();
    let key = crc32fast::hash(format!("{src}{}", super::kernels::COMMON_HEADER).as_bytes());
    format!("{file}-{key:08x}-{arch}-nvrtc{}.{}.cubin", nvrtc.0, nvrtc.1)
}

/// Compiles every kernel source for `arch` into `dir`, named as the device
/// looks them up (so a GPU machine given the folder compiles nothing).
/// Returns the files written.
pub fn precompile(
    nvrtc: &Nvrtc,
    arch: &str,
    dir: &std::path::Path,
    before_each: &mut dyn FnMut(&str),
) -> Result<Vec<PathBuf>> {
    let version = nvrtc.version()?;
    let mut out = Vec::new();
    for (file, src) in super::kernels::SOURCES {
        before_each(file);
        let c = nvrtc.compile(file, src, arch)?;
        let path = dir.join(cached_module_name(file, arch, version));
        crate::io::write_atomic(&path, &c.cubin)?;
        out.push(path);
    }
    Ok(out)
}

impl CudaDevice {
    /// Opens GPU `ordinal`, after checking that the driver loads and has
    /// every entry point used, and that cuBLASLt is CUDA 13's, so a machine
    /// without a suitable CUDA gets an error rather than a panic.
    pub fn open(ordinal: usize) -> Result<Self> {
        match probe() {
            CudaProbe::Gpus(n) if n as usize > ordinal => {}
            CudaProbe::Gpus(n) => {
                return Err(Error::invalid(
                    "--device cuda",
                    format!("GPU {ordinal} was asked for; the CUDA driver sees {n}"),
                ))
            }
            other => {
                return Err(Error::invalid(
                    "--device cuda",
                    format!(
                        "CUDA is not available: {}; use --device cpu (or auto, which falls back to the CPU), \
                         or emu to run the CUDA kernels on the CPU",
                        other.describe()
                    ),
                ))
            }
        }
        let (version, missing) = driver_api(DRIVER_SYMBOLS).map_err(|e| Error::invalid("--device cuda", e))?;
        if version < DRIVER_VERSION {
            return Err(Error::invalid(
                "--device cuda",
                format!(
                    "the CUDA driver supports CUDA {}.{}, this build needs {}.{} or newer (driver 580 or later)",
                    version / 1000,
                    version % 1000 / 10,
                    DRIVER_VERSION / 1000,
                    DRIVER_VERSION % 1000 / 10
                ),
            ));
        }
        if !missing.is_empty() {
            return Err(Error::invalid(
                "--device cuda",
                format!("the CUDA driver lacks {}; update the driver", missing.join(", ")),
            ));
        }
        let nvrtc = Nvrtc::load()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| cuda_err("creating the context", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| cuda_err("compute capability", e))?;
        let name = ctx.name().map_err(|e| cuda_err("device name", e))?;
        // One stream: cudarc's per-allocation events (for ordering between
        // streams) would only cost an event create and record per buffer
        // and launch argument.
        // SAFETY: every allocation, copy and launch of this device goes to
        // `stream`, so stream order alone keeps uses and frees ordered.
        unsafe { ctx.disable_event_tracking() };
        keep_pool_memory(&ctx)?;
        // A stream of our own rather than the legacy default stream, which
        // cannot be captured into a graph.
        let stream = ctx.new_stream().map_err(|e| cuda_err("creating a stream", e))?;
        let settings = DeviceSettings::from_env();
        let (blas, lt) = match settings.classic_cublas {
            true => {
                // SAFETY: only checks whether the shared library can be loaded.
                if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                    return Err(Error::invalid(
                        "--device cuda",
                        "libcublas could not be loaded; install the CUDA 13 toolkit's cuBLAS or set LD_LIBRARY_PATH",
                    ));
                }
                let blas = CudaBlas::new(stream.clone()).map_err(|e| cuda_err("cuBLAS", e))?;
                (Some(blas), None)
            }
            false => (None, Some(lt::Lt::new()?)),
        };
        let ws = stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(|e| cuda_err("cuBLASLt workspace", e))?;
        let mut mem = HashMap::new();
        mem.insert(u64::MAX, ws);
        let queue = Arc::new(CudaQueue::new(ctx.clone(), stream.clone()));
        Ok(CudaDevice {
            bf16: false,
            settings,
            poison: false,
            sync_each: std::env::var("NEMESIS_CUDA_SYNC").is_ok_and(|v| v == "1"),
            nccl: Mutex::new(None),
            side: Mutex::new(None),
            ctx,
            stream,
            blas,
            lt,
            workspace: Buffer {
                id: u64::MAX,
                bytes: WORKSPACE_BYTES,
            },
            nvrtc,
            arch: format!("sm_{major}{minor}"),
            name,
            next: AtomicU64::new(0),
            mem: Mutex::new(mem),
            functions: Mutex::new(HashMap::new()),
            staging: Staging::new(queue.clone()),
            queue,
            opt_ins: OptIns::default(),
            scratch: Mutex::new([None, None, None]),
            retired: Mutex::new(Vec::new()),
            capturing: AtomicBool::new(false),
            graph: Mutex::new(Recorder::default()),
            cuda_graph: Mutex::new(None),
        })
    }

    /// The same device, poisoning every fresh allocation (for `check`).
    pub fn with_poison(mut self, on: bool) -> Self {
        self.poison = on;
        self
    }

    /// The same device with mixed-precision GEMMs (bf16 operands) or not.
    pub fn with_mixed_precision(mut self, on: bool) -> Self {
        self.bf16 = on;
        self
    }

    /// Makes this device's context the calling thread's (every raw driver
    /// call needs it; cudarc's safe calls do it themselves).
    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("binding the context", e))
    }

    fn function(&self, kernel: &str) -> Result<CudaFunction> {
        let mut fns = self
            .functions
            .lock()
            .map_err(|_| cuda_err("kernel table", "poisoned lock"))?;
        if let Some(f) = fns.get(kernel) {
            return Ok(f.clone());
        }
        let file = KERNELS
            .iter()
            .find(|(_, k)| *k == kernel)
            .map(|(f, _)| *f)
            .ok_or_else(|| Error::device("cuda", "launch", format!("no kernel named `{kernel}`")))?;
        let src =
            super::kernels::source(file).ok_or_else(|| Error::device("cuda", "launch", format!("no source {file}")))?;
        let cached = module_cache().join(cached_module_name(file, &self.arch, self.nvrtc.version()?));
        let cubin = match std::fs::read(&cached) {
            Ok(b) if !b.is_empty() => b,
            _ => {
                let c = self.nvrtc.compile(file, src, &self.arch)?;
                // A cache that cannot be written only costs a recompile.
                let _ = crate::io::write_atomic(&cached, &c.cubin);
                c.cubin
            }
        };
        let module = self
            .ctx
            .load_module(Ptx::from_binary(cubin))
            .map_err(|e| cuda_err(file, e))?;
        for (f, k) in KERNELS.iter().filter(|(f, _)| *f == file) {
            let func = module.load_function(k).map_err(|e| cuda_err(&format!("{f}: {k}"), e))?;
            fns.insert(k.to_string(), func);
        }
        fns.get(kernel)
            .cloned()
            .ok_or_else(|| Error::device("cuda", "launch", format!("`{kernel}` missing from {file}")))
    }

    /// After each launch or GEMM under `NEMESIS_CUDA_SYNC=1`: waits, so a
    /// fault is blamed on the call that made it.
    fn settle(&self, what: &str) -> Result<()> {
        if self.sync_each && !self.capturing.load(Ordering::Relaxed) {
            self.stream
                .synchronize()
                .map_err(|e| cuda_err(&format!("{what} (NEMESIS_CUDA_SYNC=1: it failed on the device)"), e))?;
        }
        Ok(())
    }

    fn ptr_of(&self, m: &HashMap<u64, CudaSlice<u8>>, buf: &Buffer) -> Result<u64> {
        let slice = m.get(&buf.id).ok_or_else(|| missing(buf))?;
        let (p, _sync) = slice.device_ptr(&self.stream);
        Ok(p)
    }

    /// Scratch buffer `i` of at least `bytes`, grown outside captures only.
    fn scratch(&self, i: usize, bytes: usize) -> Result<Buffer> {
        let mut s = self.scratch.lock().map_err(|_| cuda_err("scratch", "poisoned lock"))?;
        if let Some(b) = &s[i] {
            if b.bytes >= bytes {
                return Ok(Buffer {
                    id: b.id,
                    bytes: b.bytes,
                });
            }
        }
        if self.capturing.load(Ordering::Relaxed) {
            return Err(cuda_err(
                "gemm",
                "a GEMM needed more scratch inside a graph capture (its shape was not run before)",
            ));
        }
        if let Some(old) = s[i].take() {
            if let Ok(mut r) = self.retired.lock() {
                r.push(old);
            }
        }
        let b = self.alloc_raw(bytes.next_power_of_two())?;
        s[i] = Some(Buffer {
            id: b.id,
            bytes: b.bytes,
        });
        Ok(b)
    }

    fn round_to_bf16(&self, src: &Buffer, dst: &Buffer, n: usize) -> Result<()> {
        super::raw::launch_checked(
            self,
            "f32_to_bf16",
            &super::gpu::grid_stride(n),
            &[Arg::Buf(src.id), Arg::Buf(dst.id), Arg::U64(n as u64)],
        )
    }

    /// The classic cuBLAS SGEMM (f32, TF32 off), used when
    /// `NEMESIS_GEMM=cublas` asks for it instead of cuBLASLt.
    fn gemm_cublas(
        &self,
        blas: &CudaBlas,
        g: &Gemm,
        a: &Buffer,
        b: &Buffer,
        c: &Buffer,
        bias: Option<&Buffer>,
    ) -> Result<()> {
        if g.bf16 || g.bf16_inputs || g.bf16_out {
            return Err(Error::invalid(
                "gemm",
                "bf16 GEMMs need cuBLASLt; unset NEMESIS_GEMM=cublas",
            ));
        }
        let mut m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
        let cm = ColMajor::of(g);
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let cfg = GemmConfig {
            transa: op(cm.trans_x),
            transb: op(cm.trans_y),
            m: cm.m as i32,
            n: cm.n as i32,
            k: cm.k as i32,
            alpha: g.alpha,
            lda: cm.ldx as i32,
            ldb: cm.ldy as i32,
            beta: g.beta,
            ldc: cm.ldc as i32,
        };
        let mut cs = m.remove(&c.id).ok_or_else(|| missing(c))?;
        let result = {
            let av = m.get(&a.id).ok_or_else(|| missing(a))?;
            let bv = m.get(&b.id).ok_or_else(|| missing(b))?;
            // SAFETY: each buffer holds at least the f32 values the product reads or writes (checked by the caller).
            unsafe {
                match (
                    av.transmute::<f32>(g.m * g.k),
                    bv.transmute::<f32>(g.k * g.n),
                    cs.transmute_mut::<f32>(g.m * g.n),
                ) {
                    (Some(av), Some(bv), Some(mut cv)) => blas
                        .gemm(cfg, &bv, &av, &mut cv)
                        .map_err(|e| cuda_err("cuBLAS sgemm", e)),
                    _ => Err(Error::invalid("gemm", "buffers too small for f32 views")),
                }
            }
        };
        m.insert(c.id, cs);
        drop(m);
        result?;
        match bias {
            Some(bias) => {
                let n = (g.m * g.n) as u64;
                super::raw::launch_checked(
                    self,
                    "add_broadcast",
                    &super::gpu::grid_stride(n as usize),
                    &[
                        Arg::Buf(c.id),
                        Arg::Buf(bias.id),
                        Arg::Buf(c.id),
                        Arg::U64(n),
                        Arg::U64(g.n as u64),
                    ],
                )
            }
            None => Ok(()),
        }
    }
}

/// The stream-ordered allocator keeps what a step freed for the next step
/// instead of returning it to the driver at every synchronisation (its
/// default release threshold is 0).
fn keep_pool_memory(ctx: &CudaContext) -> Result<()> {
    use cudarc::driver::sys;
    ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: out-pointer to a local; the device is the context's.
    let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(cuda_err("the device's memory pool", r));
    }
    let mut threshold: u64 = u64::MAX;
    // SAFETY: the attribute takes a cuuint64_t by pointer.
    let r = unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(cuda_err("the memory pool's release threshold", r));
    }
    Ok(())
}

fn missing(buf: &Buffer) -> Error {
    Error::device(
        "cuda",
        "memory",
        format!("buffer {} is not allocated on this device", buf.id),
    )
}

impl RawDevice for CudaDevice {
    fn name(&self) -> String {
        format!("{} ({})", self.name, self.arch)
    }

    fn settings(&self) -> &DeviceSettings {
        &self.settings
    }

    fn mixed_precision(&self) -> bool {
        self.bf16
    }

    fn kind(&self) -> crate::device::Device {
        crate::device::Device::Cuda
    }

    fn address(&self, buf: &Buffer) -> Result<u64> {
        let m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
        self.ptr_of(&m, buf)
    }

    fn recorder(&self) -> &Mutex<Recorder> {
        &self.graph
    }

    fn staging(&self) -> &Staging {
        &self.staging
    }

    fn opt_ins(&self) -> &OptIns {
        &self.opt_ins
    }

    fn bytes_of(&self, id: u64) -> usize {
        self.mem
            .lock()
            .ok()
            .and_then(|m| m.get(&id).map(|s| s.len()))
            .unwrap_or(0)
    }

    fn available_raw(&self) -> Option<u64> {
        self.bind().ok()?;
        self.ctx.mem_get_info().ok().map(|(free, _)| free as u64)
    }

    fn alloc_raw(&self, bytes: usize) -> Result<Buffer> {
        // Stream-ordered and not cleared: no kernel reads memory it has not
        // written (the emulator fills fresh memory with NaN bits and every
        // check passes there), so a memset per buffer would be waste.
        // SAFETY: u8 has no invalid bit patterns; the contents are only
        // read after a kernel or copy has written them.
        let slice = unsafe { self.stream.alloc::<u8>(bytes.max(1)) }.map_err(|e| {
            if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                Error::OutOfMemory {
                    device: self.name(),
                    asked: bytes,
                    free: self.ctx.mem_get_info().ok().map(|(free, _)| free),
                }
            } else {
                cuda_err(&format!("allocating {bytes} bytes"), e)
            }
        })?;
        if self.poison {
            self.bind()?;
            let (ptr, _sync) = slice.device_ptr(&self.stream);
            // SAFETY: the allocation was just made on this stream and holds
            // at least `bytes` bytes; any byte pattern is valid for u8.
            unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes.max(1), self.stream.cu_stream()) }
                .map_err(|e| cuda_err("poisoning an allocation", e))?;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.mem
            .lock()
            .map_err(|_| cuda_err("memory table", "poisoned lock"))?
            .insert(id, slice);
        Ok(Buffer { id, bytes })
    }

    fn free_raw(&self, buf: &Buffer) {
        let slice = self.mem.lock().ok().and_then(|mut m| m.remove(&buf.id));
        if let Some(slice) = slice {
            // cudarc's free (stream-ordered) does not bind the context.
            let _ = self.bind();
            drop(slice);
        }
    }

    fn copy_to_host(&self, src: &Buffer, dst: &HostBuf, bytes: usize) -> Result<()> {
        use cudarc::driver::sys;
        let m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
        let slice = m.get(&src.id).ok_or_else(|| missing(src))?;
        if bytes > slice.len() {
            return Err(Error::invalid(
                "download",
                format!("{bytes} bytes from a buffer of {}", slice.len()),
            ));
        }
        let (host, cap) = self.queue.host_ptr(dst)?;
        if bytes > cap {
            return Err(Error::invalid("download", format!("{bytes} bytes into {cap}")));
        }
        let (dptr, _sync) = slice.device_ptr(&self.stream);
        self.bind()?;
        // SAFETY: `host` is our pinned buffer of `cap` ≥ `bytes` bytes, kept
        // until the event recorded behind this copy is done; `dptr` holds
        // at least `bytes` bytes; the stream is ours.
        let r = unsafe { sys::cuMemcpyDtoHAsync_v2(host.cast(), dptr, bytes, self.stream.cu_stream()) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(cuda_err("download", r));
        }
        Ok(())
    }

    fn copy_from_host(&self, src: &HostBuf, dst: &Buffer, bytes: usize) -> Result<()> {
        use cudarc::driver::sys;
        let m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
        let slice = m.get(&dst.id).ok_or_else(|| missing(dst))?;
        if bytes > slice.len() {
            return Err(Error::invalid(
                "upload",
                format!("{bytes} bytes into a buffer of {}", slice.len()),
            ));
        }
        let (host, cap) = self.queue.host_ptr(src)?;
        if bytes > cap {
            return Err(Error::invalid("upload", format!("{bytes} bytes out of {cap}")));
        }
        let (dptr, _sync) = slice.device_ptr(&self.stream);
        self.bind()?;
        // SAFETY: `host` is our pinned buffer holding `bytes` bytes the host
        // wrote, not written again until the event behind this copy is
        // done; `dptr` has room for them; the stream is ours.
        let r = unsafe { sys::cuMemcpyHtoDAsync_v2(dptr, host.cast_const().cast(), bytes, self.stream.cu_stream()) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(cuda_err("upload", r));
        }
        Ok(())
    }

    fn raise_shared_limit(&self, kernel: &str, bytes: u32) -> Result<()> {
        let func = self.function(kernel)?;
        self.bind()?;
        func.set_attribute(
            cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(|e| cuda_err(&format!("{kernel}: allowing {bytes} bytes of shared memory"), e))
    }

    fn launch_raw(&self, kernel: &str, cfg: &Launch, args: &[Arg]) -> Result<()> {
        use cudarc::driver::sys;
        limits::check(kernel, cfg, self.opt_ins.allowed(kernel))?;
        let func = self.function(kernel)?;
        let params = {
            let m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
            graph::param_block(&m, &self.stream, args)?
        };
        let mut ptrs = params.pointers();
        self.bind()?;
        // SAFETY: the arguments were checked against the kernel's declared
        // parameters (kernels::check_args) and packed at their declared
        // sizes (tests/kernel_params.rs); the launchers size every buffer
        // for the launch; the driver copies the parameters before it returns.
        let r = unsafe {
            sys::cuLaunchKernel(
                func.cu_function(),
                cfg.grid[0],
                cfg.grid[1],
                cfg.grid[2],
                cfg.block[0],
                cfg.block[1],
                cfg.block[2],
                cfg.shared_bytes,
                self.stream.cu_stream(),
                ptrs.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        drop((ptrs, params));
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(cuda_err(&format!("launching `{kernel}`"), r));
        }
        self.settle(&format!("kernel `{kernel}`"))
    }

    fn gemm_raw(&self, g: &Gemm, a: &Buffer, b: &Buffer, c: &Buffer, bias: Option<&Buffer>) -> Result<()> {
        let input = if g.bf16_inputs { 2 } else { 4 };
        if g.bf16_out && g.beta != 0.0 {
            return Err(Error::invalid("gemm", "a bf16 C cannot be accumulated into (beta ≠ 0)"));
        }
        let out = if g.bf16_out { 2 } else { 4 };
        for (buf, n, size) in [(a, g.m * g.k, input), (b, g.k * g.n, input), (c, g.m * g.n, out)] {
            if buf.bytes < n * size {
                return Err(Error::invalid(
                    "gemm",
                    format!("a buffer of {} bytes for {n} values", buf.bytes),
                ));
            }
        }
        if let Some(bias) = bias {
            if bias.bytes < g.n * 4 {
                return Err(Error::invalid("gemm", "the bias is shorter than a row of C"));
            }
        }
        let Some(lt) = &self.lt else {
            let blas = self
                .blas
                .as_ref()
                .ok_or_else(|| cuda_err("gemm", "neither cuBLASLt nor cuBLAS is loaded"))?;
            self.gemm_cublas(blas, g, a, b, c, bias)?;
            return self.settle("a cuBLAS GEMM");
        };
        // Mixed precision: operands not yet bf16 are rounded into scratch.
        let g = &Gemm {
            bf16: g.bf16 || g.bf16_inputs,
            ..*g
        };
        let (a, b) = if g.bf16 && !g.bf16_inputs {
            let (sa, sb) = (self.scratch(0, g.m * g.k * 2)?, self.scratch(1, g.k * g.n * 2)?);
            self.round_to_bf16(a, &sa, g.m * g.k)?;
            self.round_to_bf16(b, &sb, g.k * g.n)?;
            (sa, sb)
        } else {
            (
                Buffer {
                    id: a.id,
                    bytes: a.bytes,
                },
                Buffer {
                    id: b.id,
                    bytes: b.bytes,
                },
            )
        };
        let route = lt.prepare(g, bias.is_some(), WORKSPACE_BYTES)?;
        let (g, target) = match route {
            lt::Route::Direct => (
                *g,
                Buffer {
                    id: c.id,
                    bytes: c.bytes,
                },
            ),
            lt::Route::F32ThenRound => (Gemm { bf16_out: false, ..*g }, self.scratch(2, g.m * g.n * 4)?),
        };
        {
            let m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
            let (pa, pb, pc) = (self.ptr_of(&m, &a)?, self.ptr_of(&m, &b)?, self.ptr_of(&m, &target)?);
            let pbias = bias.map(|x| self.ptr_of(&m, x)).transpose()?;
            let pw = self.ptr_of(&m, &self.workspace)?;
            self.bind()?;
            // SAFETY: sizes checked above; every pointer is a live allocation
            // of this context, which is current.
            unsafe { lt.matmul(&g, pa, pb, pc, pbias, pw, WORKSPACE_BYTES, self.stream.cu_stream() as _) }?;
        }
        if let lt::Route::F32ThenRound = route {
            self.round_to_bf16(&target, c, g.m * g.n)?;
        }
        self.settle(&format!("a {}×{}×{} GEMM", g.m, g.n, g.k))
    }

    fn synchronize_raw(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| cuda_err("synchronize", e))
    }

    fn build_graph(&self, ops: &[Op]) -> Result<()> {
        let g = graph::capture(self, ops)?;
        *self.cuda_graph.lock().map_err(|_| cuda_err("graph", "poisoned lock"))? = Some(g);
        Ok(())
    }

    fn run_graph(&self, ops: &[Op], updated: &[usize]) -> Result<()> {
        let cg = self.cuda_graph.lock().map_err(|_| cuda_err("graph", "poisoned lock"))?;
        let cg = cg.as_ref().ok_or_else(|| cuda_err("graph", "no graph was built"))?;
        for &i in updated {
            if let Some(Op::Launch { kernel, cfg, args }) = ops.get(i) {
                let node = cg
                    .nodes
                    .get(&i)
                    .copied()
                    .ok_or_else(|| cuda_err("graph", "a launch without its node"))?;
                graph::set_node_params(self, cg, node, kernel, cfg, args)?;
            }
        }
        cg.graph.launch().map_err(|e| cuda_err("graph launch", e))?;
        self.settle("the step graph")
    }

    fn drop_built_graph(&self) {
        // The graph may still be running: wait for the stream first.
        let _ = self.stream.synchronize();
        if let Ok(mut g) = self.cuda_graph.lock() {
            *g = None;
        }
    }

    fn join_raw(&self, peers: Peers) -> Result<()> {
        let Peers::Nccl { id, rank, size } = peers else {
            return Err(Error::invalid("cuda", "GPU ranks join through NCCL, not host copies"));
        };
        self.bind()?;
        let comm = nccl::Comm::init(&id, rank, size)?;
        let side = self
            .stream
            .fork()
            .map_err(|e| cuda_err("creating the all-reduce stream", e))?;
        *self.nccl.lock().map_err(|_| cuda_err("nccl", "poisoned lock"))? = Some(comm);
        *self.side.lock().map_err(|_| cuda_err("nccl", "poisoned lock"))? = Some(side);
        Ok(())
    }

    /// NCCL on the device's one stream, in stream order with the kernels
    /// around it; the host then waits for it, so that a rank that stopped
    /// answering is an error after the timeout rather than a hang.
    fn all_reduce_raw(&self, bufs: &[(&Buffer, usize)], op: Reduce, timeout: Option<Duration>) -> Result<()> {
        let ptrs = self.addresses(bufs)?;
        let mut comm = self.nccl.lock().map_err(|_| cuda_err("nccl", "poisoned lock"))?;
        let comm = comm.as_mut().ok_or_else(not_joined)?;
        self.bind()?;
        let stream = self.stream.cu_stream();
        // SAFETY: the addresses are live allocations of this device, sized
        // for their counts (checked in raw.rs), on our own stream; the
        // wait below keeps them alive until the work is done.
        unsafe { comm.all_reduce(&ptrs, op, stream) }?;
        comm.wait("all-reduce", timeout, || stream_done(stream))
    }

    /// NCCL on the side stream, which first waits for the work queued so
    /// far (the gradients of this bucket); the backward's later kernels go
    /// on beside it on the main stream.
    fn all_reduce_start_raw(&self, bufs: &[(&Buffer, usize)], op: Reduce) -> Result<()> {
        let ptrs = self.addresses(bufs)?;
        let side = self.side.lock().map_err(|_| cuda_err("nccl", "poisoned lock"))?.clone();
        let side = side.ok_or_else(not_joined)?;
        let mut comm = self.nccl.lock().map_err(|_| cuda_err("nccl", "poisoned lock"))?;
        let comm = comm.as_mut().ok_or_else(not_joined)?;
        side.join(&self.stream)
            .map_err(|e| cuda_err("ordering the all-reduce after the gradients", e))?;
        // SAFETY: live allocations of this device, sized for their counts
        // (raw.rs); freed only on the main stream, which waits for the side
        // stream in `all_reduce_finish_raw` before anything frees them.
        unsafe { comm.all_reduce(&ptrs, op, side.cu_stream()) }
    }

    /// The main stream waits for the side stream; the host waits for the
    /// side stream within the timeout.
    fn all_reduce_finish_raw(&self, timeout: Option<Duration>) -> Result<()> {
        let side = self.side.lock().map_err(|_| cuda_err("nccl", "poisoned lock"))?.clone();
        let side = side.ok_or_else(not_joined)?;
        self.stream
            .join(&side)
            .map_err(|e| cuda_err("ordering the update after the all-reduce", e))?;
        let mut comm = self.nccl.lock().map_err(|_| cuda_err("nccl", "poisoned lock"))?;
        let comm = comm.as_mut().ok_or_else(not_joined)?;
        let s = side.cu_stream();
        comm.wait("all-reduce", timeout, || stream_done(s))
    }
}

fn not_joined() -> Error {
    Error::invalid("all-reduce", "the GPU has not joined other ranks")
}

/// Whether everything queued on `stream` has run.
fn stream_done(stream: cudarc::driver::sys::CUstream) -> Result<bool> {
    use cudarc::driver::sys;
    // SAFETY: queries a live stream of ours.
    match unsafe { sys::cuStreamQuery(stream) } {
        sys::CUresult::CUDA_SUCCESS => Ok(true),
        sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
        r => Err(cuda_err("all-reduce", r)),
    }
}

impl CudaDevice {
    /// The device addresses of `bufs`, with their element counts.
    fn addresses(&self, bufs: &[(&Buffer, usize)]) -> Result<Vec<(u64, usize)>> {
        let m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
        bufs.iter().map(|(b, n)| Ok((self.ptr_of(&m, b)?, *n))).collect()
    }
}
