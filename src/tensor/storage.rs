use crate::device::{Buffer, Device, SharedDevice};

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

/// `len` values on a device, freed when the last tensor sharing them drops:
/// as f32, as f32 with a bf16 copy, or (mixed precision, an activation only
/// GEMMs read) as bf16 alone.
pub struct DeviceStorage {
    pub(crate) dev: SharedDevice,
    pub(crate) len: usize,
    /// The values as f32. A tensor stored as bf16 alone has none until
    /// something other than a GEMM asks for them (`gpu::values` widens the
    /// copy then, once).
    pub(crate) f32: std::sync::OnceLock<Buffer>,
    /// The same values rounded to bf16 (nearest even), for mixed-precision
    /// GEMMs: made by the first GEMM that reads them (or written by the
    /// kernel that made the values), then reused while the values live, so
    /// an activation or weight read by a forward GEMM and again by its
    /// backward is rounded once. The one in-place update, AdamW's, rewrites it.
    pub(crate) bf16: std::sync::OnceLock<Buffer>,
}

impl DeviceStorage {
    /// f32 values in `buf`.
    pub(crate) fn new(dev: SharedDevice, buf: Buffer, len: usize) -> Self {
        DeviceStorage {
            dev,
            len,
            f32: std::sync::OnceLock::from(buf),
            bf16: std::sync::OnceLock::new(),
        }
    }

    /// Values held as bf16 bits in `buf` alone.
    pub(crate) fn bf16_only(dev: SharedDevice, buf: Buffer, len: usize) -> Self {
        DeviceStorage {
            dev,
            len,
            f32: std::sync::OnceLock::new(),
            bf16: std::sync::OnceLock::from(buf),
        }
    }

    /// Whether the values are held as bf16 alone (no f32 made yet).
    pub fn is_bf16_only(&self) -> bool {
        self.f32.get().is_none()
    }

    /// The bf16 buffer of values held as bf16 alone (none when f32 is there).
    pub(crate) fn bf16_alone(&self) -> Option<&Buffer> {
        self.f32.get().is_none().then(|| self.bf16.get()).flatten()
    }

    /// Device bytes held: the f32 values and the bf16 copy, where kept.
    pub fn bytes(&self) -> usize {
        self.f32.get().map_or(0, |b| b.bytes) + self.bf16.get().map_or(0, |b| b.bytes)
    }
}

impl std::fmt::Debug for DeviceStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let form = match (self.f32.get().is_some(), self.bf16.get().is_some()) {
            (true, false) => "f32",
            (true, true) => "f32 + bf16",
            _ => "bf16",
        };
        write!(f, "DeviceStorage({} {form} on {})", self.len, self.dev.kind())
    }
}

impl Drop for DeviceStorage {
    fn drop(&mut self) {
        if let Some(b) = self.f32.get() {
            self.dev.free(b);
        }
        if let Some(b) = self.bf16.get() {
            self.dev.free(b);
        }
    }
}

/// Who reads an op's output. In mixed precision an output whose readers
/// all take its bf16 values (mixed-precision GEMMs, the bf16 flash
/// attention kernels) is stored as bf16 alone: the layer norm before the
/// QKV projections, the QKV projections themselves, the attention heads,
/// the FFN's hidden activation, and the gradients those GEMMs take.
/// Anything else (the residual stream, what an f32 kernel reads) keeps f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readers {
    Any,
    Bf16,
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Device(d) => d.dev.kind(),
        }
    }
}
