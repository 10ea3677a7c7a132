use super::storage::CpuStorage;

/// Element types. f32 is the working type; f64 exists on the CPU so that
/// finite-difference gradient checks can reach 1e-6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
}

/// A Rust type that a tensor can hold.
pub trait Element: Copy + Send + Sync + 'static + std::fmt::Debug {
    const DTYPE: DType;
    fn cpu_slice(s: &CpuStorage) -> Option<&[Self]>;
    fn cpu_slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
    fn into_cpu_storage(v: Vec<Self>) -> CpuStorage;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn cpu_slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn cpu_slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn into_cpu_storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn cpu_slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn cpu_slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn into_cpu_storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}
