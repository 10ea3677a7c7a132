//! The CUDA device: the `DeviceApi` on a real GPU through cudarc (driver API
//! and cuBLAS, loaded at run time). Kernels are compiled by NVRTC for the
//! GPU's architecture on first use and cached on disk by (source hash,
//! architecture, NVRTC version).
//!
//! Not yet run on a GPU: no task so far had one. `nemesis check --device
//! cuda` is the first thing to run where one is lent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm as _, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PinnedHostSlice,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;

mod lt;

use super::cuda_probe::{probe, CudaProbe};
use super::device::{Arg, Buffer, Gemm, Launch, PendingDownload};
use super::graph::{self, Op, OwnedArg, RawDevice, Recorder};
use super::kernels::{RngStreamC, SeqLayoutC, KERNELS};
use super::nvrtc::Nvrtc;
use crate::error::{Error, Result};

// SAFETY: both are #[repr(C)] plain data, laid out as the kernels declare them.
unsafe impl DeviceRepr for RngStreamC {}
unsafe impl DeviceRepr for SeqLayoutC {}

fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::invalid("cuda", format!("{what}: {e:?}"))
}

pub struct CudaDevice {
    bf16: bool,
    /// Fill fresh allocations with 0xFF bytes (NaN as f32), so a value a
    /// kernel fails to write shows up in a check (as on the emulator).
    poison: bool,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// `None` when `NEMESIS_GEMM=cublas` selects the classic SGEMM.
    lt: Option<lt::Lt>,
    /// cuBLASLt's workspace (32 MiB, NVIDIA's advice for Hopper).
    workspace: Buffer,
    nvrtc: Nvrtc,
    arch: String,
    name: String,
    next: AtomicU64,
    mem: Mutex<HashMap<u64, CudaSlice<u8>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// Page-locked host buffers for `download_later`, reused: allocating
    /// and freeing pinned memory every step can stall the device.
    pinned: Arc<Mutex<Vec<PinnedHostSlice<u8>>>>,
    /// The step graph's recording (backend/graph.rs) and the CUDA graph
    /// built from it.
    graph: Mutex<Recorder>,
    cuda_graph: Mutex<Option<BuiltGraph>>,
}

/// A CUDA graph captured from a recorded step, with the node of each
/// recorded launch (by its index among the recorded calls), so a replay can
/// change a launch's scalar arguments in the instantiated graph.
struct BuiltGraph {
    graph: cudarc::driver::CudaGraph,
    nodes: HashMap<usize, cudarc::driver::sys::CUgraphNode>,
}

// SAFETY: the graph and its nodes are only used under the device's
// `cuda_graph` lock, one thread at a time, as the CUDA documentation asks.
unsafe impl Send for BuiltGraph {}

