//! `nemesis pretrain`: the recipe of MODEL.md §11 from the command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;

use super::device::{select, DeviceArg};
use super::prepare::prepare_dataset;
use super::progress::Progress;
use super::synth::{data_home, default_cache};
use crate::data::{CacheManifest, DatasetIndex, MANIFEST};
use crate::error::{Error, Result};
use crate::train::{run, run_cache, LrSchedule, Observer, RunOptions, Start, StepMetrics, TrainConfig};

/// Steps of the built-in default run: a few minutes of the `small` preset on 2 cores.
pub const DEFAULT_STEPS: u64 = 600;

#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// Model and recipe preset: paper, small or tiny (default: small).
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A run configuration, JSON or TOML: `preset`, `model` overrides, recipe keys.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Training data: a cache folder from `nemesis prepare`, a dataset index
    /// JSON, or a folder of NIfTI volumes (prepared once into a cache).
    /// Default: the built-in synthetic phantoms.
    #[arg(long, value_name = "DIR|INDEX.json")]
    pub data: Option<PathBuf>,
    /// The run folder (default: runs/pretrain-N, the next free N).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue a run exactly: its folder, or one of its checkpoints.
    #[arg(long, value_name = "RUN_DIR|CHECKPOINT", conflicts_with_all = ["init", "preset", "config"])]
    pub resume: Option<PathBuf>,
    /// Start from these weights (e.g. a converted official checkpoint).
    #[arg(long, value_name = "W.safetensors")]
    pub init: Option<PathBuf>,
    /// Optimizer steps in all (overrides epochs).
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long)]
    pub epochs: Option<u64>,
    #[arg(long)]
    pub batch: Option<usize>,
    /// Micro-batches whose gradients add up to one optimizer step.
    #[arg(long)]
    pub accum: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub min_lr: Option<f64>,
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    #[arg(long, value_enum)]
    pub lr_schedule: Option<LrSchedule>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub clip: Option<f64>,
    /// Noise σ values drawn per batch, e.g. 0,0.01,0.03,0.05.
    #[arg(long, value_delimiter = ',')]
    pub noise_levels: Option<Vec<f64>>,
    #[arg(long)]
    pub dropout: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub val_every: Option<u64>,
    #[arg(long)]
    pub val_superpatches: Option<usize>,
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Without a terminal, a progress line every this many steps.
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Stop with a checkpoint once this many steps are done (split a long run).
    #[arg(long, value_name = "STEP")]
    pub stop_at: Option<u64>,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Mixed precision on a device: bf16 GEMM operands, f32 accumulation,
    /// f32 weights and optimizer state.
    #[arg(long)]
    pub bf16: bool,
    /// On a device, run every step call by call instead of replaying a
    /// recorded step graph (one launch a step) from the third step on.
    #[arg(long)]
    pub no_graphs: bool,
}

impl PretrainArgs {
    fn config(&self) -> Result<TrainConfig> {
        let mut c = match (&self.config, &self.preset) {
            (Some(p), _) => TrainConfig::from_file(p)?,
            (None, Some(name)) => TrainConfig::with_preset(name)?,
            (None, None) => {
                let mut c = TrainConfig::with_preset("small")?;
                c.steps = Some(DEFAULT_STEPS);
                c.val_every = 50;
                c
            }
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { c.$f = v.clone(); } )* };
        }
        set!(
            epochs,
            batch,
            accum,
            lr,
            min_lr,
            warmup_epochs,
            lr_schedule,
            weight_decay,
            clip,
            noise_levels,
            seed
        );
        set!(val_every, val_superpatches, keep_last, log_every);
        if self.steps.is_some() {
            c.steps = self.steps;
        }
        if let Some(p) = self.dropout {
            c.model.dropout = p;
        }
        c.validate()?;
        Ok(c)
    }
}

