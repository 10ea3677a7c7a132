//! The device layer, a leaf: what the GPU side of the engine needs from a
//! device (allocate, copy, launch a kernel by name, GEMM, synchronise,
//! record a step), the buffers and kernel arguments it takes, the
//! downloads it hands back, its memory accounting and its settings. The
//! emulator and the CUDA device (src/backend/) implement it; tensors hold
//! its buffers. It imports nothing of the engine but errors and the
//! random streams kernels take.

mod layout;
mod settings;

use std::sync::Arc;

pub use self::layout::SeqLayout;
pub use self::settings::{AttentionChoice, DeviceSettings};
use crate::error::Result;
use crate::rng::RngStream;

/// Where a tensor's elements live: host memory (the CPU reference backend),
/// or a device behind `DeviceApi` (the CUDA GPU, or the emulator that runs
/// the same kernels on the host). Nothing outside the backends touches raw
/// device memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// The CUDA kernels compiled for the host (backend/emu).
    Emu,
    Cuda,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Emu => "emu",
            Device::Cuda => "cuda",
        })
    }
}

/// A device shared by the tensors that live on it.
pub type SharedDevice = Arc<dyn DeviceApi + Send + Sync>;

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl Launch {
    pub fn linear(blocks: u32, threads: u32, shared_bytes: u32) -> Self {
        Launch {
            grid: [blocks.max(1), 1, 1],
            block: [threads.max(1), 1, 1],
            shared_bytes,
        }
    }
}

impl Arg {
    /// Equal bit for bit (a NaN equals itself).
    pub fn same(&self, other: &Arg) -> bool {
        use Arg::*;
        match (self, other) {
            (Buf(a), Buf(b)) => a == b,
            (I32(a), I32(b)) => a == b,
            (U32(a), U32(b)) => a == b,
            (U64(a), U64(b)) => a == b,
            (F32(a), F32(b)) => a.to_bits() == b.to_bits(),
            (F64(a), F64(b)) => a.to_bits() == b.to_bits(),
            (Rng(a), Rng(b)) => a == b,
            (Layout(a), Layout(b)) => a == b,
            _ => false,
        }
    }
}

/// A device allocation, owned by the device that made it.
#[derive(Debug, PartialEq, Eq)]
pub struct Buffer {
    pub(crate) id: u64,
    pub bytes: usize,
}

/// A kernel argument (a buffer by its id), owned, so a recorded launch
/// keeps its arguments as they are.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Buf(u64),
    I32(i32),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
    Rng(RngStream),
    Layout(SeqLayout),
}

/// `C ← α·op(A)·op(B) + β·C` on row-major f32 buffers, `op` a transpose or not.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
    /// Mixed precision: A and B rounded to bf16 (nearest even), products
    /// accumulated and C kept in f32. Off: f32 throughout, TF32 off.
    pub bf16: bool,
    /// A and B already hold bf16 values (raw bits), so no rounding pass
    /// runs; implies `bf16`. For measuring the matrix rate.
    pub bf16_inputs: bool,
    /// C is written as bf16 (nearest even) once the f32 sums and the bias
    /// are done: an output whose readers all take bf16 values. Needs
    /// `beta == 0` (C is not read).
    pub bf16_out: bool,
}

impl Gemm {
    /// `C = op(A)·op(B)` in f32.
    pub fn new(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Self {
        Gemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
            alpha: 1.0,
            beta: 0.0,
            bf16: false,
            bf16_inputs: false,
            bf16_out: false,
        }
    }
}

/// An element-wise operation over the ranks of a data-parallel run, and
/// the elements it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    SumF32,
    SumF64,
    MaxU64,
    /// bf16 bits summed (NCCL adds in f32 and rounds each partial sum to
    /// bf16, nearest even).
    SumBf16,
}

impl Reduce {
    pub fn elem_bytes(self) -> usize {
        match self {
            Reduce::SumBf16 => 2,
            Reduce::SumF32 => 4,
            Reduce::SumF64 | Reduce::MaxU64 => 8,
        }
    }
}

/// An operation over the ranks on host memory (MPI, `dist::Mpi`): how the
/// emulator's ranks join, through host copies.
pub trait HostReduce: Send + Sync {
    /// `op` over the ranks, in place; `values` holds whole elements.
    fn all_reduce_host(&self, values: &mut [u8], op: Reduce) -> Result<()>;
}

/// The other ranks a device joins (`DeviceApi::join`).
pub enum Peers {
    /// NCCL between GPUs: every rank passes the unique id rank 0 made
    /// (`backend::cuda::nccl::unique_id`).
    Nccl { id: [u8; 128], rank: usize, size: usize },
    /// Host copies of the buffers go through `HostReduce` (the emulator).
    Host(Arc<dyn HostReduce>),
}