/// Where compiled kernels are kept between runs.
fn module_cache() -> PathBuf {
    std::env::var_os("NEMESIS_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("nemesis-kernels"))
}

impl CudaDevice {
    /// Opens GPU `ordinal`, after checking that the driver loads, so a
    /// machine without CUDA gets an error rather than a panic from a
    /// library that failed to load.
    pub fn open(ordinal: usize) -> Result<Self> {
        match probe() {
            CudaProbe::Gpus(n) if n as usize > ordinal => {}
            other => {
                return Err(Error::invalid(
                    "--device cuda",
                    format!("CUDA is not available: {}", other.describe()),
                ))
            }
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
        // A stream of our own rather than the legacy default stream, which
        // cannot be captured into a graph.
        let stream = ctx.new_stream().map_err(|e| cuda_err("creating a stream", e))?;
        // SAFETY: only checks whether the shared library can be loaded.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::invalid(
                "--device cuda",
                "libcublas could not be loaded; install the CUDA toolkit's cuBLAS or set LD_LIBRARY_PATH",
            ));
        }
        let blas = CudaBlas::new(stream.clone()).map_err(|e| cuda_err("cuBLAS", e))?;
        let lt = match std::env::var("NEMESIS_GEMM").as_deref() {
            Ok("cublas") => None,
            _ => Some(lt::Lt::new()?),
        };
        let workspace_bytes = 32 << 20;
        let ws = stream
            .alloc_zeros::<u8>(workspace_bytes)
            .map_err(|e| cuda_err("cuBLASLt workspace", e))?;
        let mut mem = HashMap::new();
        mem.insert(u64::MAX, ws);
        Ok(CudaDevice {
            bf16: false,
            poison: false,
            ctx,
            stream,
            blas,
            lt,
            workspace: Buffer {
                id: u64::MAX,
                bytes: workspace_bytes,
            },
            nvrtc,
            arch: format!("sm_{major}{minor}"),
            name,
            next: AtomicU64::new(0),
            mem: Mutex::new(mem),
            functions: Mutex::new(HashMap::new()),
            pinned: Arc::new(Mutex::new(Vec::new())),
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
            .ok_or_else(|| Error::invalid("cuda", format!("no kernel named `{kernel}`")))?;
        let src = super::kernels::source(file).ok_or_else(|| Error::invalid("cuda", format!("no source {file}")))?;
        let (maj, min) = self.nvrtc.version()?;
        let key = crc32fast::hash(format!("{src}{}", super::kernels::COMMON_HEADER).as_bytes());
        let cached = module_cache().join(format!("{file}-{key:08x}-{}-nvrtc{maj}.{min}.cubin", self.arch));
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
            .ok_or_else(|| Error::invalid("cuda", format!("`{kernel}` missing from {file}")))
    }
}

impl CudaDevice {
    /// Captures the recorded launches and GEMMs into a CUDA graph (nothing
    /// runs; allocations, uploads and downloads are the replay's business).
    fn capture(&self, ops: &[Op]) -> Result<BuiltGraph> {
        use cudarc::driver::sys;
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| cuda_err("beginning a graph capture", e))?;
        let mut nodes = HashMap::new();
        let captured = graph::run_calls(self, ops, |i| {
            nodes.insert(i, self.last_captured_node()?);
            Ok(())
        });
        // The capture ends whatever happened, so the stream is usable again.
        let ended = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(|e| cuda_err("ending a graph capture", e));
        captured?;
        let graph = ended?.ok_or_else(|| cuda_err("graph capture", "the captured graph is empty"))?;
        graph.upload().map_err(|e| cuda_err("uploading the graph", e))?;
        Ok(BuiltGraph { graph, nodes })
    }

    /// The node the last launch added to the capture: on one stream the
    /// capture's frontier is exactly that node.
    fn last_captured_node(&self) -> Result<cudarc::driver::sys::CUgraphNode> {
        use cudarc::driver::sys;
        let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        let mut id: sys::cuuint64_t = 0;
        let mut g: sys::CUgraph = std::ptr::null_mut();
        let mut deps: *const sys::CUgraphNode = std::ptr::null();
        let mut edges: *const sys::CUgraphEdgeData = std::ptr::null();
        let mut n: usize = 0;
        // SAFETY: every out-pointer points at a local of the declared type;
        // the stream is ours and capturing.
        let r = unsafe {
            sys::cuStreamGetCaptureInfo_v3(
                self.stream.cu_stream(),
                &mut status,
                &mut id,
                &mut g,
                &mut deps,
                &mut edges,
                &mut n,
            )
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(cuda_err("reading the capture's last node", r));
        }
        if n != 1 || deps.is_null() {
            return Err(cuda_err(
                "graph capture",
                format!("{n} nodes at the capture's frontier after a launch (one expected)"),
            ));
        }
        // SAFETY: the driver returned `n` = 1 valid node at `deps`.
        Ok(unsafe { *deps })
    }

    /// New scalar arguments for one launch of the instantiated graph.
    fn set_node_params(
        &self,
        cg: &BuiltGraph,
        node: cudarc::driver::sys::CUgraphNode,
        kernel: &str,
        cfg: &Launch,
        args: &[OwnedArg],
    ) -> Result<()> {
        use cudarc::driver::sys;
        let func = self.function(kernel)?;
        let m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
        // Each argument's bytes, 8-byte aligned, and a pointer to each.
        let mut values: Vec<Vec<u64>> = Vec::with_capacity(args.len());
        for a in args {
            let bytes: Vec<u8> = match *a {
                OwnedArg::Buf(id) => {
                    let slice = m
                        .get(&id)
                        .ok_or_else(|| Error::invalid("cuda", format!("buffer {id} is not allocated")))?;
                    let (p, _sync) = slice.device_ptr(&self.stream);
                    p.to_ne_bytes().to_vec()
                }
                OwnedArg::I32(v) => v.to_ne_bytes().to_vec(),
                OwnedArg::U32(v) => v.to_ne_bytes().to_vec(),
                OwnedArg::U64(v) => v.to_ne_bytes().to_vec(),
                OwnedArg::F32(v) => v.to_ne_bytes().to_vec(),
                OwnedArg::F64(v) => v.to_ne_bytes().to_vec(),
                OwnedArg::Rng(r) => {
                    let c: RngStreamC = r.into();
                    [c.k0, c.k1, c.s0, c.s1].iter().flat_map(|w| w.to_ne_bytes()).collect()
                }
                OwnedArg::Layout(l) => {
                    let c: SeqLayoutC = l.into();
                    // SAFETY: SeqLayoutC is #[repr(C)] plain i32 fields.
                    unsafe {
                        std::slice::from_raw_parts(
                            (&c as *const SeqLayoutC).cast::<u8>(),
                            std::mem::size_of::<SeqLayoutC>(),
                        )
                    }
                    .to_vec()
                }
            };
            let mut words = vec![0u64; bytes.len().div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(&bytes);
            values.push(words);
        }
        let mut ptrs: Vec<*mut std::ffi::c_void> = values.iter_mut().map(|v| v.as_mut_ptr().cast()).collect();
        let params = sys::CUDA_KERNEL_NODE_PARAMS {
            func: func.cu_function(),
            gridDimX: cfg.grid[0],
            gridDimY: cfg.grid[1],
            gridDimZ: cfg.grid[2],
            blockDimX: cfg.block[0],
            blockDimY: cfg.block[1],
            blockDimZ: cfg.block[2],
            sharedMemBytes: cfg.shared_bytes,
            kernelParams: ptrs.as_mut_ptr(),
            extra: std::ptr::null_mut(),
            kern: std::ptr::null_mut(),
            ctx: std::ptr::null_mut(),
        };
        // SAFETY: `node` is a kernel node of `cg`'s graph; the parameters
        // point at values that live until the call returns (the driver
        // copies them), in the kernel's declared order and types.
        let r = unsafe { sys::cuGraphExecKernelNodeSetParams_v2(cg.graph.cu_graph_exec(), node, &params) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(cuda_err(&format!("updating `{kernel}` in the step graph"), r));
        }
        Ok(())
    }

    /// The classic cuBLAS SGEMM (f32, TF32 off), used when
    /// `NEMESIS_GEMM=cublas` asks for it instead of cuBLASLt.
    fn gemm_cublas(&self, g: &Gemm, a: &Buffer, b: &Buffer, c: &Buffer, bias: Option<&Buffer>) -> Result<()> {
        if g.bf16 || g.bf16_inputs {
            return Err(Error::invalid(
                "gemm",
                "bf16 GEMMs need cuBLASLt; unset NEMESIS_GEMM=cublas",
            ));
        }
        let mut m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
        // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap
        // the operands and keep each one's own transpose flag.
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let cfg = GemmConfig {
            transa: op(g.trans_b),
            transb: op(g.trans_a),
            m: g.n as i32,
            n: g.m as i32,
            k: g.k as i32,
            alpha: g.alpha,
            lda: if g.trans_b { g.k } else { g.n } as i32,
            ldb: if g.trans_a { g.m } else { g.k } as i32,
            beta: g.beta,
            ldc: g.n as i32,
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
                    (Some(av), Some(bv), Some(mut cv)) => self
                        .blas
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
                self.launch_raw(
                    "add_broadcast",
                    &Launch::linear(((n as usize).div_ceil(256)).min(65_535) as u32, 256, 0),
                    &[
                        Arg::Buf(c),
                        Arg::Buf(bias),
                        Arg::Buf(c),
                        Arg::U64(n),
                        Arg::U64(g.n as u64),
                    ],
                )
            }
            None => Ok(()),
        }
    }
}

