//! `nemesis bench`: measurements with a side-by-side baseline.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use rayon::prelude::*;

use crate::data::{read_volume, sample_crop, CacheManifest, CropSpec, EpochPlan, Loader, Position, Split};
use crate::error::{Error, Result};
use crate::rng::RngStream;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    /// Superpatches per second: the cache through the loader vs decompressing .nii.gz per sample.
    Data(DataArgs),
    /// Kernel microbenchmarks on a device beside their floors: attention, the other kernels, or all.
    Kernels(super::bench_kernels::KernelArgs),
    /// Whole training steps: forward, backward and AdamW at a preset's shapes.
    Step(StepArgs),
    /// The CPU's measured FMA peak and our GEMM's rate at a preset's shapes against it.
    Gemm(super::bench_gemm::GemmArgs),
    /// The segmentation decoder's convolutions on the CPU: the step's path against im2col, as a fraction of the FMA peak.
    Conv(super::bench_conv::ConvArgs),
    /// Whole segmentation training steps (encoder + decoder, Dice + CE, AdamW) at a preset's shapes.
    SegStep(super::bench_seg::SegStepArgs),
}

#[derive(Args, Debug)]
pub struct StepArgs {
    #[command(flatten)]
    pub model: super::model_source::ModelSource,
    /// Superpatches per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Timed steps (after the untimed warm-up: one step, or two with step
    /// graphs, the second being recorded).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Where to run: cpu, auto (CUDA when a usable GPU is there, else the
    /// CPU; says which), cuda, or emu (the CUDA kernels on the CPU, slow).
    #[arg(long, value_enum, default_value_t = super::device::DeviceArg::Auto)]
    pub device: super::device::DeviceArg,
    /// Mixed precision on a device (bf16 GEMM operands).
    #[arg(long)]
    pub bf16: bool,
    /// On a device, run every step call by call instead of replaying a
    /// recorded step graph.
    #[arg(long)]
    pub no_graphs: bool,
    /// On the CPU: a table of where the timed steps' time goes, per op
    /// kind, forward and backward, with the bytes each moves.
    #[arg(long)]
    pub profile: bool,
}

#[derive(Args, Debug)]
pub struct DataArgs {
    /// A cache folder made by `nemesis prepare` (default: the built-in synthetic set).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Superpatch edge in voxels.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Superpatches per batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Batches timed on the cache path.
    #[arg(long, default_value_t = 50)]
    pub batches: usize,
    /// Superpatches timed on the .nii.gz path (each decompresses its volume).
    #[arg(long, default_value_t = 8)]
    pub nifti_samples: usize,
    /// Loader threads (and threads for the .nii.gz path).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(a: &BenchArgs) -> Result<()> {
    match &a.what {
        BenchWhat::Data(d) => data(d),
        BenchWhat::Kernels(k) => super::bench_kernels::run(k),
        BenchWhat::Step(s) => step(s),
        BenchWhat::SegStep(s) => super::bench_seg::run(s),
        BenchWhat::Gemm(g) => super::bench_gemm::run(g),
        BenchWhat::Conv(c) => super::bench_conv::run(c),
    }
}

fn data(a: &DataArgs) -> Result<()> {
    let cache = match &a.cache {
        Some(c) => c.clone(),
        None => super::synth::default_cache()?,
    };
    let manifest = CacheManifest::load(&cache)?;
    let mut files = manifest.files(&cache, Split::Training);
    files.extend(manifest.files(&cache, Split::Validation));
    let threads = a.threads.unwrap_or_else(rayon::current_num_threads).max(1);
    let spec = CropSpec::new([a.size; 3]);
    let (plan, bad) = EpochPlan::new(files.clone(), spec, a.batch, 1, 0)?;
    for (f, e) in &bad {
        eprintln!("skipped {}: {e}", f.display());
    }
    println!(
        "{} volumes in {}, superpatch {}³, batch {}, {threads} threads",
        plan.files().len(),
        cache.display(),
        a.size,
        a.batch
    );

    // Cache path: the loader, as training uses it.
    let mut loader = Loader::start(plan.clone(), Position::default(), threads, 2 * threads);
    loader.next_batch()?;
    let start = Instant::now();
    for _ in 0..a.batches {
        loader.next_batch()?;
    }
    let cache_secs = start.elapsed().as_secs_f64();
    drop(loader);
    let cache_rate = (a.batches * a.batch) as f64 / cache_secs;

    // Baseline: read and decompress the source volume for every superpatch.
    let sources: Vec<PathBuf> = manifest.entries.iter().map(|e| PathBuf::from(&e.image)).collect();
    if sources.is_empty() {
        return Err(Error::invalid("bench data", "the manifest lists no source volumes"));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::invalid("--threads", e.to_string()))?;
    let start = Instant::now();
    let results: Vec<Result<()>> = pool.install(|| {
        (0..a.nifti_samples)
            .into_par_iter()
            .map(|s| {
                let src = &sources[s % sources.len()];
                let v = read_volume(src)?;
                let mut out = vec![0.0f32; spec.voxels()];
                sample_crop(&v.hu, v.shape, &spec, RngStream::new(0, 0), s as u64 * 32, &mut out);
                Ok(())
            })
            .collect()
    });
    let nifti_secs = start.elapsed().as_secs_f64();
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let nifti_rate = a.nifti_samples as f64 / nifti_secs;

    println!("{:<44} {:>14}", "path", "superpatches/s");
    println!("{:<44} {:>14.1}", "cache (mmap) + loader", cache_rate);
    println!("{:<44} {:>14.2}", "decompress .nii.gz per superpatch", nifti_rate);
    println!("ratio cache / .nii.gz: {:.0}×", cache_rate / nifti_rate);
    Ok(())
}

