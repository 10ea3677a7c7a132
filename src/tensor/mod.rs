//! Tensors: a shape, a dtype and storage owned by a backend. Tensors are
//! immutable and cheap to clone (the storage is shared); every op makes a new
//! one. All tensors are contiguous and row-major; strided access (the depth
//! stream of a MATB) is expressed by the op that needs it, not by views.

mod dtype;
mod shape;
mod storage;

use std::sync::Arc;

pub use crate::device::{Device, SeqLayout};
pub use dtype::{DType, Element};
pub use shape::Shape;
pub use storage::{CpuStorage, DeviceStorage, Readers, Storage};

use crate::device::SharedDevice;

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Tensor {
    shape: Shape,
    storage: Arc<Storage>,
}

/// Runs `$body` with `$T` bound to the Rust type of `$dtype`.
macro_rules! with_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::tensor::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::tensor::DType::F64 => {
                type $T = f64;
                $body
            }
        }
    };
}
pub(crate) use with_dtype;

impl Tensor {
    pub fn from_vec<T: Element>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(Error::bad_shape(
                "Tensor::from_vec",
                &shape,
                format!("{} elements given for {} places", data.len(), shape.numel()),
            ));
        }
        Ok(Tensor {
            shape,
            storage: Arc::new(Storage::Cpu(T::into_cpu_storage(data))),
        })
    }

    pub fn from_f64_slice(data: &[f64], shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        with_dtype!(dtype, T => Tensor::from_vec(data.iter().map(|&v| T::from_f64(v)).collect::<Vec<T>>(), shape))
    }

    pub fn full(value: f64, shape: impl Into<Shape>, dtype: DType) -> Tensor {
        let shape = shape.into();
        let n = shape.numel();
        let storage = with_dtype!(dtype, T => T::into_cpu_storage(vec![T::from_f64(value); n]));
        Tensor {
            shape,
            storage: Arc::new(Storage::Cpu(storage)),
        }
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Tensor {
        Tensor::full(0.0, shape, dtype)
    }

    pub fn scalar(value: f64, dtype: DType) -> Tensor {
        Tensor::full(value, Shape::scalar(), dtype)
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(_)) | Storage::Device(_) => DType::F32,
            Storage::Cpu(CpuStorage::F64(_)) => DType::F64,
        }
    }

    pub fn device(&self) -> Device {
        self.storage.device()
    }

    /// The elements as a host slice; an error if the dtype differs or the
    /// tensor lives on another device.
    pub fn cpu_slice<T: Element>(&self) -> Result<&[T]> {
        let cpu = match &*self.storage {
            Storage::Cpu(cpu) => cpu,
            Storage::Device(d) => {
                return Err(Error::invalid(
                    "Tensor::cpu_slice",
                    format!(
                        "a {} tensor on {} reached a CPU-only path (an op without a device kernel, \
                         or tensors of two devices mixed)",
                        self.shape,
                        d.dev.kind()
                    ),
                ))
            }
        };
        T::cpu_slice(cpu).ok_or(Error::dtype_mismatch("Tensor::cpu_slice", self.dtype(), T::DTYPE))
    }

    /// The elements as a mutable host slice when this tensor alone holds
    /// its storage (no clone shares it, so no one else can see the change);
    /// `None` when it is shared, on a device or of another dtype.
    pub fn cpu_slice_mut_unique<T: Element>(&mut self) -> Option<&mut [T]> {
        match Arc::get_mut(&mut self.storage)? {
            Storage::Cpu(cpu) => T::cpu_slice_mut(cpu),
            Storage::Device(_) => None,
        }
    }

    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        Ok(self.cpu_slice::<T>()?.to_vec())
    }

    /// Every element widened to f64, whatever the dtype; a device tensor is
    /// downloaded (a failed download is an error, never made-up values).
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        Ok(match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => v.iter().map(|&x| x as f64).collect(),
            Storage::Cpu(CpuStorage::F64(v)) => v.clone(),
            Storage::Device(d) => download(d)?.iter().map(|&x| x as f64).collect(),
        })
    }

    /// The device that holds the elements, when it is not the host.
    pub fn device_storage(&self) -> Option<&DeviceStorage> {
        match &*self.storage {
            Storage::Device(d) => Some(d),
            Storage::Cpu(_) => None,
        }
    }

    /// Whether another tensor shares these elements (then an in-place
    /// device update must work on a copy).
    pub fn is_shared(&self) -> bool {
        Arc::strong_count(&self.storage) > 1
    }

    /// The device holding the elements, `None` on the host.
    pub fn shared_device(&self) -> Option<SharedDevice> {
        self.device_storage().map(|d| d.dev.clone())
    }

    /// Wraps `len` f32 values already in a device buffer.
    pub(crate) fn from_device(storage: DeviceStorage, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if storage.len != shape.numel() {
            return Err(Error::bad_shape(
                "Tensor::from_device",
                &shape,
                format!("{} device values for {} places", storage.len, shape.numel()),
            ));
        }
        Ok(Tensor {
            shape,
            storage: Arc::new(Storage::Device(storage)),
        })
    }

    /// A copy on `dev` (f32; an f64 tensor is narrowed, device kernels are f32).
    pub fn to_device(&self, dev: &SharedDevice) -> Result<Tensor> {
        if let Some(d) = self.device_storage() {
            if Arc::ptr_eq(&d.dev, dev) {
                return Ok(self.clone());
            }
        }
        let host: Vec<f32> = match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => v.clone(),
            Storage::Cpu(CpuStorage::F64(v)) => v.iter().map(|&x| x as f32).collect(),
            Storage::Device(d) => download(d)?,
        };
        let buf = dev.alloc_for_upload(host.len() * 4)?;
        dev.upload(&buf, bytemuck::cast_slice(&host))?;
        let storage = DeviceStorage::new(dev.clone(), buf, host.len());
        Tensor::from_device(storage, self.shape.clone())
    }

    /// A host copy (f32 for a device tensor); a host tensor is returned as is.
    pub fn to_cpu(&self) -> Result<Tensor> {
        match &*self.storage {
            Storage::Cpu(_) => Ok(self.clone()),
            Storage::Device(d) => Tensor::from_vec(download(d)?, self.shape.clone()),
        }
    }

    /// The value of a one-element tensor.
    pub fn scalar_value(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::bad_shape(
                "Tensor::scalar_value",
                &self.shape,
                "needs exactly one element",
            ));
        }
        Ok(self.to_f64_vec()?[0])
    }

    /// A host copy in `dtype` (the tensor itself when it is one already).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let v = self.to_f64_vec()?;
        let storage = with_dtype!(dtype, T => T::into_cpu_storage(v.iter().map(|&x| T::from_f64(x)).collect()));
        Ok(Tensor {
            shape: self.shape.clone(),
            storage: Arc::new(Storage::Cpu(storage)),
        })
    }

    /// The same elements under another shape of equal size (no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(Error::shape_mismatch(
                "reshape",
                &self.shape,
                &shape,
                "element counts differ",
            ));
        }
        Ok(Tensor {
            shape,
            storage: self.storage.clone(),
        })
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {}, {:?})", self.dtype(), self.shape, self.device())
    }
}

