//! The emulator device: the .cu kernels compiled for the host (see build.rs
//! and kernels/emu/), behind the same `DeviceApi` the CUDA device implements,
//! and held to a GPU's rules where the host would let things pass:
//!
//! - launches: the sm_90 limits (backend/limits.rs), the shared-memory
//!   opt-in, the production geometry the ops ask for; every block's shared
//!   memory starts as garbage (kernels/emu/emu.cpp);
//! - memory: each buffer between guard zones, checked after every launch
//!   and GEMM (memory.rs);
//! - copies: asynchronous, landing only when their event is waited on
//!   (queue.rs);
//! - graph capture: nothing runs, and a copy, a wait or an allocation left
//!   unfreed inside a capture is an error, as in a CUDA stream capture.
//!
//! What it cannot show (speed, the memory model of concurrent blocks, the
//! tensor cores' own rounding) the GPU runs show: docs/DESIGN.md.

mod memory;
mod queue;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use self::memory::{Block, Fill};
pub use self::queue::EmuQueue;
use crate::backend::cpu::gemm::{gemm, MatRef};
use crate::backend::graph::{Op, Recorder};
use crate::backend::limits::{self, OptIns};
use crate::backend::raw::{run_calls, RawDevice};
use crate::backend::staging::{HostBuf, Staging};
use crate::device::{Arg, Buffer, DeviceApi, DeviceSettings, Gemm, HostReduce, Launch, Peers, Reduce};
use crate::error::{Error, Result};

/// Launch geometry as the C++ side reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EmuLaunch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
    /// Run only the blocks at the grid's corners (the dry run).
    pub corners_only: u32,
}

#[allow(clippy::too_many_arguments)]
mod ffi {
    use super::EmuLaunch;
    include!(concat!(env!("OUT_DIR"), "/emu_ffi.rs"));
}

/// What a device has been asked to do, for the dry run's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmuStats {
    pub launches: u64,
    pub gemms: u64,
    /// The largest `int` argument of any launch.
    pub largest_int: i32,
    /// The largest grid of any launch, in blocks.
    pub largest_grid: u64,
    /// The largest allocation, in bytes.
    pub largest_alloc: usize,
}

/// A graph capture in progress: the allocations made inside it, and the
/// first rule it broke.
#[derive(Default)]
struct Capture {
    allocs: Vec<u64>,
    broken: Option<String>,
}

pub struct EmuDevice {
    bf16: bool,
    settings: DeviceSettings,
    /// The paper-size dry run: memory zeroed lazily, only the blocks at
    /// each grid's corners run, GEMMs are checked but not computed.
    dry: bool,
    next: AtomicU64,
    /// Times the host has waited for the device (downloads, event waits,
    /// synchronisations), counted so tests can show a step never does.
    waits: Arc<AtomicU64>,
    /// Kernel runs by name, so tests can show what a step launches (and
    /// that it never widens a bf16-only activation, say).
    runs: Mutex<HashMap<String, u64>>,
    mem: Mutex<HashMap<u64, Block>>,
    /// The step graph: recorded calls, replayed by running them again.
    graph: Mutex<Recorder>,
    queue: Arc<EmuQueue>,
    staging: Staging,
    opt_ins: OptIns,
    /// The device's side of the opt-in: what each kernel has been allowed.
    shared_allowed: Mutex<HashMap<String, u32>>,
    capture: Mutex<Option<Capture>>,
    stats: Mutex<EmuStats>,
    /// The other ranks of a data-parallel run, reached through host copies.
    peers: Mutex<Option<Arc<dyn HostReduce>>>,
}

impl Default for EmuDevice {
    fn default() -> Self {
        Self::with(false, false)
    }
}

impl EmuDevice {
    fn with(bf16: bool, dry: bool) -> Self {
        let waits = Arc::new(AtomicU64::new(0));
        let queue = Arc::new(EmuQueue::new(waits.clone()));
        EmuDevice {
            bf16,
            settings: DeviceSettings::from_env(),
            dry,
            next: AtomicU64::new(0),
            waits,
            runs: Mutex::new(HashMap::new()),
            mem: Mutex::new(HashMap::new()),
            graph: Mutex::new(Recorder::default()),
            staging: Staging::new(queue.clone()),
            queue,
            opt_ins: OptIns::default(),
            shared_allowed: Mutex::new(HashMap::new()),
            capture: Mutex::new(None),
            stats: Mutex::new(EmuStats::default()),
            peers: Mutex::new(None),
        }
    }