/// A copy into pinned host memory, finished when its event is.
struct CudaPending {
    host: Option<PinnedHostSlice<u8>>,
    bytes: usize,
    pool: Arc<Mutex<Vec<PinnedHostSlice<u8>>>>,
}

impl PendingDownload for CudaPending {
    fn wait(mut self: Box<Self>) -> Result<Vec<u8>> {
        let host = self.host.take().ok_or_else(|| cuda_err("download", "already taken"))?;
        let out = host.as_slice().map_err(|e| cuda_err("download", e))?[..self.bytes].to_vec();
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(host);
        }
        Ok(out)
    }
}

fn missing(buf: &Buffer) -> Error {
    Error::invalid("cuda", format!("buffer {} is not allocated on this device", buf.id))
}

/// Scalar kernel arguments, owned while a launch is being built.
enum Scalar {
    I32(i32),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
    Rng(RngStreamC),
    Layout(SeqLayoutC),
    Buf(u64),
}

impl RawDevice for CudaDevice {
    fn name(&self) -> String {
        format!("{} ({})", self.name, self.arch)
    }

    fn mixed_precision(&self) -> bool {
        self.bf16
    }

    fn kind(&self) -> crate::tensor::Device {
        crate::tensor::Device::Cuda
    }

    fn address(&self, buf: &Buffer) -> Result<u64> {
        let m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
        let slice = m.get(&buf.id).ok_or_else(|| missing(buf))?;
        let (p, _sync) = slice.device_ptr(&self.stream);
        Ok(p)
    }

