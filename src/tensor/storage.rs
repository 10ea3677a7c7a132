use crate::backend::device::{Buffer, SharedDevice};

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

#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Device(DeviceStorage),
}

#[derive(Debug, Clone)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// `len` f32 values in a device buffer, freed when the last tensor sharing
/// them drops.
pub struct DeviceStorage {
    pub(crate) dev: SharedDevice,
    pub(crate) buf: Buffer,
    pub(crate) len: usize,
    /// The same values rounded to bf16 (nearest even), for mixed-precision
    /// GEMMs: made by the first GEMM that reads them (or written by the
    /// kernel that made the values), then reused while the values live, so
    /// an activation or weight read by a forward GEMM and again by its
    /// backward is rounded once. The one in-place update, AdamW's, rewrites it.
    pub(crate) bf16: std::sync::OnceLock<Buffer>,
}

impl DeviceStorage {
    pub(crate) fn new(dev: SharedDevice, buf: Buffer, len: usize) -> Self {
        DeviceStorage {
            dev,
            buf,
            len,
            bf16: std::sync::OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for DeviceStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceStorage({} f32 on {})", self.len, self.dev.kind())
    }
}

impl Drop for DeviceStorage {
    fn drop(&mut self) {
        self.dev.free(&self.buf);
        if let Some(b) = self.bf16.get() {
            self.dev.free(b);
        }
    }
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Device(d) => d.dev.kind(),
        }
    }
}