    /// An f32 device.
    pub fn new() -> Self {
        Self::default()
    }

    /// A device whose GEMMs round their operands to bf16 (mixed precision).
    pub fn mixed() -> Self {
        Self::with(true, false)
    }

    /// A device for a dry run at sizes the emulator cannot compute: memory
    /// is zeroed lazily, each launch runs only the blocks at its grid's
    /// corners (where the largest indices are) and GEMMs are checked but
    /// not computed; every rule of a launch, copy and buffer still holds.
    pub fn dry_run(bf16: bool) -> Self {
        Self::with(bf16, true)
    }

    /// The same device with other settings (the environment is read only
    /// when a device opens; tests choose theirs here).
    pub fn with_settings(mut self, settings: DeviceSettings) -> Self {
        self.settings = settings;
        self
    }

    /// How many times the host has waited for this device so far.
    pub fn host_waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// How many times `kernel` has run on this device so far (a recorded
    /// step's kernels count at each replay).
    pub fn kernel_runs(&self, kernel: &str) -> u64 {
        self.runs.lock().map_or(0, |r| r.get(kernel).copied().unwrap_or(0))
    }

    /// What this device has been asked to do so far.
    pub fn stats(&self) -> EmuStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    fn note(&self, f: impl FnOnce(&mut EmuStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    /// Runs `f` as a CUDA stream capture would see it: launches and GEMMs
    /// are checked and kept, not run; a copy, a wait or a synchronisation is
    /// an error, and so is an allocation made inside and not freed inside,
    /// or a free of memory from before (the graph would free it at every
    /// replay).
    pub fn capture<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        {
            let mut c = self
                .capture
                .lock()
                .map_err(|_| Error::device("emulator", "capture", "lock poisoned"))?;
            if c.is_some() {
                return Err(Error::device("emulator", "capture", "a capture inside a capture"));
            }
            *c = Some(Capture::default());
        }
        let out = f();
        let capture = self.capture.lock().ok().and_then(|mut c| c.take()).unwrap_or_default();
        let out = out?;
        if let Some(why) = capture.broken {
            return Err(Error::device("emulator", "capture", why));
        }
        if !capture.allocs.is_empty() {
            return Err(Error::device(
                "emulator",
                "capture",
                format!(
                    "{} allocation(s) made inside the capture were not freed inside it",
                    capture.allocs.len()
                ),
            ));
        }
        Ok(out)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<u64, Block>>> {
        self.mem
            .lock()
            .map_err(|_| Error::device("emulator", "memory", "lock poisoned"))
    }

    fn capturing(&self) -> bool {
        self.capture.lock().map(|c| c.is_some()).unwrap_or(false)
    }

    /// An error for `what` when a graph is being captured: in a CUDA stream
    /// capture a copy or a wait would either fail or be frozen into the graph.
    fn not_in_capture(&self, what: &str) -> Result<()> {
        if self.capturing() {
            return Err(Error::device(
                "emulator",
                "capture",
                format!("{what} while a graph is being captured"),
            ));
        }
        Ok(())
    }

    /// After a launch or GEMM: every buffer's guard zones intact (damage
    /// is reported once, then repaired).
    fn check_guards(m: &mut HashMap<u64, Block>, what: &str) -> Result<()> {
        let mut first = None;
        for (id, b) in m.iter_mut() {
            if let Some(at) = b.damage() {
                first.get_or_insert(format!(
                    "{what} wrote outside buffer {id} ({} bytes), at byte {at}",
                    b.bytes()
                ));
                b.repair();
            }
        }
        match first {
            Some(why) => Err(Error::device("emulator", "memory", why)),
            None => Ok(()),
        }
    }
}

fn missing(buf: &Buffer) -> Error {
    missing_id(buf.id)
}

fn missing_id(id: u64) -> Error {
    Error::device(
        "emulator",
        "memory",
        format!("buffer {id} is not allocated on this device"),
    )
}

impl RawDevice for EmuDevice {
    fn name(&self) -> String {
        "emulator (CUDA kernels compiled for the host)".into()
    }

    fn settings(&self) -> &DeviceSettings {
        &self.settings
    }

    fn mixed_precision(&self) -> bool {
        self.bf16
    }

    fn kind(&self) -> crate::device::Device {
        crate::device::Device::Emu
    }

    fn address(&self, buf: &Buffer) -> Result<u64> {
        // Host memory: the block never moves while it is allocated.
        Ok(self.lock()?.get_mut(&buf.id).ok_or_else(|| missing(buf))?.ptr() as u64)
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
            .and_then(|m| m.get(&id).map(Block::bytes))
            .unwrap_or(0)
    }

    fn alloc_raw(&self, bytes: usize) -> Result<Buffer> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let fill = if self.dry { Fill::Lazy } else { Fill::Poison };
        self.note(|s| s.largest_alloc = s.largest_alloc.max(bytes));
        let block = Block::new(bytes, fill).ok_or_else(|| Error::OutOfMemory {
            device: "emulator".into(),
            asked: bytes,
            free: None,
        })?;
        self.lock()?.insert(id, block);
        if let Ok(mut c) = self.capture.lock() {
            if let Some(c) = c.as_mut() {
                c.allocs.push(id);
            }
        }
        Ok(Buffer { id, bytes })
    }

    fn free_raw(&self, buf: &Buffer) {
        if let Ok(mut c) = self.capture.lock() {
            if let Some(c) = c.as_mut() {
                match c.allocs.iter().position(|&id| id == buf.id) {
                    Some(i) => {
                        c.allocs.swap_remove(i);
                    }
                    None => {
                        // Freed inside the graph, it would be freed again at
                        // every replay: refused, and the buffer kept.
                        c.broken
                            .get_or_insert(format!("buffer {} from before the capture was freed inside it", buf.id));
                        return;
                    }
                }
            }
        }
        if let Ok(mut m) = self.mem.lock() {
            m.remove(&buf.id);
        }
    }

    fn copy_to_host(&self, src: &Buffer, dst: &HostBuf, bytes: usize) -> Result<()> {
        self.not_in_capture("a download")?;
        let m = self.lock()?;
        let b = m.get(&src.id).ok_or_else(|| missing(src))?;
        if bytes > b.bytes() {
            return Err(Error::invalid(
                "download",
                format!("a copy of {bytes} bytes out of a buffer of {}", b.bytes()),
            ));
        }
        self.queue.copy_in(dst, b.data()[..bytes].to_vec())
    }

    fn copy_from_host(&self, src: &HostBuf, dst: &Buffer, bytes: usize) -> Result<()> {
        self.not_in_capture("an upload")?;
        let mut m = self.lock()?;
        let b = m.get_mut(&dst.id).ok_or_else(|| missing(dst))?;
        if bytes > b.bytes() {
            return Err(Error::invalid(
                "upload",
                format!("a copy of {bytes} bytes into a buffer of {}", b.bytes()),
            ));
        }
        let data = self.queue.copy_out(src, bytes)?;
        b.data_mut()[..bytes].copy_from_slice(&data);
        Ok(())
    }

    fn raise_shared_limit(&self, kernel: &str, bytes: u32) -> Result<()> {
        if bytes > limits::MAX_SHARED {
            return Err(Error::invalid(
                "launch",
                format!(
                    "`{kernel}` cannot be allowed {bytes} bytes of shared memory (at most {})",
                    limits::MAX_SHARED
                ),
            ));
        }
        self.shared_allowed
            .lock()
            .map_err(|_| Error::device("emulator", "shared memory", "lock poisoned"))?
            .insert(kernel.to_string(), bytes);
        Ok(())
    }

    fn launch_raw(&self, kernel: &str, cfg: &Launch, args: &[Arg]) -> Result<()> {
        let allowed = self
            .shared_allowed
            .lock()
            .ok()
            .and_then(|m| m.get(kernel).copied())
            .unwrap_or(limits::DEFAULT_SHARED);
        limits::check(kernel, cfg, allowed)?;
        let mut m = self.lock()?;
        for a in args {
            if let Arg::Buf(id) = a {
                if !m.contains_key(id) {
                    return Err(missing_id(*id));
                }
            }
        }
        if self.capturing() {
            // Captured, not run: the graph's launch runs it.
            return Ok(());
        }
        if let Ok(mut r) = self.runs.lock() {
            *r.entry(kernel.to_string()).or_default() += 1;
        }
        self.note(|s| {
            s.launches += 1;
            s.largest_grid = s.largest_grid.max(cfg.grid.iter().map(|&g| g as u64).product());
            for a in args {
                if let Arg::I32(v) = a {
                    s.largest_int = s.largest_int.max(*v);
                }
            }
        });
        let cfg = EmuLaunch {
            grid: cfg.grid,
            block: cfg.block,
            shared_bytes: cfg.shared_bytes,
            corners_only: self.dry as u32,
        };
        // SAFETY: the pointers stay valid while the memory lock is held; the
        // launchers size every buffer for the launch they make, as a CUDA
        // caller must, and a write past a buffer lands in its guard zone.
        let mut ptr = |id: u64| -> std::result::Result<*mut u8, String> {
            m.get_mut(&id)
                .map(Block::ptr)
                .ok_or_else(|| format!("buffer {id} is not allocated"))
        };
        unsafe { ffi::launch_by_name(kernel, &cfg, args, &mut ptr) }
            .map_err(|e| Error::device("emulator", format!("kernel `{kernel}`"), e))?;
        Self::check_guards(&mut m, &format!("kernel `{kernel}`"))
    }

    fn gemm_raw(&self, g: &Gemm, a: &Buffer, b: &Buffer, c: &Buffer, bias: Option<&Buffer>) -> Result<()> {
        let mut m = self.lock()?;
        let size = |buf: &Buffer| -> Result<usize> { Ok(m.get(&buf.id).ok_or_else(|| missing(buf))?.bytes()) };
        let input = if g.bf16_inputs { 2 } else { 4 };
        let out = if g.bf16_out { 2 } else { 4 };
        for (buf, n, elem) in [(a, g.m * g.k, input), (b, g.k * g.n, input), (c, g.m * g.n, out)] {
            if size(buf)? < n * elem {
                return Err(Error::invalid(
                    "gemm",
                    format!("a buffer of {} bytes for {n} values", size(buf)?),
                ));
            }
        }
        if let Some(buf) = bias {
            if size(buf)? < g.n * 4 {
                return Err(Error::invalid("gemm", "the bias is shorter than a row of C"));
            }
        }
        if g.bf16_out && g.beta != 0.0 {
            return Err(Error::invalid("gemm", "a bf16 C cannot be accumulated into (beta ≠ 0)"));
        }
        if self.capturing() {
            return Ok(());
        }
        self.note(|s| s.gemms += 1);
        if self.dry {
            return Ok(());
        }
        // Mixed precision as on the GPU: operands rounded to bf16, f32 sums.
        let operand = |buf: &Buffer, n: usize| -> Result<Vec<f32>> {
            let raw = m.get(&buf.id).ok_or_else(|| missing(buf))?.words();
            if g.bf16_inputs {
                let bits = &bytemuck::cast_slice::<u128, u16>(raw)[..n];
                return Ok(bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect());
            }
            let v = &bytemuck::cast_slice::<u128, f32>(raw)[..n];
            Ok(if g.bf16 {
                v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect()
            } else {
                v.to_vec()
            })
        };
        let (av, bv) = (operand(a, g.m * g.k)?, operand(b, g.k * g.n)?);
        let am = if g.trans_a {
            MatRef::rm(&av, g.k, g.m).t()
        } else {
            MatRef::rm(&av, g.m, g.k)
        };
        let bm = if g.trans_b {
            MatRef::rm(&bv, g.n, g.k).t()
        } else {
            MatRef::rm(&bv, g.k, g.n)
        };
        let bias: Option<Vec<f32>> = match bias {
            Some(buf) => {
                let v = bytemuck::cast_slice::<u128, f32>(m.get(&buf.id).ok_or_else(|| missing(buf))?.words());
                Some(v[..g.n].to_vec())
            }
            None => None,
        };
        let finish = |cs: &mut [f32]| {
            gemm(g.alpha, am, bm, g.beta, cs, g.n, 1);
            if let Some(bias) = &bias {
                for row in cs.chunks_mut(g.n.max(1)) {
                    row.iter_mut().zip(bias).for_each(|(c, b)| *c += b);
                }
            }
        };
        let cm = m.get_mut(&c.id).ok_or_else(|| missing(c))?.words_mut();
        if g.bf16_out {
            let mut cs = vec![0f32; g.m * g.n];
            finish(&mut cs);
            let out = &mut bytemuck::cast_slice_mut::<u128, u16>(cm)[..g.m * g.n];
            out.iter_mut()
                .zip(&cs)
                .for_each(|(o, v)| *o = half::bf16::from_f32(*v).to_bits());
        } else {
            finish(&mut bytemuck::cast_slice_mut::<u128, f32>(cm)[..g.m * g.n]);
        }
        Self::check_guards(&mut m, "a GEMM")
    }

    fn synchronize_raw(&self) -> Result<()> {
        self.not_in_capture("a synchronisation")?;
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.queue.synchronize()
    }

    fn build_graph(&self, ops: &[Op]) -> Result<()> {
        // A capture as CUDA makes one: every recorded launch and GEMM is
        // issued (checked, not run), and nothing else may happen meanwhile.
        self.capture(|| run_calls(self, ops, |_| Ok(())))
    }

    fn run_graph(&self, ops: &[Op], _updated: &[usize]) -> Result<()> {
        // Every recorded launch and GEMM in order, with the arguments as the
        // replay left them.
        run_calls(self, ops, |_| Ok(()))
    }

    fn drop_built_graph(&self) {}

    fn join_raw(&self, peers: Peers) -> Result<()> {
        match peers {
            Peers::Host(h) => {
                *self
                    .peers
                    .lock()
                    .map_err(|_| Error::device("emulator", "peers", "lock poisoned"))? = Some(h);
                Ok(())
            }
            Peers::Nccl { .. } => Err(Error::invalid(
                "emu",
                "the emulator's ranks join through host copies over MPI, not NCCL",
            )),
        }
    }

    /// Host copies of the buffers, reduced over the ranks as one message,
    /// then copied back: the orchestration of the GPU's all-reduce with
    /// MPI in place of NCCL (which keeps its own timeout).
    fn all_reduce_raw(&self, bufs: &[(&Buffer, usize)], op: Reduce, _: Option<std::time::Duration>) -> Result<()> {
        let peers = self
            .peers
            .lock()
            .map_err(|_| Error::device("emulator", "peers", "lock poisoned"))?
            .clone();
        let peers = peers.ok_or_else(|| Error::invalid("all-reduce", "the device has not joined other ranks"))?;
        let sizes: Vec<usize> = bufs.iter().map(|(_, n)| n * op.elem_bytes()).collect();
        let mut host = vec![0u8; sizes.iter().sum()];
        let mut at = 0;
        for ((b, _), &n) in bufs.iter().zip(&sizes) {
            DeviceApi::download(self, b, &mut host[at..at + n])?;
            at += n;
        }
        peers.all_reduce_host(&mut host, op)?;
        let mut at = 0;
        for ((b, _), &n) in bufs.iter().zip(&sizes) {
            DeviceApi::upload(self, b, &host[at..at + n])?;
            at += n;
        }
        Ok(())
    }

    /// At once: the emulator has one queue, which runs in order.
    fn all_reduce_start_raw(&self, bufs: &[(&Buffer, usize)], op: Reduce) -> Result<()> {
        self.all_reduce_raw(bufs, op, None)
    }

    fn all_reduce_finish_raw(&self, _: Option<std::time::Duration>) -> Result<()> {
        Ok(())
    }
}