/// The median wall time of full training steps on random superpatches:
/// the trainer's own step (`StepGraphs::queue`), timed between the completions
/// of successive steps. On a device each step is queued before the previous
/// one's metrics are read, as in `pretrain`, so the figure is the steady
/// state of a run.
fn step(a: &StepArgs) -> Result<()> {
    use crate::data::{Batch, BatchData, Position};
    use crate::model::{init_params, training_flops, Nemesis};
    use crate::tensor::DType;
    use crate::train::{read_deferred, AdamW, PendingStep, StepGraphs, StepSpec};

    let dev = super::device::select(a.device, a.bf16, 0)?;
    if a.batch == 0 || a.steps == 0 {
        return Err(Error::invalid("bench step", "--batch and --steps must be at least 1"));
    }
    if a.profile && dev.is_some() {
        return Err(Error::invalid(
            "--profile",
            "times the CPU path (a device runs ops asynchronously); use --device cpu, or `bench kernels` on a device",
        ));
    }
    let c = a.model.load()?;
    crate::model::check_fits(
        &c,
        a.batch,
        crate::model::Pass::Train,
        dev.as_ref(),
        &format!("a training step at --batch {}", a.batch),
        "lower --batch",
    )?;
    let model = Nemesis::new(c.clone())?;
    let mut store = init_params(&c, 0, DType::F32)?;
    if let Some(d) = &dev {
        store = store.to_device(d)?;
    }
    // The recipe's optimizer (MODEL.md §11).
    let mut opt = AdamW::new(crate::train::TrainConfig::default().adamw(), &store);
    let [d, h, w] = c.superpatch_size;
    let mut x = vec![0.0f32; a.batch * d * h * w];
    RngStream::new(1, 1).fill_uniform(0, &mut x);
    // What the loader hands the trainer: raw HU for a device (expanded
    // there), windowed values for the CPU; the same superpatches either way.
    let data = match &dev {
        Some(_) => BatchData::HuI16(x.iter().map(|&u| (-175.0 + 425.0 * u).round() as i16).collect()),
        None => BatchData::F32(x),
    };
    let batch = Batch {
        position: Position::default(),
        shape: [a.batch, 1, d, h, w],
        data,
        sources: Vec::new(),
    };
    let spec = StepSpec {
        model: &model,
        seed: 0,
        noise_levels: &[0.03],
        clip: 1.0,
        shard: Default::default(),
        collective: None,
        allreduce_bf16: false,
    };
    let mut graphs = StepGraphs::new(!a.no_graphs);
    // Steps before the timed ones: the first, and with graphs the recorded one.
    let warmup: u64 = if dev.is_some() && !a.no_graphs { 2 } else { 1 };
    let mut times = Vec::with_capacity(a.steps);
    let mut last = Instant::now();
    let mut pending: Option<PendingStep> = None;
    let mut finish = |p: PendingStep, times: &mut Vec<f64>| -> Result<()> {
        let s = p.number - 1;
        let v = p.wait()?;
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        if s >= warmup {
            times.push(dt);
        }
        eprintln!(
            "step {s}: {dt:.3} s, loss {:.4}{}",
            v.loss,
            if s < warmup { " (warm-up)" } else { "" }
        );
        Ok(())
    };
    // A GPU works on this step while the previous one is read.
    let deferred = read_deferred(dev.as_ref());
    for s in 0..a.steps as u64 + warmup {
        if a.profile && s == warmup {
            crate::autograd::profile::start();
        }
        crate::autograd::profile::mark();
        let queued = graphs.queue(&spec, &mut store, &mut opt, s, 1e-4, vec![batch.clone()])?;
        if let Some(w) = graphs.warning.take() {
            eprintln!("{w}");
        }
        if deferred {
            if let Some(prev) = pending.replace(queued) {
                finish(prev, &mut times)?;
            }
        } else {
            finish(queued, &mut times)?;
        }
    }
    if let Some(p) = pending.take() {
        finish(p, &mut times)?;
    }
    let profile = crate::autograd::profile::stop();
    // Before the rate measurement below allocates its own matrices.
    let peak = dev.as_ref().map(|d| d.memory().peak);
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let flops = training_flops(&c).forward_backward() as f64 * a.batch as f64;
    // MFU: the honest FLOP count over the bf16 matrix rate of this device,
    // measured now with a large GEMM (not a datasheet figure).
    let mfu = match &dev {
        Some(d) => {
            let (rate, _) = super::bench_kernels::reference_rates(d, c.superpatch_size[0] < 64)?;
            format!(
                ", MFU {:.1}% of the measured bf16 GEMM rate ({:.1} TFLOP/s)",
                100.0 * flops / median / rate,
                rate / 1e12
            )
        }
        None => String::new(),
    };
    println!(
        "{}×{}×{} superpatches, batch {}, {}: median step {:.3} s (min {:.3}, max {:.3}), {:.2} superpatches/s, {:.1} GFLOP/s (MODEL.md §13 count){mfu}",
        d,
        h,
        w,
        a.batch,
        match &dev {
            Some(d) => format!("{} ({})", d.kind(), if a.bf16 { "bf16" } else { "fp32" }),
            None => format!("cpu, {} threads", rayon::current_num_threads()),
        },
        median,
        times[0],
        times[times.len() - 1],
        a.batch as f64 / median,
        flops / median / 1e9
    );
    if a.profile {
        print_profile(&profile, times.iter().sum::<f64>(), times.len());
    }
    if let Some(peak) = peak {
        println!(
            "device memory: peak {:.1} MiB allocated (weights, optimizer state, the steps and any step graph)",
            peak as f64 / (1 << 20) as f64
        );
    }
    if let Some(g) = graphs.counts() {
        println!(
            "step graph: {} kernel launches and {} GEMMs a step in one launch ({} allocations, {} uploads, {:.1} MiB held); {} steps replayed",
            g.launches,
            g.gemms,
            g.allocs,
            g.uploads,
            g.arena_bytes as f64 / (1 << 20) as f64,
            graphs.replays()
        );
    }
    Ok(())
}

