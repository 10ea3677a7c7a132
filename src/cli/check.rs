//! `nemesis check`: every kernel against the CPU reference.

use clap::{Args, ValueEnum};

use crate::backend::cuda::CudaDevice;
use crate::check;
use std::sync::Arc;

use crate::backend::emu::EmuDevice;
use crate::backend::gpu::AttentionKernel;
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::model::ModelConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckDevice {
    /// The kernels compiled for the host, run by the emulator.
    Emu,
    /// A real GPU.
    Cuda,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Where the kernels run: emu (compiled for the CPU, any machine) or cuda (a GPU).
    #[arg(long, value_enum, default_value_t = CheckDevice::Emu)]
    pub device: CheckDevice,
    /// Seed of the random inputs (default: a new one each run).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Presets whose whole training step (loss and every gradient) is
    /// compared, in fp32 and in mixed precision (bf16 GEMM operands); `none`
    /// for the kernels only.
    #[arg(long, value_delimiter = ',', default_value = "tiny,small")]
    pub steps: Vec<String>,
    /// Batch of the training-step comparison.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
}

fn open(device: CheckDevice, mixed: bool) -> Result<SharedDevice> {
    Ok(match (device, mixed) {
        (CheckDevice::Emu, false) => Arc::new(EmuDevice::new()),
        (CheckDevice::Emu, true) => Arc::new(EmuDevice::mixed()),
        (CheckDevice::Cuda, m) => Arc::new(CudaDevice::open(0)?.with_mixed_precision(m).with_poison(true)),
    })
}

pub fn run(a: &CheckArgs) -> Result<()> {
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    for p in a.steps.iter().filter(|p| p.as_str() != "none") {
        ModelConfig::preset(p)?;
    }
    if a.batch == 0 {
        return Err(Error::invalid("--batch", "must be at least 1"));
    }
    let dev = open(a.device, false)?;
    let mut rows = check::run(&dev, seed)?;
    println!(
        "kernels on the {} against the CPU reference (seed {seed}); limits: relative error, \
         fp32 1e-4, bf16 2e-2 (— : shown, judged in the all-gradients row)",
        dev.name()
    );
    // The flash attention kernels over every head dim, length and layout.
    rows.extend(check::attention_kernels(
        &dev,
        AttentionKernel::FlashF32,
        &check::attention_cases(),
        seed,
    )?);
    let mixed_dev = open(a.device, true)?;
    rows.extend(check::attention_kernels(
        &mixed_dev,
        AttentionKernel::FlashBf16,
        &check::attention_cases(),
        seed,
    )?);
    for mixed in [false, true] {
        let dev = if mixed { mixed_dev.clone() } else { dev.clone() };
        eprintln!("check: step graphs, {}", if mixed { "bf16" } else { "fp32" });
        rows.extend(check::step_graphs(&dev, a.batch, seed)?.into_iter().map(|mut r| {
            r.case = format!("{} {}", if mixed { "bf16" } else { "fp32" }, r.case);
            r
        }));
        for p in a.steps.iter().filter(|p| p.as_str() != "none") {
            eprintln!("check: {p} training step, {}", if mixed { "bf16" } else { "fp32" });
            rows.extend(check::training_step(&dev, p, a.batch, seed)?.into_iter().map(|mut r| {
                r.case = format!("{} {}", if mixed { "bf16" } else { "fp32" }, r.case);
                r
            }));
        }
    }
    println!("{:<24} {:<44} {:>12} {:>9}  ", "kernel", "case", "rel. error", "limit");
    let mut misses = 0;
    for r in &rows {
        let ok = r.ok();
        misses += usize::from(!ok);
        let limit = if r.limit.is_finite() {
            format!("{:.0e}", r.limit)
        } else {
            "—".into()
        };
        println!(
            "{:<24} {:<44} {:>12.3e} {:>9}  {}",
            r.kernel,
            r.case,
            r.rel_err,
            limit,
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
