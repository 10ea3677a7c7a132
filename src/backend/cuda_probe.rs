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

/// The loader's reason, naming the library once (dlopen's message already
/// starts with it on Linux).
fn load_error(name: &str, e: &libloading::Error) -> String {
    let why = e.to_string();
    if why.contains(name) {
        why
    } else {
        format!("{name}: {why}")
    }
}

pub fn probe() -> CudaProbe {
    probe_library("libcuda.so.1")
}

pub fn probe_library(name: &str) -> CudaProbe {
    // SAFETY: loading the driver runs only its initialisers.
    let lib = match unsafe { Library::new(name) } {
        Ok(l) => l,
        Err(e) => return CudaProbe::NoDriver(load_error(name, &e)),
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

type VersionFn = unsafe extern "C" fn(*mut c_int) -> c_int;

/// The driver's CUDA version (`cuDriverGetVersion`: 13000 for 13.0) and
/// which of `symbols` the driver library lacks, so a device is opened only
/// where every driver call it makes exists (cudarc panics on a missing
/// symbol at its first use).
pub fn driver_api(symbols: &[&str]) -> Result<(i32, Vec<String>), String> {
    let name = "libcuda.so.1";
    // SAFETY: loading the driver runs only its initialisers.
    let lib = unsafe { Library::new(name) }.map_err(|e| load_error(name, &e))?;
    let mut version: c_int = 0;
    // SAFETY: cuDriverGetVersion has this C signature in every driver.
    unsafe {
        let f = lib
            .get::<VersionFn>(b"cuDriverGetVersion\0")
            .map_err(|e| format!("{name} lacks cuDriverGetVersion: {e}"))?;
        let code = f(&mut version);
        if code != 0 {
            return Err(format!("cuDriverGetVersion returned error {code}"));
        }
    }
    let missing = symbols
        .iter()
        .filter(|s| {
            let mut z = s.as_bytes().to_vec();
            z.push(0);
            // SAFETY: only looks the symbol up; nothing is called.
            unsafe { lib.get::<*const ()>(&z) }.is_err()
        })
        .map(|s| s.to_string())
        .collect();
    Ok((version, missing))
}

impl CudaProbe {
    /// One line for `--device` messages.
    pub fn describe(&self) -> String {
        match self {
            CudaProbe::NoDriver(why) => format!("no CUDA driver on this machine ({why})"),
            CudaProbe::DriverError(why) => format!("the CUDA driver is present but unusable ({why})"),
            CudaProbe::Gpus(0) => "the CUDA driver sees no GPU".to_string(),
            CudaProbe::Gpus(n) => format!("{n} GPU(s) found"),
        }
    }
}
