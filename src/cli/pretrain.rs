//! `nemesis pretrain`: the recipe of MODEL.md §11 from the command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Args;

use super::device::{select, DeviceArg};
use super::prepare::prepare_dataset;
use super::ranks::{gpu_of, start_local_ranks, Ranks};
use super::signals::Signals;
use super::synth::{data_home, default_cache};
use crate::data::{CacheManifest, DatasetIndex, MANIFEST};
use crate::device::SharedDevice;
use crate::dist::{Launcher, World};
use crate::error::{Error, Result};
use crate::io::{claim_folder, FolderLock, LOCK_FILE};
use crate::progress::Progress;
use crate::train::{
    apply_changes, keep_global_batch, open_resume, run, run_cache, Change, LrSchedule, Observer, ResumeFlags,
};
use crate::train::{check_run_fits, run_dir_of, RunOptions, Start, StepMetrics, TrainConfig};
use std::time::Duration;

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
    /// Optimizer steps in all; overrides --epochs (default: from --epochs;
    /// the built-in default run: 600).
    #[arg(long, value_name = "N")]
    pub steps: Option<u64>,
    /// Passes over the training volumes, one crop each (default: 50).
    #[arg(long, value_name = "N")]
    pub epochs: Option<u64>,
    /// Superpatches per micro-batch (default: 4). Memory grows with it.
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Micro-batches whose gradients add up to one optimizer step: the
    /// step's batch is --batch × --accum (default: 1).
    #[arg(long, value_name = "N")]
    pub accum: Option<usize>,
    /// Peak learning rate, reached after the warm-up (default: 1e-4).
    #[arg(long, value_name = "RATE")]
    pub lr: Option<f64>,
    /// Learning rate at the end of the cosine decay (default: 1e-6).
    #[arg(long, value_name = "RATE")]
    pub min_lr: Option<f64>,
    /// Linear warm-up length, in epochs; fractions allowed (default: 5).
    #[arg(long, value_name = "EPOCHS")]
    pub warmup_epochs: Option<f64>,
    /// The learning-rate schedule (default: recipe).
    #[arg(long, value_enum)]
    pub lr_schedule: Option<LrSchedule>,
    /// AdamW's decoupled weight decay (default: 0.05).
    #[arg(long, value_name = "W")]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm to this (default: 1.0).
    #[arg(long, value_name = "NORM")]
    pub clip: Option<f64>,
    /// Noise σ values (in units of the [0, 1] window) drawn per batch
    /// (default: 0,0.01,0.03,0.05).
    #[arg(long, value_delimiter = ',', value_name = "σ,…")]
    pub noise_levels: Option<Vec<f64>>,
    /// Dropout in the MATB blocks, in [0, 1) (default: the preset's, 0.1).
    #[arg(long, value_name = "P")]
    pub dropout: Option<f64>,
    /// Seed of every random choice: init, crops, masks, noise, dropout
    /// (default: 42). The same seed gives the same run, bit for bit on the CPU.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Validate, draw a reconstruction and write a checkpoint every this
    /// many steps (default: 100; the built-in default run: 50).
    #[arg(long, value_name = "STEPS")]
    pub val_every: Option<u64>,
    /// Fixed validation superpatches, the same at every validation (default: 8).
    #[arg(long, value_name = "N")]
    pub val_superpatches: Option<usize>,
    /// Superpatches cropped from each training volume per epoch (default:
    /// 1; raised by itself, and said, when the volumes are too few for a
    /// batch).
    #[arg(long, value_name = "N")]
    pub crops_per_volume: Option<usize>,
    /// Checkpoints kept besides best.safetensors; older ones are removed (default: 3).
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Without a terminal, a progress line every this many steps (default: 10).
    #[arg(long, value_name = "STEPS")]
    pub log_every: Option<u64>,
    /// Stop with a checkpoint once this many steps are done, to split a
    /// long run into jobs; --resume continues it.
    #[arg(long, value_name = "STEP")]
    pub stop_at: Option<u64>,
    /// Where to run: cpu, auto (CUDA when a usable GPU is there, else the
    /// CPU; says which), cuda, or emu (the CUDA kernels on the CPU, slow).
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
    /// Start this many ranks on this machine: GPU ranks as torchrun would
    /// (one per GPU, joined by NCCL), CPU and emulator ranks through mpirun
    /// (a build with `--features mpi`).
    #[arg(long, value_name = "N")]
    pub nproc_per_node: Option<usize>,
    /// How long a rank waits for the others at a collective (or at the
    /// start, for them to join) before it stops with an error naming
    /// what it waited for (default: 300).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub collective_timeout: u64,
    /// Sum the ranks' gradients as bf16 rather than f32: half the bytes
    /// between GPUs, each value rounded to 8 bits of mantissa
    /// (docs/BENCHMARKS.md measures the effect on training).
    #[arg(long)]
    pub bf16_allreduce: bool,
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
        set!(val_every, val_superpatches, keep_last, log_every, crops_per_volume);
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
    if !data.exists() {
        return Err(Error::io(
            data,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file or folder; --data takes a cache folder from `nemesis prepare`, a dataset index \
                 JSON or a folder of NIfTI volumes",
            ),
        ));
    }
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
    for d in &s.duplicates {
        eprintln!("warning: {d}");
    }
    for f in &s.manifest.failures {
        eprintln!("skipped: {}", f.error);
    }
    if s.manifest.entries.is_empty() {
        return Err(Error::invalid("--data", "no volume could be prepared"));
    }
    CacheManifest::load(&cache)?;
    Ok(cache)
}

