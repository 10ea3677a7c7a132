//! The emulator device: the .cu kernels compiled for the host (see build.rs
//! and kernels/emu/), behind the same `DeviceApi` the CUDA device implements.
//! Blocks run one after another, the threads of a block as real threads
//! meeting at barriers. Device memory is host memory owned by the device.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::backend::cpu::gemm::{gemm, MatRef};
use crate::backend::device::{Arg, Buffer, Downloaded, Gemm, Launch, PendingDownload};
use crate::backend::graph::{self, Op, RawDevice, Recorder};
use crate::backend::kernels::{RngStreamC, SeqLayoutC};
use crate::error::{Error, Result};

/// Launch geometry as the C++ side reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EmuLaunch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

/// An argument resolved for the C++ side: buffers become raw pointers.
#[derive(Clone, Copy, Debug)]
pub enum RawArg {
    Ptr(*mut u8),
    I32(i32),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
    Rng(RngStreamC),
    Layout(SeqLayoutC),
}

#[allow(clippy::too_many_arguments)]
mod ffi {
    use super::{EmuLaunch, RawArg};
    include!(concat!(env!("OUT_DIR"), "/emu_ffi.rs"));
}

/// Device memory: 16-byte aligned host blocks, by id.
#[derive(Default)]
pub struct EmuDevice {
    bf16: bool,
    next: AtomicU64,
    /// Calls that make the host wait for the device (`download`,
    /// `synchronize`), counted so tests can show a step never does.
    waits: AtomicU64,
    /// Kernel runs by name, so tests can show what a step launches (and
    /// that it never widens a bf16-only activation, say).
    runs: Mutex<HashMap<String, u64>>,
    mem: Mutex<HashMap<u64, Vec<u128>>>,
    /// The step graph: recorded calls, replayed by running them again.
    graph: Mutex<Recorder>,
}

impl EmuDevice {
    /// An f32 device.
    pub fn new() -> Self {
        Self::default()
    }

