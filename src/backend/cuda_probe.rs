//! Whether this machine can run CUDA: the driver library is loaded at run
//! time, so a machine without it gets a sentence, never a crash.

use std::ffi::c_int;

use libloading::Library;

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CudaProbe {
    /// No driver library could be loaded (the loader's message).
    NoDriver(String),
    /// The driver loaded but `cuInit` or the device count failed (its code).
    DriverError(String),
    /// The driver works and sees this many GPUs.
    Gpus(i32),
}

type InitFn = unsafe extern "C" fn(u32) -> c_int;
type CountFn = unsafe extern "C" fn(*mut c_int) -> c_int;

pub fn probe() -> CudaProbe {
    probe_library("libcuda.so.1")
}

pub fn probe_library(name: &str) -> CudaProbe {
    // SAFETY: loading the driver runs only its initialisers.
    let lib = match unsafe { Library::new(name) } {
        Ok(l) => l,
        Err(e) => return CudaProbe::NoDriver(format!("{name}: {e}")),
    };
    // SAFETY: cuInit and cuDeviceGetCount have these C signatures in every driver.
    unsafe {
        let (Ok(init), Ok(count)) = (
            lib.get::<InitFn>(b"cuInit\0"),
            lib.get::<CountFn>(b"cuDeviceGetCount\0"),
        ) else {
            return CudaProbe::DriverError(format!("{name} lacks cuInit or cuDeviceGetCount"));
        };
        let code = init(0);
        if code != 0 {
            return CudaProbe::DriverError(format!("cuInit returned error {code}"));
        }
        let mut n: c_int = 0;
        let code = count(&mut n);
        if code != 0 {
            return CudaProbe::DriverError(format!("cuDeviceGetCount returned error {code}"));
        }
        CudaProbe::Gpus(n)
    }
}

impl CudaProbe {
    /// One line for `--device` messages.
    pub fn describe(&self) -> String {
        match self {
            CudaProbe::NoDriver(why) => format!("no CUDA driver on this machine ({why})"),
            CudaProbe::DriverError(why) => format!("the CUDA driver is present but unusable ({why})"),
            CudaProbe::Gpus(0) => "the CUDA driver sees no GPU".to_string(),
            CudaProbe::Gpus(n) => {
                format!("{n} GPU(s) found, but this build's CUDA launch path is not finished (issue 6)")
            }
        }
    }
}