/// A run that failed before its first step leaves nothing behind: the
/// folder it made goes, or, in a folder it was given, its lock file.
fn clean_failed_start(out: &Path, created: bool) {
    let started = out.join("metrics.jsonl").exists() || out.join("latest.json").exists();
    if started {
        return;
    }
    if created {
        let _ = std::fs::remove_dir_all(out);
    } else {
        let _ = std::fs::remove_file(out.join(LOCK_FILE));
    }
}

/// Flags that would make a resumed run another run: refused by name.
fn refused_on_resume(a: &PretrainArgs) -> Vec<&'static str> {
    [
        ("--batch", a.batch.is_some()),
        ("--accum", a.accum.is_some()),
        ("--warmup-epochs", a.warmup_epochs.is_some()),
        ("--lr-schedule", a.lr_schedule.is_some()),
        ("--noise-levels", a.noise_levels.is_some()),
        ("--dropout", a.dropout.is_some()),
        ("--seed", a.seed.is_some()),
        ("--val-superpatches", a.val_superpatches.is_some()),
        ("--crops-per-volume", a.crops_per_volume.is_some()),
        ("--out", a.out.is_some()),
    ]
    .into_iter()
    .filter(|(_, given)| *given)
    .map(|(name, _)| name)
    .collect()
}

/// An indicatif bar on a terminal; otherwise a plain line every `log_every` steps.
struct Bar {
    progress: Option<Progress>,
    terminal: bool,
    log_every: u64,
    /// Ranks other than 0 keep quiet (errors still show).
    quiet: bool,
}

impl Observer for Bar {
    fn step(&mut self, step: u64, total: u64, m: &StepMetrics) {
        if self.quiet {
            return;
        }
        let line = format!(
            "loss {:.5} PSNR {:.2} dB lr {:.2e} |g| {:.3} σ {} {:.1} superpatches/s",
            m.loss, m.psnr, m.lr, m.grad_norm, m.sigma, m.superpatches_per_s
        );
        if self.terminal {
            self.progress
                .get_or_insert_with(|| Progress::new("pretrain", total))
                .set(step, &line);
        } else if step.is_multiple_of(self.log_every.max(1)) || step == total {
            eprintln!("step {step}/{total}: {line}");
        }
    }

    fn message(&mut self, line: &str) {
        if self.quiet {
            return;
        }
        match &self.progress {
            Some(p) => p.println(line),
            None => eprintln!("{line}"),
        }
    }
}

