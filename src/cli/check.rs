//! `nemesis check`: every kernel against the CPU reference.

use clap::{Args, ValueEnum};

use crate::backend::check;
use crate::backend::cuda::CudaDevice;
use crate::backend::device::DeviceApi;
use crate::backend::emu::EmuDevice;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckDevice {
    /// The kernels compiled for the host, run by the emulator.
    Emu,
    /// A real GPU.
    Cuda,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[arg(long, value_enum, default_value_t = CheckDevice::Emu)]
    pub device: CheckDevice,
    /// Seed of the random inputs (default: a new one each run).
    #[arg(long)]
    pub seed: Option<u64>,
}

pub fn run(a: &CheckArgs) -> Result<()> {
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let dev: Box<dyn DeviceApi> = match a.device {
        CheckDevice::Emu => Box::new(EmuDevice::new()),
        CheckDevice::Cuda => Box::new(CudaDevice::open(0)?),
    };
    let rows = check::run(dev.as_ref(), seed)?;
    println!(
        "kernels on the {} against the CPU reference (seed {seed}); limit: fp32 relative error",
        dev.name()
    );
    println!("{:<22} {:<44} {:>12} {:>9}  ", "kernel", "case", "rel. error", "limit");
    let mut misses = 0;
    for r in &rows {
        let ok = r.ok();
        misses += usize::from(!ok);
        println!(
            "{:<22} {:<44} {:>12.3e} {:>9.0e}  {}",
            r.kernel,
            r.case,
            r.rel_err,
            r.limit,
            if ok { "ok" } else { "MISS" }
        );
    }
    println!("{} passed, {misses} failed", rows.len() - misses);
    if misses > 0 {
        return Err(Error::invalid(
            "check",
            format!("{misses} kernel case(s) outside the limit"),
        ));
    }
    Ok(())
}
