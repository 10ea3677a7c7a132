//! `--device cpu|auto|cuda`.

use clap::ValueEnum;

use crate::backend::cuda_probe::probe;
use crate::error::{Error, Result};
use crate::tensor::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum DeviceArg {
    /// The CPU reference backend.
    Cpu,
    /// CUDA when a usable GPU and the CUDA backend are there, else the CPU.
    #[default]
    Auto,
    /// CUDA, or an error.
    Cuda,
}

/// Resolves the flag to a device, saying in one line what `auto` picked.
pub fn select(arg: DeviceArg) -> Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Auto => {
            eprintln!("device: cpu ({})", probe().describe());
            Ok(Device::Cpu)
        }
        DeviceArg::Cuda => Err(Error::invalid(
            "--device cuda",
            format!(
                "CUDA is not available: {}; use --device cpu or --device auto",
                probe().describe()
            ),
        )),
    }
}