    /// A device whose GEMMs round their operands to bf16 (mixed precision).
    pub fn mixed() -> Self {
        EmuDevice {
            bf16: true,
            ..Self::default()
        }
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

    fn copy_out(&self, src: &Buffer, dst: &mut [u8]) -> Result<()> {
        let m = self.lock()?;
        let mem = m.get(&src.id).ok_or_else(|| missing(src))?;
        if dst.len() > src.bytes {
            return Err(Error::invalid(
                "download",
                format!("{} bytes from a buffer of {}", dst.len(), src.bytes),
            ));
        }
        dst.copy_from_slice(&bytemuck::cast_slice::<u128, u8>(mem)[..dst.len()]);
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<u64, Vec<u128>>>> {
        self.mem
            .lock()
            .map_err(|_| Error::invalid("emulator", "device memory lock poisoned"))
    }
}

fn missing(buf: &Buffer) -> Error {
    Error::invalid("emulator", format!("buffer {} is not allocated on this device", buf.id))
}

impl RawDevice for EmuDevice {
    fn name(&self) -> String {
        "emulator (CUDA kernels compiled for the host)".into()
    }

    fn mixed_precision(&self) -> bool {
        self.bf16
    }

    fn kind(&self) -> crate::tensor::Device {
        crate::tensor::Device::Emu
    }

    fn address(&self, buf: &Buffer) -> Result<u64> {
        // Host memory: the block never moves while it is allocated.
        Ok(self.lock()?.get(&buf.id).ok_or_else(|| missing(buf))?.as_ptr() as u64)
    }

    fn recorder(&self) -> &Mutex<Recorder> {
        &self.graph
    }

    /// The size of an allocation (its bytes rounded up to 16).
    fn bytes_of(&self, id: u64) -> usize {
        self.mem
            .lock()
            .ok()
            .and_then(|m| m.get(&id).map(|v| v.len() * 16))
            .unwrap_or(0)
    }

    fn alloc_raw(&self, bytes: usize) -> Result<Buffer> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        // Fresh memory is all ones bits (NaN as f32), so a value a kernel
        // fails to write shows up in every comparison.
        self.lock()?.insert(id, vec![u128::MAX; bytes.div_ceil(16)]);
        Ok(Buffer { id, bytes })
    }

    fn free_raw(&self, buf: &Buffer) {
        if let Ok(mut m) = self.mem.lock() {
            m.remove(&buf.id);
        }
    }

    fn upload_raw(&self, dst: &Buffer, src: &[u8]) -> Result<()> {
        let mut m = self.lock()?;
        let mem = m.get_mut(&dst.id).ok_or_else(|| missing(dst))?;
        if src.len() > dst.bytes {
            return Err(Error::invalid(
                "upload",
                format!("{} bytes into a buffer of {}", src.len(), dst.bytes),
            ));
        }
        bytemuck::cast_slice_mut::<u128, u8>(mem)[..src.len()].copy_from_slice(src);
        Ok(())
    }

    fn download_raw(&self, src: &Buffer, dst: &mut [u8]) -> Result<()> {
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.copy_out(src, dst)
    }

    fn download_later_raw(&self, src: &Buffer, bytes: usize) -> Result<Box<dyn PendingDownload>> {
        // Work here is done by the time a call returns, so the copy is
        // made now; the host never waits for queued work.
        let mut out = vec![0u8; bytes];
        self.copy_out(src, &mut out)?;
        Ok(Box::new(Downloaded(out)))
    }

    fn launch_raw(&self, kernel: &str, cfg: &Launch, args: &[Arg]) -> Result<()> {
        if let Ok(mut r) = self.runs.lock() {
            *r.entry(kernel.to_string()).or_default() += 1;
        }
        let mut m = self.lock()?;
        let mut raw = Vec::with_capacity(args.len());
        for a in args {
            raw.push(match *a {
                Arg::Buf(b) => RawArg::Ptr(m.get_mut(&b.id).ok_or_else(|| missing(b))?.as_mut_ptr() as *mut u8),
                Arg::I32(v) => RawArg::I32(v),
                Arg::U32(v) => RawArg::U32(v),
                Arg::U64(v) => RawArg::U64(v),
                Arg::F32(v) => RawArg::F32(v),
                Arg::F64(v) => RawArg::F64(v),
                Arg::Rng(r) => RawArg::Rng(r.into()),
                Arg::Layout(l) => RawArg::Layout(l.into()),
            });
        }
        let cfg = EmuLaunch {
            grid: cfg.grid,
            block: cfg.block,
            shared_bytes: cfg.shared_bytes,
        };
        // SAFETY: the pointers stay valid while the memory lock is held; the
        // launchers size every buffer for the launch they make, as a CUDA
        // caller must.
        unsafe { ffi::launch_by_name(kernel, &cfg, &raw) }.map_err(|e| Error::invalid("emulator launch", e))
    }

    fn gemm_raw(&self, g: &Gemm, a: &Buffer, b: &Buffer, c: &Buffer, bias: Option<&Buffer>) -> Result<()> {
        let mut m = self.lock()?;
        // Mixed precision as on the GPU: operands rounded to bf16, f32 sums.
        let operand = |buf: &Buffer| -> Result<Vec<f32>> {
            let raw = m.get(&buf.id).ok_or_else(|| missing(buf))?;
            if g.bf16_inputs {
                let bits = bytemuck::cast_slice::<u128, u16>(raw);
                return Ok(bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect());
            }
            let v = bytemuck::cast_slice::<u128, f32>(raw);
            Ok(if g.bf16 {
                v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect()
            } else {
                v.to_vec()
            })
        };
        let (av, bv) = (operand(a)?, operand(b)?);
        let need = |buf: &Buffer, n: usize| {
            if buf.bytes < n * 4 {
                Err(Error::invalid(
                    "gemm",
                    format!("a buffer of {} bytes for {n} values", buf.bytes),
                ))
            } else {
                Ok(())
            }
        };
        let elems = |n: usize| if g.bf16_inputs { n.div_ceil(2) } else { n };
        need(a, elems(g.m * g.k))?;
        need(b, elems(g.k * g.n))?;
        if g.bf16_out && g.beta != 0.0 {
            return Err(Error::invalid("gemm", "a bf16 C cannot be accumulated into (beta ≠ 0)"));
        }
        need(c, if g.bf16_out { (g.m * g.n).div_ceil(2) } else { g.m * g.n })?;
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
                need(buf, g.n)?;
                let v = bytemuck::cast_slice::<u128, f32>(m.get(&buf.id).ok_or_else(|| missing(buf))?);
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
        let cm = m.get_mut(&c.id).ok_or_else(|| missing(c))?;
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
        Ok(())
    }

    fn synchronize_raw(&self) -> Result<()> {
        self.waits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn build_graph(&self, _ops: &[Op]) -> Result<()> {
        // The recorded list is the emulator's graph.
        Ok(())
    }

    fn run_graph(&self, ops: &[Op], _updated: &[usize]) -> Result<()> {
        // Every recorded launch and GEMM in order, with the arguments as the
        // replay left them.
        graph::run_calls(self, ops, |_| Ok(()))
    }

    fn drop_built_graph(&self) {}
}