pub trait DeviceApi {
    /// In words, for messages ("emulator", "NVIDIA H100 …").
    fn name(&self) -> String;
    /// What was chosen for this device when it opened (kernels, storage).
    fn settings(&self) -> &DeviceSettings;
    /// Which kind of device this is, for tensors and messages.
    fn kind(&self) -> Device;
    /// Whether GEMMs take bf16 operands (mixed precision) rather than f32.
    fn mixed_precision(&self) -> bool;
    fn alloc(&self, bytes: usize) -> Result<Buffer>;
    /// An allocation whose first write is an upload. A step graph may hand
    /// a plain allocation memory that an earlier call of the step used,
    /// but never this one: its upload happens before the graph runs.
    fn alloc_for_upload(&self, bytes: usize) -> Result<Buffer>;
    fn free(&self, buf: &Buffer);
    fn upload(&self, dst: &Buffer, src: &[u8]) -> Result<()>;
    fn download(&self, src: &Buffer, dst: &mut [u8]) -> Result<()>;
    fn launch(&self, kernel: &str, cfg: &Launch, args: &[Arg]) -> Result<()>;
    /// `C ← α·op(A)·op(B) + β·C`, then `+ bias` on every row of C when
    /// given (`n` values; on CUDA the GEMM's bias epilogue).
    fn gemm(&self, g: &Gemm, a: &Buffer, b: &Buffer, c: &Buffer, bias: Option<&Buffer>) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    /// Queues a copy of the first `bytes` of `src` to the host behind the
    /// work queued so far and returns at once; `wait` on the result gives
    /// the bytes. How a step's metrics come back without stalling the queue.
    fn download_later(&self, src: &Buffer, bytes: usize) -> Result<Box<dyn PendingDownload>>;
    /// The device address of a buffer, for the address tables of the
    /// multi-tensor kernels (valid while the buffer lives).
    fn address(&self, buf: &Buffer) -> Result<u64>;

    /// The memory this device has allocated for us, now and at most since
    /// the last `reset_peak`.
    fn memory(&self) -> MemoryUse;
    fn reset_peak(&self);
    /// Bytes the device could still allocate, when it says (a GPU's free
    /// memory); `None` on the emulator, whose memory is the host's.
    fn available_memory(&self) -> Option<u64>;

    /// Joins the other ranks of a data-parallel run, once, before the first
    /// `all_reduce`.
    fn join(&self, peers: Peers) -> Result<()>;
    /// `op` over the ranks on the first `count` elements of each buffer, in
    /// place, after the work queued so far; later work sees the result.
    /// Waiting longer than `timeout` for the other ranks is an error that
    /// leaves the device unable to join them again.
    fn all_reduce(&self, bufs: &[(&Buffer, usize)], op: Reduce, timeout: Option<std::time::Duration>) -> Result<()>;
    /// `all_reduce` begun behind the work queued so far and left running
    /// beside the work queued after it (on a GPU: NCCL on a stream of its
    /// own, overlapping the rest of the backward pass). Nothing may touch
    /// the buffers until `all_reduce_finish`.
    fn all_reduce_start(&self, bufs: &[(&Buffer, usize)], op: Reduce) -> Result<()>;
    /// Work queued after this sees every started all-reduce done; the host
    /// waits for them at most `timeout`.
    fn all_reduce_finish(&self, timeout: Option<std::time::Duration>) -> Result<()>;

    /// Step graphs (backend/graph.rs): starts recording the device calls
    /// that follow, which still run as usual.
    fn graph_record(&self) -> Result<()>;
    /// Ends the recording and builds the graph; says what it holds.
    fn graph_build(&self) -> Result<GraphCounts>;
    /// Starts a replay: the calls that follow are matched with the
    /// recording and nothing reaches the device until `graph_launch`.
    fn graph_replay(&self) -> Result<()>;
    /// Ends a replay and runs it: uploads, the graph, then the downloads.
    fn graph_launch(&self) -> Result<()>;
    /// Leaves a replay that failed; nothing of it has run.
    fn graph_abandon(&self);
    /// Forgets the graph and frees the memory it held.
    fn graph_drop(&self);
}

/// A copy to the host started by `DeviceApi::download_later`.
pub trait PendingDownload: Send {
    /// Waits for the copy (and everything queued before it) and gives the bytes.
    fn wait(self: Box<Self>) -> Result<Vec<u8>>;
}

/// A download that has already happened (a device that runs synchronously).
pub struct Downloaded(pub Vec<u8>);

impl PendingDownload for Downloaded {
    fn wait(self: Box<Self>) -> Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// A typed allocation that frees itself.
pub struct DeviceVec<'d> {
    dev: &'d dyn DeviceApi,
    pub buf: Buffer,
}

impl<'d> DeviceVec<'d> {
    pub fn from_slice<T: bytemuck::Pod>(dev: &'d dyn DeviceApi, v: &[T]) -> Result<Self> {
        let bytes: &[u8] = bytemuck::cast_slice(v);
        let buf = dev.alloc_for_upload(bytes.len())?;
        dev.upload(&buf, bytes)?;
        Ok(DeviceVec { dev, buf })
    }

    /// `n` f32 values set to NaN, so a value a kernel fails to write shows.
    pub fn poisoned_f32(dev: &'d dyn DeviceApi, n: usize) -> Result<Self> {
        Self::from_slice(dev, &vec![f32::NAN; n])
    }

    pub fn to_vec<T: bytemuck::Pod>(&self) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); self.buf.bytes / std::mem::size_of::<T>().max(1)];
        self.dev.download(&self.buf, bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }

    pub fn arg(&self) -> Arg {
        Arg::Buf(self.buf.id)
    }
}

impl Drop for DeviceVec<'_> {
    fn drop(&mut self) {
        self.dev.free(&self.buf);
    }
}

/// Device memory allocated through the recorder, in bytes (the device's
/// own scratch, such as cuBLASLt's workspace, is not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    pub live: usize,
    pub peak: usize,
}

/// What a recorded step holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphCounts {
    pub launches: usize,
    pub gemms: usize,
    pub allocs: usize,
    pub uploads: usize,
    pub downloads: usize,
    /// Bytes the graph's memory holds.
    pub arena_bytes: usize,
}
