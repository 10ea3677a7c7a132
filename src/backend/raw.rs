//! The device below the step-graph recorder: `RawDevice` is what the CUDA
//! device and the emulator each implement (their own allocations, copies,
//! launches and GEMMs), and every `RawDevice` is a `DeviceApi` through the
//! one implementation here, which puts in front of those calls what is the
//! same on every device:
//!
//! - the recorder (backend/graph.rs), which records a step and replays it;
//! - copies through staging buffers and events (backend/staging.rs);
//! - each launch's arguments against the kernel's declared parameters;
//! - the dynamic shared-memory opt-in, raised before a launch that needs
//!   more than the default and never lowered (backend/limits.rs).

use std::sync::Mutex;
use std::time::Duration;

use super::graph::{lock, Flow, Op, Recorder, Replay};
use super::kernels;
use super::limits::OptIns;
use super::staging::{HostBuf, Staging};
use crate::device::{Arg, Buffer, DeviceApi, Gemm, Launch, PendingDownload};
use crate::device::{Device, DeviceSettings, GraphCounts, MemoryUse, Peers, Reduce};
use crate::error::{Error, Result};

/// A device below its recorder: its own calls, and how it builds and runs
/// a graph from recorded calls.
pub trait RawDevice {
    fn name(&self) -> String;
    fn settings(&self) -> &DeviceSettings;
    fn kind(&self) -> Device;
    fn mixed_precision(&self) -> bool;
    fn address(&self, buf: &Buffer) -> Result<u64>;
    fn recorder(&self) -> &Mutex<Recorder>;
    /// The device's staging buffers and the host side of its queue.
    fn staging(&self) -> &Staging;
    /// The shared memory each kernel has been allowed so far.
    fn opt_ins(&self) -> &OptIns;
    /// The size of an allocation, for GEMMs run from a recording (which
    /// keeps buffers by id).
    fn bytes_of(&self, id: u64) -> usize;
    fn alloc_raw(&self, bytes: usize) -> Result<Buffer>;
    fn free_raw(&self, buf: &Buffer);
    /// Queues a copy of the first `bytes` of `src` into `dst` (staging
    /// memory); it lands in the device's time.
    fn copy_to_host(&self, src: &Buffer, dst: &HostBuf, bytes: usize) -> Result<()>;
    /// Queues a copy of the first `bytes` of `src` (staging memory) to `dst`.
    fn copy_from_host(&self, src: &HostBuf, dst: &Buffer, bytes: usize) -> Result<()>;
    /// Lets `kernel` use up to `bytes` of dynamic shared memory.
    fn raise_shared_limit(&self, kernel: &str, bytes: u32) -> Result<()>;
    fn launch_raw(&self, kernel: &str, cfg: &Launch, args: &[Arg]) -> Result<()>;
    fn gemm_raw(&self, g: &Gemm, a: &Buffer, b: &Buffer, c: &Buffer, bias: Option<&Buffer>) -> Result<()>;
    fn synchronize_raw(&self) -> Result<()>;
    /// Builds the device's graph from a finished recording.
    fn build_graph(&self, ops: &[Op]) -> Result<()>;
    /// Runs the built graph, the launches at `updated` with their new
    /// arguments.
    fn run_graph(&self, ops: &[Op], updated: &[usize]) -> Result<()>;
    /// Forgets the built graph (after it has finished running).
    fn drop_built_graph(&self);
    /// Joins the other ranks (`DeviceApi::join`).
    fn join_raw(&self, peers: Peers) -> Result<()>;
    /// `DeviceApi::all_reduce` outside graphs.
    fn all_reduce_raw(&self, bufs: &[(&Buffer, usize)], op: Reduce, timeout: Option<Duration>) -> Result<()>;
    /// `DeviceApi::all_reduce_start` and `all_reduce_finish` outside graphs.
    fn all_reduce_start_raw(&self, bufs: &[(&Buffer, usize)], op: Reduce) -> Result<()>;
    fn all_reduce_finish_raw(&self, timeout: Option<Duration>) -> Result<()>;
    /// Bytes the device could still allocate, when it says.
    fn available_raw(&self) -> Option<u64> {
        None
    }
}