    fn recorder(&self) -> &Mutex<Recorder> {
        &self.graph
    }

    fn bytes_of(&self, id: u64) -> usize {
        self.mem
            .lock()
            .ok()
            .and_then(|m| m.get(&id).map(|s| s.len()))
            .unwrap_or(0)
    }

    fn alloc_raw(&self, bytes: usize) -> Result<Buffer> {
        // Stream-ordered and not cleared: no kernel reads memory it has not
        // written (the emulator fills fresh memory with NaN bits and every
        // check passes there), so a memset per buffer would be waste.
        // SAFETY: u8 has no invalid bit patterns; the contents are only
        // read after a kernel or copy has written them.
        let slice = unsafe { self.stream.alloc::<u8>(bytes.max(1)) }.map_err(|e| cuda_err("alloc", e))?;
        if self.poison {
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
        if let Ok(mut m) = self.mem.lock() {
            m.remove(&buf.id);
        }
    }

    fn upload_raw(&self, dst: &Buffer, src: &[u8]) -> Result<()> {
        let mut m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
        let slice = m.get_mut(&dst.id).ok_or_else(|| missing(dst))?;
        if src.len() > dst.bytes {
            return Err(Error::invalid(
                "upload",
                format!("{} bytes into a buffer of {}", src.len(), dst.bytes),
            ));
        }
        let mut view = slice.slice_mut(..src.len());
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(|e| cuda_err("upload", e))
    }

    fn download_raw(&self, src: &Buffer, dst: &mut [u8]) -> Result<()> {
        let m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
        let slice = m.get(&src.id).ok_or_else(|| missing(src))?;
        if dst.len() > src.bytes {
            return Err(Error::invalid(
                "download",
                format!("{} bytes from a buffer of {}", dst.len(), src.bytes),
            ));
        }
        let view = slice.slice(..dst.len());
        self.stream
            .memcpy_dtoh(&view, dst)
            .map_err(|e| cuda_err("download", e))?;
        self.stream.synchronize().map_err(|e| cuda_err("synchronize", e))
    }

    fn launch_raw(&self, kernel: &str, cfg: &Launch, args: &[Arg]) -> Result<()> {
        let func = self.function(kernel)?;
        if cfg.shared_bytes > 48 * 1024 {
            // Above 48 KiB of dynamic shared memory a kernel must opt in.
            func.set_attribute(
                cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                cfg.shared_bytes as i32,
            )
            .map_err(|e| cuda_err(&format!("{kernel}: {} bytes of shared memory", cfg.shared_bytes), e))?;
        }
        let m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
        let scalars: Vec<Scalar> = args
            .iter()
            .map(|a| match *a {
                Arg::Buf(b) => Scalar::Buf(b.id),
                Arg::I32(v) => Scalar::I32(v),
                Arg::U32(v) => Scalar::U32(v),
                Arg::U64(v) => Scalar::U64(v),
                Arg::F32(v) => Scalar::F32(v),
                Arg::F64(v) => Scalar::F64(v),
                Arg::Rng(r) => Scalar::Rng(r.into()),
                Arg::Layout(l) => Scalar::Layout(l.into()),
            })
            .collect();
        let mut b = self.stream.launch_builder(&func);
        for s in &scalars {
            match s {
                Scalar::Buf(id) => {
                    let slice = m
                        .get(id)
                        .ok_or_else(|| Error::invalid("cuda", format!("buffer {id} is not allocated")))?;
                    b.arg(slice);
                }
                Scalar::I32(v) => {
                    b.arg(v);
                }
                Scalar::U32(v) => {
                    b.arg(v);
                }
                Scalar::U64(v) => {
                    b.arg(v);
                }
                Scalar::F32(v) => {
                    b.arg(v);
                }
                Scalar::F64(v) => {
                    b.arg(v);
                }
                Scalar::Rng(v) => {
                    b.arg(v);
                }
                Scalar::Layout(v) => {
                    b.arg(v);
                }
            }
        }
        let lc = LaunchConfig {
            grid_dim: (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
            block_dim: (cfg.block[0], cfg.block[1], cfg.block[2]),
            shared_mem_bytes: cfg.shared_bytes,
        };
        // SAFETY: the launchers size every buffer for the launch and pass
        // arguments in the kernel's declared order and types.
        unsafe { b.launch(lc) }.map_err(|e| cuda_err(kernel, e))?;
        Ok(())
    }

    fn gemm_raw(&self, g: &Gemm, a: &Buffer, b: &Buffer, c: &Buffer, bias: Option<&Buffer>) -> Result<()> {
        // Whether the bf16-output fallback has been reported (once a run).
        static BF16_OUT_FALLBACK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let elem = if g.bf16 { 2 } else { 4 };
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
            return self.gemm_cublas(g, a, b, c, bias);
        };
        // Mixed precision: the operands are rounded to bf16 in scratch buffers.
        let g = &Gemm {
            bf16: g.bf16 || g.bf16_inputs,
            ..*g
        };
        let scratch = if g.bf16 && !g.bf16_inputs {
            let (sa, sb) = (self.alloc_raw(g.m * g.k * elem)?, self.alloc_raw(g.k * g.n * elem)?);
            for (src, dst, n) in [(a, &sa, g.m * g.k), (b, &sb, g.k * g.n)] {
                self.launch_raw(
                    "f32_to_bf16",
                    &Launch::linear(n.div_ceil(256).min(65_535) as u32, 256, 0),
                    &[Arg::Buf(src), Arg::Buf(dst), Arg::U64(n as u64)],
                )?;
            }
            Some((sa, sb))
        } else {
            None
        };
        let run = |g: &Gemm, c: &Buffer| -> Result<()> {
            let m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
            let ptr = |buf: &Buffer| -> Result<u64> {
                let slice = m.get(&buf.id).ok_or_else(|| missing(buf))?;
                let (p, _sync) = slice.device_ptr(&self.stream);
                Ok(p)
            };
            let (pa, pb) = match &scratch {
                Some((sa, sb)) => (ptr(sa)?, ptr(sb)?),
                None => (ptr(a)?, ptr(b)?),
            };
            let (pc, pbias, pw) = (ptr(c)?, bias.map(&ptr).transpose()?, ptr(&self.workspace)?);
            // SAFETY: sizes checked above; every pointer is a live allocation of this context.
            unsafe {
                lt.matmul(
                    g,
                    pa,
                    pb,
                    pc,
                    pbias,
                    pw,
                    self.workspace.bytes,
                    self.stream.cu_stream() as _,
                )
            }
        };
        let result = match run(g, c) {
            // No cuBLASLt algorithm writes bf16 with this bias type here:
            // f32 into scratch, then one rounding pass.
            Err(e) if g.bf16_out => {
                if !BF16_OUT_FALLBACK.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    eprintln!("warning: cuBLASLt refused a bf16 output ({e}); such GEMMs write f32 and round it");
                }
                let n = g.m * g.n;
                let f = self.alloc_raw(n * 4)?;
                let r = run(&Gemm { bf16_out: false, ..*g }, &f).and_then(|_| {
                    self.launch_raw(
                        "f32_to_bf16",
                        &Launch::linear(n.div_ceil(256).min(65_535) as u32, 256, 0),
                        &[Arg::Buf(&f), Arg::Buf(c), Arg::U64(n as u64)],
                    )
                });
                self.free_raw(&f);
                r
            }
            r => r,
        };
        if let Some((sa, sb)) = scratch {
            // cuBLASLt has been queued on the stream; frees are stream-ordered.
            self.free_raw(&sa);
            self.free_raw(&sb);
        }
        result
    }

