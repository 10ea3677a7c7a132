//! The CUDA side of step graphs (backend/graph.rs): a recorded step's
//! launches and GEMMs captured into a CUDA graph on the device's stream,
//! and a launch's new scalar arguments written into its node before a
//! replay.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use cudarc::driver::sys;

use super::{cuda_err, CudaDevice};
use crate::backend::graph::Op;
use crate::backend::raw::run_calls;
use crate::device::Arg;
use crate::device::Launch;
use crate::error::{Error, Result};

/// A CUDA graph captured from a recorded step, with the node of each
/// recorded launch (by its index among the recorded calls), so a replay can
/// change a launch's scalar arguments in the instantiated graph.
pub struct BuiltGraph {
    pub graph: cudarc::driver::CudaGraph,
    pub nodes: HashMap<usize, sys::CUgraphNode>,
}

// SAFETY: the graph and its nodes are only used under the device's
// `cuda_graph` lock, one thread at a time, as the CUDA documentation asks.
unsafe impl Send for BuiltGraph {}

/// Captures the recorded launches and GEMMs into a CUDA graph (nothing
/// runs; allocations, uploads and downloads are the replay's business).
pub fn capture(d: &CudaDevice, ops: &[Op]) -> Result<BuiltGraph> {
    d.stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .map_err(|e| cuda_err("beginning a graph capture", e))?;
    d.capturing.store(true, Ordering::Relaxed);
    let mut nodes = HashMap::new();
    let captured = run_calls(d, ops, |i| {
        nodes.insert(i, last_captured_node(d)?);
        Ok(())
    });
    d.capturing.store(false, Ordering::Relaxed);
    // The capture ends whatever happened, so the stream is usable again.
    let ended = d
        .stream
        .end_capture(sys::CUgraphInstantiate_flags(0))
        .map_err(|e| cuda_err("ending a graph capture", e));
    let built = captured.and_then(|_| {
        let graph = ended?.ok_or_else(|| cuda_err("graph capture", "the captured graph is empty"))?;
        graph.upload().map_err(|e| cuda_err("uploading the graph", e))?;
        Ok(BuiltGraph { graph, nodes })
    });
    if built.is_err() {
        // A failed capture may leave an error in cudarc's context (from a
        // drop inside it) that the next call would return as its own.
        let _ = d.ctx.check_err();
    }
    built
}

/// The node the last launch added to the capture: on one stream the
/// capture's frontier is exactly that node.
fn last_captured_node(d: &CudaDevice) -> Result<sys::CUgraphNode> {
    let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    let mut id: sys::cuuint64_t = 0;
    let mut g: sys::CUgraph = std::ptr::null_mut();
    let mut deps: *const sys::CUgraphNode = std::ptr::null();
    let mut edges: *const sys::CUgraphEdgeData = std::ptr::null();
    let mut n: usize = 0;
    d.bind()?;
    // SAFETY: every out-pointer points at a local of the declared type;
    // the stream is ours and capturing.
    let r = unsafe {
        sys::cuStreamGetCaptureInfo_v3(
            d.stream.cu_stream(),
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

/// A launch's parameter block: each argument's bytes (its declared size:
/// tests/kernel_params.rs), in its own 8-byte-aligned words, as the driver
/// reads them through an array of pointers.
pub struct ParamBlock(Vec<Vec<u64>>);

impl ParamBlock {
    /// A pointer to each argument, in order (valid while the block lives).
    pub fn pointers(&self) -> Vec<*mut std::ffi::c_void> {
        self.0.iter().map(|v| v.as_ptr() as *mut std::ffi::c_void).collect()
    }
}

/// Packs `args`, buffers by their device addresses in `mem`.
pub fn param_block(
    mem: &HashMap<u64, cudarc::driver::CudaSlice<u8>>,
    stream: &cudarc::driver::CudaStream,
    args: &[Arg],
) -> Result<ParamBlock> {
    let address = |id: u64| -> Result<u64> {
        let slice = mem
            .get(&id)
            .ok_or_else(|| Error::device("cuda", "memory", format!("buffer {id} is not allocated")))?;
        let (p, _sync) = cudarc::driver::DevicePtr::device_ptr(slice, stream);
        Ok(p)
    };
    let mut block = Vec::with_capacity(args.len());
    for a in args {
        let bytes = crate::backend::kernels::param_bytes(a, address)?;
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(&bytes);
        block.push(words);
    }
    Ok(ParamBlock(block))
}

/// New scalar arguments for one launch of the instantiated graph.
pub fn set_node_params(
    d: &CudaDevice,
    cg: &BuiltGraph,
    node: sys::CUgraphNode,
    kernel: &str,
    cfg: &Launch,
    args: &[Arg],
) -> Result<()> {
    let func = d.function(kernel)?;
    let values = {
        let m = d.mem.lock().map_err(|_| cuda_err("memory table", "poisoned lock"))?;
        param_block(&m, &d.stream, args)?
    };
    let mut ptrs = values.pointers();
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
    d.bind()?;
    // SAFETY: `node` is a kernel node of `cg`'s graph; the parameters
    // point at values that live until the call returns (the driver
    // copies them), in the kernel's declared order and sizes.
    let r = unsafe { sys::cuGraphExecKernelNodeSetParams_v2(cg.graph.cu_graph_exec(), node, &params) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(cuda_err(&format!("updating `{kernel}` in the step graph"), r));
    }
    Ok(())
}
