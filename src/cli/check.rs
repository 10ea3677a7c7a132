//! `nemesis check`: every kernel against the CPU reference.

use clap::{Args, ValueEnum};

use crate::backend::cuda::CudaDevice;
use crate::check::{self, CheckRow};
use crate::progress::Progress;
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

fn print_row(r: &CheckRow) {
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
        if r.ok() { "ok" } else { "MISS" }
    );
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
    let mixed_dev = open(a.device, true)?;
    println!(
        "kernels on the {} against the CPU reference (seed {seed}); limits: relative error, \
         fp32 1e-4, bf16 2e-2 (— : shown, judged in the all-gradients row)",
        dev.name()
    );
    println!("{:<24} {:<44} {:>12} {:>9}  ", "kernel", "case", "rel. error", "limit");
    // Each stage's rows are printed as it ends, under a progress bar (or a
    // line every few seconds) that says which stage runs and the ETA.
    type Stage<'a> = (String, Box<dyn Fn() -> Result<Vec<CheckRow>> + 'a>);
    let mut stages: Vec<Stage> = vec![
        ("every kernel".into(), Box::new(|| check::run(&dev, seed))),
        (
            "flash attention, fp32".into(),
            Box::new(|| check::attention_kernels(&dev, AttentionKernel::FlashF32, &check::attention_cases(), seed)),
        ),
        (
            "flash attention, bf16".into(),
            Box::new(|| {
                check::attention_kernels(&mixed_dev, AttentionKernel::FlashBf16, &check::attention_cases(), seed)
            }),
        ),
    ];
    for mixed in [false, true] {
        let (d, tag) = if mixed { (&mixed_dev, "bf16") } else { (&dev, "fp32") };
        let label = move |mut r: CheckRow| {
            r.case = format!("{tag} {}", r.case);
            r
        };
        stages.push((
            format!("step graphs, {tag}"),
            Box::new(move || Ok(check::step_graphs(d, a.batch, seed)?.into_iter().map(label).collect())),
        ));
        for p in a.steps.iter().filter(|p| p.as_str() != "none") {
            stages.push((
                format!("{p} training step, {tag}"),
                Box::new(move || {
                    Ok(check::training_step(d, p, a.batch, seed)?
                        .into_iter()
                        .map(label)
                        .collect())
                }),
            ));
        }
    }
    let mut progress = Progress::new("check", stages.len() as u64);
    let mut rows = Vec::new();
    let mut misses = 0;
    for (k, (name, stage)) in stages.iter().enumerate() {
        progress.set(k as u64, name);
        let done = stage()?;
        progress.suspend(|| {
            for r in &done {
                misses += usize::from(!r.ok());
                print_row(r);
            }
        });
        rows.extend(done);
    }
    progress.set(stages.len() as u64, "done");
    progress.finish();
    println!("{} passed, {misses} failed", rows.len() - misses);
    if misses > 0 {
        return Err(Error::invalid(
            "check",
            format!("{misses} kernel case(s) outside the limit"),
        ));
    }
    Ok(())
}
