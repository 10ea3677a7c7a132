//! `--device cpu|auto|cuda|emu`.

use std::sync::Arc;

use clap::ValueEnum;

use crate::backend::cuda::CudaDevice;
use crate::backend::cuda_probe::{probe, CudaProbe};
use crate::backend::emu::EmuDevice;
use crate::device::SharedDevice;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum DeviceArg {
    /// The CPU reference backend.
    Cpu,
    /// CUDA when a usable GPU and the CUDA libraries are there, else the CPU.
    #[default]
    Auto,
    /// CUDA, or an error.
    Cuda,
    /// The CUDA kernels compiled for the host (slow; for checking the GPU
    /// code path on a machine without a GPU).
    Emu,
}

/// Resolves the flag: `None` is the CPU backend. `auto` says in one line what
/// it picked and why. `bf16` asks for mixed-precision GEMMs (device only).
/// The device of `--device`; a CUDA device is GPU `gpu` (a rank's).
pub fn select(arg: DeviceArg, bf16: bool, gpu: usize) -> Result<Option<SharedDevice>> {
    let dev: Option<SharedDevice> = match arg {
        DeviceArg::Cpu => None,
        DeviceArg::Emu => Some(Arc::new(if bf16 { EmuDevice::mixed() } else { EmuDevice::new() })),
        DeviceArg::Cuda => Some(Arc::new(CudaDevice::open(gpu)?.with_mixed_precision(bf16))),
        DeviceArg::Auto => match probe() {
            CudaProbe::Gpus(n) if n > 0 => match CudaDevice::open(gpu) {
                Ok(d) => Some(Arc::new(d.with_mixed_precision(bf16))),
                Err(e) => {
                    eprintln!("device: cpu (a GPU is present but unusable: {e})");
                    None
                }
            },
            other => {
                eprintln!("device: cpu ({})", other.describe());
                None
            }
        },
    };
    match &dev {
        Some(d) => eprintln!(
            "device: {} — {}{}",
            d.kind(),
            d.name(),
            if bf16 { ", bf16 GEMM operands" } else { ", fp32" }
        ),
        None if bf16 => {
            return Err(Error::invalid(
                "--bf16",
                "mixed precision runs on a device; use --device cuda (or emu to check it)",
            ))
        }
        None => {}
    }
    Ok(dev)
}