/// Runs `pretrain`; the exit status is 0, or 130/143 when SIGINT/SIGTERM
/// stopped the run (after its checkpoint).
pub fn run_cli(a: &PretrainArgs) -> Result<u8> {
    let timeout = Duration::from_secs(a.collective_timeout.max(1));
    if let Some(n) = a.nproc_per_node {
        // One CPU rank is this process; one GPU rank still goes through
        // NCCL, as a cluster's ranks do. (The ranks started get every
        // argument but this one.)
        if n != 1 || matches!(a.device, DeviceArg::Cuda) {
            return start_local_ranks(n, a.device, timeout);
        }
    }
    let world = World::from_env()?;
    if world.launcher != Launcher::Single {
        eprintln!("world: {}", world.describe());
    }
    let gpu = match a.device {
        DeviceArg::Cuda | DeviceArg::Auto => gpu_of(&world)?,
        _ => 0,
    };
    let device = select(a.device, a.bf16, gpu)?;
    let ranks = Ranks::open(&world, device.as_ref(), timeout)?;
    if a.bf16_allreduce && ranks.col.is_none() {
        return Err(Error::invalid(
            "--bf16-allreduce",
            "one process has no gradients to sum with others; the flag is for runs of several ranks",
        ));
    }
    if ranks.col.is_some() && a.out.is_none() && a.resume.is_none() {
        return Err(Error::invalid(
            "--out",
            "a run on several ranks needs --out, the same on every rank",
        ));
    }
    let signals = Signals::install()?;
    if let Some(r) = &a.resume {
        let refused = refused_on_resume(a);
        if !refused.is_empty() {
            return Err(Error::invalid(
                "--resume",
                format!(
                    "{} cannot change in a resumed run (it would be another run); a resume may change \
                     --steps, --epochs, --lr, --min-lr, --weight-decay, --clip, --val-every, --keep-last, \
                     --log-every. To train otherwise from these weights, start a new run with --init",
                    refused.join(", ")
                ),
            ));
        }
        // The folder is locked before anything is read or written.
        let dir = run_dir_of(r);
        let lock = if ranks.writer && (dir.join("latest.json").exists() || r.is_dir()) {
            ranks.agree(FolderLock::acquire(&dir, "--resume").map(Some))?
        } else {
            ranks.agree(Ok(None))?
        };
        let mut warnings = Vec::new();
        let mut resumed = open_resume(r, &mut |w| warnings.push(w))?;
        for w in warnings.iter().filter(|_| ranks.writer) {
            eprintln!("warning: {w}");
        }
        let cache = ranks.first_then_others(|| match &a.data {
            Some(d) => cache_for(d),
            None => run_cache(&resumed.dir),
        })?;
        let flags = ResumeFlags {
            steps: a.steps,
            epochs: a.epochs,
            lr: a.lr,
            min_lr: a.min_lr,
            weight_decay: a.weight_decay,
            clip: a.clip,
            val_every: a.val_every,
            keep_last: a.keep_last,
            log_every: a.log_every,
        };
        let mut changes = apply_changes(&mut resumed.meta.config, &flags)?;
        let world = ranks.col.as_ref().map_or(1, |c| c.size());
        let old_world = resumed.meta.world;
        if let Some(ch) = keep_global_batch(&mut resumed.meta, world)? {
            if ranks.writer {
                eprintln!("{old_world} rank(s) → {world}: the same global batch, through accum");
            }
            changes.push(ch);
        }
        resumed.opt.config = resumed.meta.config.adamw();
        for ch in changes.iter().filter(|_| ranks.writer) {
            eprintln!("{} {} → {} from step {}", ch.key, ch.from, ch.to, resumed.meta.step + 1);
        }
        let config = resumed.meta.config.clone();
        let out = resumed.dir.clone();
        let start = Start::Resume(Box::new(resumed));
        let status = train(a, device, config, cache, out, start, changes, &signals, &ranks);
        drop(lock);
        return status;
    }
    let config = a.config()?;
    check_run_fits(&config, device.as_ref())?;
    // Data before the folder: a run refused for its data leaves nothing.
    let cache = ranks.first_then_others(|| match &a.data {
        Some(d) => cache_for(d),
        None => default_cache(),
    })?;
    let start = match &a.init {
        Some(w) => Start::Init(w.clone()),
        None => Start::Fresh,
    };
    // Rank 0 claims and locks the folder; the others write nothing.
    let claimed = if ranks.writer {
        let claim = || -> Result<(PathBuf, bool, Option<FolderLock>)> {
            let (out, created) = claim_folder(a.out.as_deref(), "pretrain")?;
            let lock = FolderLock::acquire(&out, "--out")?;
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
            Ok((out, created, Some(lock)))
        };
        ranks.agree(claim())?
    } else {
        ranks.agree(Ok((a.out.clone().unwrap_or_default(), false, None)))?
    };
    let (out, created, lock) = claimed;
    if ranks.writer {
        eprintln!(
            "run folder {} (its configuration: {})",
            out.display(),
            out.join("config.json").display()
        );
    }
    let status = train(
        a,
        device,
        config,
        cache,
        out.clone(),
        start,
        Vec::new(),
        &signals,
        &ranks,
    );
    if status.is_err() && ranks.writer {
        clean_failed_start(&out, created);
    }
    drop(lock);
    status
}

#[allow(clippy::too_many_arguments)]
fn train(
    a: &PretrainArgs,
    device: Option<SharedDevice>,
    config: TrainConfig,
    cache: PathBuf,
    out: PathBuf,
    start: Start,
    changes: Vec<Change>,
    signals: &Signals,
    ranks: &Ranks,
) -> Result<u8> {
    // From here on a rank waits for the others at most this long; before,
    // while rank 0 prepared the data, for as long as that took.
    if let Some(c) = &ranks.col {
        c.set_timeout(Some(Duration::from_secs(a.collective_timeout.max(1))));
    }
    let mut bar = Bar {
        progress: None,
        terminal: std::io::stderr().is_terminal(),
        log_every: config.log_every,
        quiet: !ranks.writer,
    };
    let report = run(
        RunOptions {
            config,
            cache,
            out,
            start,
            stop_at: a.stop_at,
            interrupt: signals.stop.clone(),
            changes,
            device,
            graphs: !a.no_graphs,
            collective: ranks.col.clone(),
            allreduce_bf16: a.bf16_allreduce,
        },
        &mut bar,
    )?;
    if let Some(p) = &bar.progress {
        p.finish();
    }
    let status = match signals.received() {
        Some((_, status)) if !report.finished => status,
        _ => 0,
    };
    if !ranks.writer {
        return Ok(status);
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
    Ok(match signals.received() {
        Some((name, status)) if !report.finished => {
            eprintln!("stopped by {name}; exit status {status}");
            status
        }
        _ => 0,
    })
}