/// The per-op table of `--profile`: per step, each op kind's forward and
/// backward time, its share of the step, and the rate its forward calls
/// moved bytes at; what no op took (the optimizer, the clip, bookkeeping)
/// last.
fn print_profile(
    ops: &std::collections::BTreeMap<&'static str, crate::autograd::profile::OpTime>,
    total: f64,
    steps: usize,
) {
    let n = steps.max(1) as f64;
    let mut rows: Vec<_> = ops.iter().collect();
    rows.sort_by(|a, b| (b.1.forward_s + b.1.backward_s).total_cmp(&(a.1.forward_s + a.1.backward_s)));
    println!(
        "\nwhere a step's {:.1} ms go (the mean of {steps} timed steps):",
        1e3 * total / n
    );
    println!(
        "{:<28} {:>7} {:>11} {:>11} {:>11} {:>7} {:>12}",
        "op", "calls", "forward ms", "backward ms", "total ms", "share", "fwd GB/s"
    );
    let mut covered = 0.0;
    for (name, t) in rows {
        let sum = t.forward_s + t.backward_s;
        covered += sum;
        println!(
            "{:<28} {:>7} {:>11.2} {:>11.2} {:>11.2} {:>6.1}% {:>12.2}",
            name,
            (t.calls as f64 / n).round(),
            1e3 * t.forward_s / n,
            1e3 * t.backward_s / n,
            1e3 * sum / n,
            100.0 * sum / total.max(1e-12),
            if t.forward_s > 0.0 {
                t.forward_bytes / t.forward_s / 1e9
            } else {
                0.0
            }
        );
    }
    let rest = (total - covered).max(0.0);
    println!(
        "{:<28} {:>7} {:>11} {:>11} {:>11.2} {:>6.1}%",
        "outside ops (AdamW, clip, …)",
        "",
        "",
        "",
        1e3 * rest / n,
        100.0 * rest / total.max(1e-12)
    );
}