    fn synchronize_raw(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| cuda_err("synchronize", e))
    }

    fn download_later_raw(&self, src: &Buffer, bytes: usize) -> Result<Box<dyn PendingDownload>> {
        if bytes > src.bytes {
            return Err(Error::invalid(
                "download",
                format!("{bytes} bytes from a buffer of {}", src.bytes),
            ));
        }
        let reused = {
            let mut pool = self
                .pinned
                .lock()
                .map_err(|_| cuda_err("pinned pool", "poisoned lock"))?;
            pool.iter().position(|p| p.len() >= bytes).map(|i| pool.swap_remove(i))
        };
        let mut host = match reused {
            Some(h) => h,
            // SAFETY: the bytes are written by the copy below before `wait` reads them.
            None => unsafe { self.ctx.alloc_pinned_with_flags::<u8>(bytes.max(256), 0) }
                .map_err(|e| cuda_err("pinned host memory", e))?,
        };
        {
            let m = self.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
            let slice = m.get(&src.id).ok_or_else(|| missing(src))?;
            let view = slice.slice(..bytes);
            // cudarc records the pinned slice's own event behind the copy;
            // `as_slice` waits on it.
            self.stream
                .memcpy_dtoh(&view, &mut host)
                .map_err(|e| cuda_err("download", e))?;
        }
        Ok(Box::new(CudaPending {
            host: Some(host),
            bytes,
            pool: self.pinned.clone(),
        }))
    }

    fn build_graph(&self, ops: &[Op]) -> Result<()> {
        let g = self.capture(ops)?;
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
                self.set_node_params(cg, node, kernel, cfg, args)?;
            }
        }
        cg.graph.launch().map_err(|e| cuda_err("graph launch", e))
    }

    fn drop_built_graph(&self) {
        // The graph may still be running: wait for the stream first.
        let _ = self.stream.synchronize();
        if let Ok(mut g) = self.cuda_graph.lock() {
            *g = None;
        }
    }
}