/// A cache for `--data`: used as is when it has a manifest, else prepared
/// once into the data home (keyed by the source path).
fn cache_for(data: &Path) -> Result<PathBuf> {
    if data.join(MANIFEST).is_file() {
        return Ok(data.to_path_buf());
    }
    let index = if data.is_dir() {
        DatasetIndex::from_dir(data)?
    } else {
        DatasetIndex::from_json(data)?
    };
    let abs = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    let cache = data_home()
        .join("caches")
        .join(format!("{:08x}", crc32fast::hash(abs.to_string_lossy().as_bytes())));
    eprintln!(
        "preparing {} into {} (once; finished volumes are kept)",
        data.display(),
        cache.display()
    );
    let s = prepare_dataset(&index, &cache, rayon::current_num_threads(), false)?;
    for f in &s.manifest.failures {
        eprintln!("skipped: {}", f.error);
    }
    if s.manifest.entries.is_empty() {
        return Err(Error::invalid("--data", "no volume could be prepared"));
    }
    CacheManifest::load(&cache)?;
    Ok(cache)
}

fn next_run_dir() -> PathBuf {
    (1..)
        .map(|n| PathBuf::from(format!("runs/pretrain-{n}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| PathBuf::from("runs/pretrain"))
}

/// An indicatif bar on a terminal; otherwise a plain line every `log_every` steps.
struct Bar {
    progress: Option<Progress>,
    terminal: bool,
    log_every: u64,
}

impl Observer for Bar {
    fn step(&mut self, step: u64, total: u64, m: &StepMetrics) {
        let line = format!(
            "loss {:.5} PSNR {:.2} dB lr {:.2e} |g| {:.3} σ {} {:.1} superpatches/s",
            m.loss, m.psnr, m.lr, m.grad_norm, m.sigma, m.superpatches_per_s
        );
        if self.terminal {
            self.progress
                .get_or_insert_with(|| Progress::new("pretrain", total))
                .set(step, &line);
        } else if step % self.log_every.max(1) == 0 || step == total {
            eprintln!("step {step}/{total}: {line}");
        }
    }

    fn message(&mut self, line: &str) {
        match &self.progress {
            Some(p) => p.println(line),
            None => eprintln!("{line}"),
        }
    }
}

pub fn run_cli(a: &PretrainArgs) -> Result<()> {
    let device = select(a.device, a.bf16)?;
    let start = match (&a.resume, &a.init) {
        (Some(r), _) => Start::Resume(r.clone()),
        (None, Some(w)) => Start::Init(w.clone()),
        (None, None) => Start::Fresh,
    };
    let config = if a.resume.is_some() {
        TrainConfig {
            steps: a.steps,
            log_every: a.log_every.unwrap_or(TrainConfig::default().log_every),
            ..TrainConfig::default()
        }
    } else {
        a.config()?
    };
    let cache = match (&a.data, &a.resume) {
        (Some(d), _) => cache_for(d)?,
        (None, Some(r)) => match run_cache(r) {
            Some(c) => c,
            None => default_cache()?,
        },
        (None, None) => default_cache()?,
    };
    let out = a.out.clone().unwrap_or_else(next_run_dir);
    if a.resume.is_none() {
        if out.join("latest.json").exists() {
            return Err(Error::invalid(
                "--out",
                format!(
                    "{} already holds a run; use --resume {} or another --out",
                    out.display(),
                    out.display()
                ),
            ));
        }
        eprintln!("run folder {}", out.display());
        eprintln!("configuration:\n{}", config.to_json_pretty());
    }
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    // A second Ctrl-C is not caught again: the default action ends the process.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: finishing this step, then writing a checkpoint (Ctrl-C again to quit at once)");
    });
    let mut bar = Bar {
        progress: None,
        terminal: std::io::stderr().is_terminal(),
        log_every: config.log_every,
    };
    let report = run(
        RunOptions {
            config,
            cache,
            out,
            start,
            stop_at: a.stop_at,
            interrupt,
            device,
            graphs: !a.no_graphs,
        },
        &mut bar,
    )?;
    if let Some(p) = &bar.progress {
        p.finish();
    }
    let ckpt = report
        .checkpoint
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if report.finished {
        println!(
            "finished {} steps in {}; last checkpoint {ckpt}; best validation loss {}",
            report.step,
            report.out.display(),
            report.best_val.map(|v| format!("{v:.5}")).unwrap_or_else(|| "-".into())
        );
    } else {
        println!(
            "stopped after step {} of {}; checkpoint {ckpt}; continue with: nemesis pretrain --resume {}",
            report.step,
            report.total_steps,
            report.out.display()
        );
    }
    if !report.skipped_volumes.is_empty() {
        println!("skipped {} volume(s):", report.skipped_volumes.len());
        for s in &report.skipped_volumes {
            println!("  {s}");
        }
    }
    Ok(())
}