/// A tensor's values on their way to the host (`Tensor::read_later`).
pub enum Readback {
    Ready(Vec<f64>),
    /// f32 values, or (`bf16`) the bf16 bits of values stored as bf16 alone.
    Pending {
        download: Box<dyn crate::device::PendingDownload>,
        bf16: bool,
    },
}

impl Readback {
    /// The values, waiting for the device when they come from one.
    pub fn wait(self) -> Result<Vec<f64>> {
        match self {
            Readback::Ready(v) => Ok(v),
            Readback::Pending { download, bf16 } => {
                Ok(widen(&download.wait()?, bf16).into_iter().map(f64::from).collect())
            }
        }
    }
}

/// Downloaded bytes as f32: f32 values as they are, bf16 bits widened
/// (exactly) on the host.
fn widen(bytes: &[u8], bf16: bool) -> Vec<f32> {
    if bf16 {
        bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_ne_bytes([c[0], c[1]])).to_f32())
            .collect()
    } else {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// The buffer a download of `d` reads, and whether it holds bf16 bits (a
/// tensor stored as bf16 alone is brought back as it is and widened on the
/// host: no kernel runs for a read).
fn readable(d: &DeviceStorage) -> Result<(&crate::device::Buffer, bool)> {
    match (d.f32.get(), d.bf16.get()) {
        (Some(b), _) => Ok((b, false)),
        (None, Some(b)) => Ok((b, true)),
        (None, None) => Err(Error::invalid("download", "a device tensor without values")),
    }
}

impl Tensor {
    /// Starts bringing the values to the host without waiting for the
    /// device: the copy is queued behind the work that makes them.
    pub fn read_later(&self) -> Result<Readback> {
        match self.device_storage() {
            Some(d) => {
                let (buf, bf16) = readable(d)?;
                let bytes = d.len * if bf16 { 2 } else { 4 };
                Ok(Readback::Pending {
                    download: d.dev.download_later(buf, bytes)?,
                    bf16,
                })
            }
            None => Ok(Readback::Ready(self.to_f64_vec()?)),
        }
    }
}

fn download(d: &DeviceStorage) -> Result<Vec<f32>> {
    let (buf, bf16) = readable(d)?;
    let mut bytes = vec![0u8; d.len * if bf16 { 2 } else { 4 }];
    d.dev.download(buf, &mut bytes)?;
    Ok(widen(&bytes, bf16))
}