/// A launch as every device makes it: the arguments checked against the
/// kernel's declared parameters, the shared-memory limit raised when the
/// launch needs more, then the device's own launch.
pub fn launch_checked<D: RawDevice + ?Sized>(d: &D, kernel: &str, cfg: &Launch, args: &[Arg]) -> Result<()> {
    kernels::check_args(kernel, args)?;
    d.opt_ins()
        .ensure(kernel, cfg.shared_bytes, |bytes| d.raise_shared_limit(kernel, bytes))?;
    d.launch_raw(kernel, cfg, args)
}

/// Runs the recorded launches and GEMMs of `ops` in order on the device's
/// own calls (nothing else: allocations, uploads and downloads belong to the
/// replay), calling `launched(i)` after the launch at `i`.
pub fn run_calls<D: RawDevice + ?Sized>(
    d: &D,
    ops: &[Op],
    mut launched: impl FnMut(usize) -> Result<()>,
) -> Result<()> {
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Launch { kernel, cfg, args } => {
                launch_checked(d, kernel, cfg, args)?;
                launched(i)?;
            }
            Op::Gemm { g, a, b, c, bias } => {
                let buf = |id: u64| Buffer {
                    id,
                    bytes: d.bytes_of(id),
                };
                let bias = bias.map(buf);
                d.gemm_raw(g, &buf(*a), &buf(*b), &buf(*c), bias.as_ref())?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn alloc_through<D: RawDevice + ?Sized>(d: &D, bytes: usize, for_upload: bool) -> Result<Buffer> {
    let mut r = lock(d.recorder())?;
    if let Some(buf) = r.alloc(bytes, for_upload)? {
        return Ok(buf);
    }
    let buf = d.alloc_raw(bytes)?;
    r.allocated(&buf);
    Ok(buf)
}

/// Queues an upload of `src` into `dst` through the staging buffers.
fn staged_upload<D: RawDevice + ?Sized>(d: &D, dst: &Buffer, src: &[u8]) -> Result<()> {
    if src.len() > dst.bytes {
        return Err(Error::invalid(
            "upload",
            format!("{} bytes into a buffer of {}", src.len(), dst.bytes),
        ));
    }
    d.staging().upload(src, |host| d.copy_from_host(host, dst, src.len()))
}

/// Queues a download of the first `bytes` of `src` through the staging buffers.
fn staged_download<D: RawDevice + ?Sized>(d: &D, src: &Buffer, bytes: usize) -> Result<Box<dyn PendingDownload>> {
    if bytes > src.bytes {
        return Err(Error::invalid(
            "download",
            format!("{bytes} bytes from a buffer of {}", src.bytes),
        ));
    }
    d.staging().download(bytes, |host| d.copy_to_host(src, host, bytes))
}

/// An all-reduce outside any recording (the trainer turns step graphs off
/// for a run of several ranks), on buffers that hold what it covers.
fn check_all_reduce<D: RawDevice + ?Sized>(d: &D, bufs: &[(&Buffer, usize)], op: Reduce) -> Result<()> {
    lock(d.recorder())?.wait("an all-reduce")?;
    for (b, count) in bufs {
        if count * op.elem_bytes() > b.bytes {
            return Err(Error::invalid(
                "all-reduce",
                format!(
                    "{count} elements of {} bytes in a buffer of {}",
                    op.elem_bytes(),
                    b.bytes
                ),
            ));
        }
    }
    Ok(())
}

impl<T: RawDevice> DeviceApi for T {
    fn name(&self) -> String {
        RawDevice::name(self)
    }

    fn settings(&self) -> &DeviceSettings {
        RawDevice::settings(self)
    }

    fn kind(&self) -> Device {
        RawDevice::kind(self)
    }

    fn mixed_precision(&self) -> bool {
        RawDevice::mixed_precision(self)
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        alloc_through(self, bytes, false)
    }

    fn alloc_for_upload(&self, bytes: usize) -> Result<Buffer> {
        alloc_through(self, bytes, true)
    }

    fn free(&self, buf: &Buffer) {
        if let Ok(mut r) = self.recorder().lock() {
            if r.keeps(buf) {
                return;
            }
        }
        self.free_raw(buf)
    }

    fn upload(&self, dst: &Buffer, src: &[u8]) -> Result<()> {
        match lock(self.recorder())?.upload(dst, src)? {
            Flow::Run => staged_upload(self, dst, src),
            Flow::Taken => Ok(()),
        }
    }

    fn download(&self, src: &Buffer, dst: &mut [u8]) -> Result<()> {
        lock(self.recorder())?.wait("a download")?;
        let bytes = staged_download(self, src, dst.len())?.wait()?;
        if bytes.len() != dst.len() {
            return Err(Error::invalid(
                "download",
                format!("{} bytes came back for {} asked", bytes.len(), dst.len()),
            ));
        }
        dst.copy_from_slice(&bytes);
        Ok(())
    }

    fn download_later(&self, src: &Buffer, bytes: usize) -> Result<Box<dyn PendingDownload>> {
        match lock(self.recorder())?.download_later(src, bytes)? {
            Some(p) => Ok(p),
            None => staged_download(self, src, bytes),
        }
    }

    fn launch(&self, kernel: &str, cfg: &Launch, args: &[Arg]) -> Result<()> {
        match lock(self.recorder())?.launch(kernel, cfg, args)? {
            Flow::Run => launch_checked(self, kernel, cfg, args),
            Flow::Taken => Ok(()),
        }
    }

    fn gemm(&self, g: &Gemm, a: &Buffer, b: &Buffer, c: &Buffer, bias: Option<&Buffer>) -> Result<()> {
        match lock(self.recorder())?.gemm(g, a, b, c, bias)? {
            Flow::Run => self.gemm_raw(g, a, b, c, bias),
            Flow::Taken => Ok(()),
        }
    }

    fn synchronize(&self) -> Result<()> {
        lock(self.recorder())?.wait("a synchronisation")?;
        self.synchronize_raw()
    }

    fn address(&self, buf: &Buffer) -> Result<u64> {
        RawDevice::address(self, buf)
    }

    fn join(&self, peers: Peers) -> Result<()> {
        self.join_raw(peers)
    }

    fn all_reduce(&self, bufs: &[(&Buffer, usize)], op: Reduce, timeout: Option<Duration>) -> Result<()> {
        check_all_reduce(self, bufs, op)?;
        self.all_reduce_raw(bufs, op, timeout)
    }

    fn all_reduce_start(&self, bufs: &[(&Buffer, usize)], op: Reduce) -> Result<()> {
        check_all_reduce(self, bufs, op)?;
        self.all_reduce_start_raw(bufs, op)
    }

    fn all_reduce_finish(&self, timeout: Option<Duration>) -> Result<()> {
        lock(self.recorder())?.wait("an all-reduce")?;
        self.all_reduce_finish_raw(timeout)
    }

    fn memory(&self) -> MemoryUse {
        self.recorder().lock().map(|r| r.memory()).unwrap_or_default()
    }

    fn available_memory(&self) -> Option<u64> {
        self.available_raw()
    }

    fn reset_peak(&self) {
        if let Ok(mut r) = self.recorder().lock() {
            r.reset_peak();
        }
    }

    fn graph_record(&self) -> Result<()> {
        lock(self.recorder())?.begin_record()
    }

    fn graph_build(&self) -> Result<GraphCounts> {
        let mut r = lock(self.recorder())?;
        r.end_record()?;
        if let Err(e) = self.build_graph(r.ops()) {
            let ids = r.drop_graph();
            drop(r);
            ids.iter().for_each(|&id| self.free_raw(&Buffer { id, bytes: 0 }));
            return Err(e);
        }
        Ok(r.counts())
    }

    fn graph_replay(&self) -> Result<()> {
        lock(self.recorder())?.begin_replay()
    }

    fn graph_launch(&self) -> Result<()> {
        let mut r = lock(self.recorder())?;
        let replay = r.end_replay()?;
        // Uploads first, in stream order: after the previous step's graph,
        // before this one.
        for (id, bytes) in &replay.uploads {
            let dst = Buffer {
                id: *id,
                bytes: bytes.len(),
            };
            staged_upload(self, &dst, bytes)?;
        }
        self.run_graph(r.ops(), &replay.updated)?;
        for (id, bytes, slot) in &replay.downloads {
            Replay::deliver(slot, staged_download(self, &Buffer { id: *id, bytes: *bytes }, *bytes));
        }
        Ok(())
    }

    fn graph_abandon(&self) {
        if let Ok(mut r) = self.recorder().lock() {
            r.abandon_replay();
        }
    }

    fn graph_drop(&self) {
        self.drop_built_graph();
        let ids = match self.recorder().lock() {
            Ok(mut r) => r.drop_graph(),
            Err(_) => return,
        };
        ids.iter().for_each(|&id| self.free_raw(&Buffer { id, bytes: 0 }));
    }
}
