/// Where a tensor's elements live. Only the CPU exists today; the CUDA and
/// emulated-CUDA backends add their own variants here, so nothing outside the
/// backends touches raw memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
}

#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
}

#[derive(Debug, Clone)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
        }
    }
}
