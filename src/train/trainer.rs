//! The pretraining loop (MODEL.md §11) over a prepared cache.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::adamw::AdamW;
use super::config::TrainConfig;
use super::pictures::{curves_png, reconstruction_png, Curve};
use super::resume::{Change, Resumed, DATA_NOTE};
use super::schedule::Schedule;
use super::state::{prune, save, StateMeta};
use super::step::{read_deferred, PendingStep, StepGraphs, StepSpec};
use crate::autograd::{ParamStore, Tape};
use crate::data::{sample_crop, CacheManifest, CachedVolume, CropSpec, EpochPlan, Loader, Position, Split};
use crate::error::{Error, Result};
use crate::model::{check_fits, init_params, load_checkpoint_for, unpatchify, DualMask, Nemesis, Pass};
use crate::rng::{stream_id, Purpose, RngStream};
use crate::tensor::{DType, Tensor};

/// Step numbers the validation set's random streams are keyed by, far from
/// any training step.
const VAL_KEY: u64 = (1 << 40) - 1;

/// Where a run starts from.
pub enum Start {
    Fresh,
    /// Weights to start from (e.g. a converted official checkpoint).
    Init(PathBuf),
    /// A run opened to continue (`open_resume`), its recipe changes applied.
    Resume(Box<Resumed>),
}

/// Called after every optimizer step with its metrics, and with lines to show.
pub trait Observer {
    fn step(&mut self, step: u64, total: u64, m: &StepMetrics);
    fn message(&mut self, line: &str);
}

#[derive(Clone, Debug, Default)]
pub struct StepMetrics {
    pub loss: f64,
    pub psnr: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub sigma: f64,
    pub superpatches_per_s: f64,
}

pub struct RunOptions {
    pub config: TrainConfig,
    pub cache: PathBuf,
    pub out: PathBuf,
    pub start: Start,
    /// Stop (with a checkpoint) once this many steps are done.
    pub stop_at: Option<u64>,
    pub interrupt: Arc<AtomicBool>,
    /// Recipe keys a resume changed, recorded in the metrics at the step
    /// they take effect.
    pub changes: Vec<Change>,
    /// Where the step runs: `None` for the CPU reference backend, else a
    /// device (CUDA, or the emulator). Checkpoints are the same either way.
    pub device: Option<crate::device::SharedDevice>,
    /// On a device, replay a recorded step graph from the third step on
    /// (`StepGraphs`); off: every step call by call.
    pub graphs: bool,
    /// The other ranks of a data-parallel run (none: one process).
    pub collective: Option<Arc<dyn crate::dist::Collective>>,
    /// Sum the ranks' gradients as bf16 (`--bf16-allreduce`).
    pub allreduce_bf16: bool,
}

#[derive(Debug)]
pub struct RunReport {
    pub out: PathBuf,
    pub step: u64,
    pub total_steps: u64,
    pub finished: bool,
    pub checkpoint: Option<PathBuf>,
    pub best_val: Option<f64>,
    pub skipped_volumes: Vec<String>,
}

struct ValSet {
    images: Vec<Vec<f32>>,
    ids_keep: Vec<usize>,
    per_item: usize,
}

/// The fixed validation superpatches: crop `j` of validation volume
/// `j mod n`, and one fixed dual mask per superpatch.
fn validation_set(c: &TrainConfig, files: &[PathBuf]) -> Result<ValSet> {
    let spec = CropSpec::new(c.model.superpatch_size);
    let rng = RngStream::new(c.seed, stream_id(Purpose::Crop, VAL_KEY, 0));
    let mut images = Vec::with_capacity(c.val_superpatches);
    for j in 0..c.val_superpatches {
        let vol = CachedVolume::open(&files[j % files.len()])?;
        let mut out = vec![0.0f32; spec.voxels()];
        sample_crop(
            vol.hu(),
            vol.shape(),
            &spec,
            rng,
            j as u64 * CropSpec::DRAWS_PER_CROP,
            &mut out,
        );
        images.push(out);
    }
    let masks = DualMask::sample(
        &c.model,
        c.val_superpatches,
        RngStream::new(c.seed, stream_id(Purpose::Mask, VAL_KEY, 0)),
    );
    Ok(ValSet {
        images,
        ids_keep: masks.ids_keep().to_vec(),
        per_item: masks.visible(),
    })
}

struct ValResult {
    loss: f64,
    loss_all: f64,
    psnr: f64,
}

fn validate(
    model: &Nemesis,
    store: &ParamStore,
    c: &TrainConfig,
    val: &ValSet,
    picture: Option<&Path>,
    collective: Option<&dyn crate::dist::Collective>,
) -> Result<ValResult> {
    let [d, h, w] = c.model.superpatch_size;
    let per = d * h * w;
    let (mut loss_sum, mut sse, mut count) = (0.0f64, 0.0f64, 0usize);
    // Across ranks, chunk k goes to rank k mod W and the sums are reduced
    // (so the result equals one rank's up to the order of summation).
    let (rank, world) = collective.map_or((0, 1), |col| (col.rank(), col.size()));
    for (k, chunk) in val.images.chunks(c.batch).enumerate() {
        if k % world != rank {
            continue;
        }
        let b = chunk.len();
        let first = k * c.batch;
        let x = Tensor::from_vec(chunk.concat(), [b, 1, d, h, w])?;
        let ids = val.ids_keep[first * val.per_item..(first + b) * val.per_item].to_vec();
        let mask = DualMask::from_ids_keep(&c.model, b, ids)?;
        let tape = Tape::inference();
        let out = model.forward_train(&tape, store, &x, &x, &mask, None)?;
        loss_sum += out.loss.value().scalar_value()? * b as f64;
        let rec = unpatchify(&c.model, &out.pred.value().to_cpu()?)?;
        let (r, t) = (rec.cpu_slice::<f32>()?, x.cpu_slice::<f32>()?);
        sse += r
            .iter()
            .zip(t)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>();
        count += b;
        if k == 0 {
            if let Some(p) = picture {
                reconstruction_png(p, &c.model, (&x, &x, &rec), &mask, 0)?;
            }
        }
    }
    if let Some(col) = collective {
        let mut sums = [loss_sum, sse, count as f64];
        col.all_reduce_sum_f64(&mut sums)?;
        (loss_sum, sse, count) = (sums[0], sums[1], sums[2] as usize);
    }
    let mse = sse / (count * per) as f64;
    Ok(ValResult {
        loss: loss_sum / count as f64,
        loss_all: mse,
        psnr: -10.0 * (mse + 1e-8).log10(),
    })
}

fn append_jsonl(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| Error::io(path, e))
}

/// Keeps the metrics of steps `≤ step` (a resumed run rewrites what follows).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(f) = std::fs::File::open(path) else {
        return Ok(());
    };
    let kept: Vec<String> = BufReader::new(f)
        .lines()
        .map_while(|l| l.ok())
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .collect();
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    crate::io::write_atomic(path, text.as_bytes())
}

fn redraw_curves(dir: &Path) -> Result<()> {
    let path = dir.join("metrics.jsonl");
    let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let (mut tl, mut vl, mut tp, mut vp): (Curve, Curve, Curve, Curve) = Default::default();
    for line in BufReader::new(f).lines().map_while(|l| l.ok()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let step = v["step"].as_f64().unwrap_or(0.0);
        let get = |k: &str| v[k].as_f64();
        match v["kind"].as_str() {
            Some("train") => {
                tl.extend(get("loss").map(|y| (step, y)));
                tp.extend(get("psnr").map(|y| (step, y)));
            }
            Some("val") => {
                vl.extend(get("val_loss").map(|y| (step, y)));
                vp.extend(get("val_psnr").map(|y| (step, y)));
            }
            _ => {}
        }
    }
    curves_png(&dir.join("curves.png"), tl, vl, tp, vp)
}

/// Refuses a run whose model and batch will not fit where it runs, before
/// its weights or any batch are allocated.
pub fn check_run_fits(c: &TrainConfig, device: Option<&crate::device::SharedDevice>) -> Result<()> {
    check_fits(
        &c.model,
        c.batch,
        Pass::Train,
        device,
        &format!("training at --batch {}", c.batch),
        "lower --batch and raise --accum to keep the batch per step",
    )
    .map(|_| ())
}

pub fn run(mut opts: RunOptions, obs: &mut dyn Observer) -> Result<RunReport> {
    // --- start: configuration, weights, optimizer state ---
    let mut last_ckpt: Option<PathBuf> = None;
    let start = std::mem::replace(&mut opts.start, Start::Fresh);
    let (mut store, mut opt, mut meta, out) = match start {
        Start::Resume(r) => {
            let r = *r;
            // The resumed recipe (its batch, perhaps changed accum) on this device.
            check_run_fits(&r.meta.config, opts.device.as_ref())?;
            last_ckpt = Some(r.weights.clone());
            obs.message(&format!(
                "resuming {} at step {} from {}",
                r.dir.display(),
                r.meta.step,
                r.weights.display()
            ));
            (r.store, r.opt, r.meta, r.dir)
        }
        other => {
            let c = opts.config.clone();
            c.validate()?;
            check_run_fits(&c, opts.device.as_ref())?;
            let store = match other {
                Start::Init(w) => load_checkpoint_for(&w, &c.model, DType::F32)?,
                _ => init_params(&c.model, c.seed, DType::F32)?,
            };
            let opt = AdamW::new(c.adamw(), &store);
            let meta = StateMeta {
                step: 0,
                position: Position::default(),
                best_val: None,
                config: c,
                elapsed: 0.0,
                world: 1,
            };
            (store, opt, meta, opts.out.clone())
        }
    };
    opts.config = meta.config.clone();
    if let Some(dev) = &opts.device {
        store = store.to_device(dev)?;
    }
    // --- data ---
    let manifest = CacheManifest::load(&opts.cache)?;
    for d in &manifest.damaged {
        obs.message(&format!(
            "warning: {}: {d} is damaged and left out (`nemesis prepare` again rebuilds it)",
            opts.cache.display()
        ));
    }
    let mut train = manifest.files(&opts.cache, Split::Training);
    let mut val = manifest.files(&opts.cache, Split::Validation);
    if val.is_empty() && train.len() >= 2 {
        let n = (train.len() / 10).max(1);
        val = train.split_off(train.len() - n);
        obs.message(&format!(
            "no validation volumes in the cache: holding out the last {n} training volume(s)"
        ));
    }
    if val.is_empty() && train.len() == 1 {
        // One scan still trains; its validation crops are fixed crops of
        // the same scan, drawn apart from the training crops.
        val = train.clone();
        obs.message(
            "warning: one usable volume: validation takes its fixed crops from the training scan, so it \
             measures the fit to this scan, not to unseen anatomy; add a second scan (or a `validation` list \
             in a dataset JSON) to hold one out",
        );
    }
    // Too few volumes for a batch: more crops from each, said.
    let per_batch = opts.config.batch;
    if !train.is_empty() && train.len() * opts.config.crops_per_volume < per_batch {
        let crops = per_batch.div_ceil(train.len());
        obs.message(&format!(
            "{} training volume(s) × {} crop(s) per volume make no full batch of {per_batch}: drawing {crops} \
             crops per volume (--crops-per-volume sets it)",
            train.len(),
            opts.config.crops_per_volume
        ));
        opts.config.crops_per_volume = crops;
        meta.config.crops_per_volume = crops;
    }
    let c = &opts.config;
    if val.is_empty() {
        let dropped: Vec<String> = manifest
            .failures
            .iter()
            .map(|f| f.error.clone())
            .chain(manifest.damaged.iter().cloned())
            .collect();
        return Err(Error::invalid(
            "pretrain",
            format!(
                "the cache {} holds no usable training volume{}",
                opts.cache.display(),
                if dropped.is_empty() {
                    String::new()
                } else {
                    format!("; left out: {}", dropped.join("; "))
                }
            ),
        ));
    }
    let (mut plan, bad) = EpochPlan::new(
        train,
        CropSpec::new(c.model.superpatch_size),
        c.batch,
        c.crops_per_volume,
        c.seed,
    )?;
    // A device expands raw HU itself (half the bytes to upload).
    plan.hu_i16 = opts.device.is_some();
    // Data-parallel: this rank's share of each step; rank 0 alone writes.
    let collective = opts.collective.clone();
    if let Some(col) = &collective {
        plan.shard = crate::dist::Shard {
            rank: col.rank(),
            world: col.size(),
        };
    }
    let writer = plan.shard.rank == 0;
    meta.world = plan.shard.world;
    let skipped: Vec<String> = bad.iter().map(|(p, e)| format!("{}: {e}", p.display())).collect();
    for s in &skipped {
        obs.message(&format!("skipped {s}"));
    }
    let val_set = validation_set(c, &val)?;
    let bpe = plan.batches_per_epoch();
    // Global batches a step takes, over every rank (steps count globally).
    let per_step = (c.accum * plan.shard.world) as u64;
    let total = match c.steps {
        Some(s) => s,
        None => c
            .epochs
            .checked_mul(bpe)
            .map(|v| (v / per_step).max(1))
            .ok_or_else(|| {
                Error::invalid(
                    "--epochs",
                    format!("{} epochs of {bpe} batches is more steps than can be counted", c.epochs),
                )
            })?,
    };
    let warmup = ((c.warmup_epochs * bpe as f64 / per_step as f64).round() as u64).min(total.saturating_sub(1));
    let schedule = Schedule {
        kind: c.lr_schedule,
        base: c.lr,
        min: c.min_lr,
        warmup_steps: warmup,
        total_steps: total,
    };
    // With --steps the epochs follow from them: the configuration written
    // says what the run does.
    let epochs_run = total.saturating_mul(per_step).div_ceil(bpe.max(1));
    meta.config.epochs = epochs_run;
    let written = TrainConfig {
        epochs: epochs_run,
        ..c.clone()
    };
    obs.message(&plan_line(
        &written,
        plan.shard.world,
        total,
        bpe,
        warmup,
        plan.files().len(),
    ));
    let model = Nemesis::new(c.model.clone())?;

    // --- the run folder: written only once the data and model are ready,
    // so a run refused before its first step leaves nothing of itself ---
    let metrics = out.join("metrics.jsonl");
    if writer {
        for sub in ["checkpoints", "recon"] {
            let d = out.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        crate::io::write_atomic(&out.join("config.json"), written.to_json_pretty().as_bytes())?;
        let data_note = json!({"cache": opts.cache.display().to_string()});
        crate::io::write_atomic(&out.join(DATA_NOTE), data_note.to_string().as_bytes())?;
        truncate_metrics(&metrics, meta.step)?;
        for ch in &opts.changes {
            append_jsonl(
                &metrics,
                &json!({"kind": "change", "step": meta.step + 1, "key": ch.key, "from": ch.from, "to": ch.to}),
            )?;
        }
    }
    let mut loader = Loader::start(
        plan.clone(),
        meta.position,
        c.loader_threads.max(1),
        2 * c.loader_threads.max(1),
    );
    let started = Instant::now();
    let elapsed0 = meta.elapsed;

    let checkpoint =
        |store: &ParamStore, opt: &mut AdamW, meta: &mut StateMeta, last: &mut Option<PathBuf>| -> Result<PathBuf> {
            meta.elapsed = elapsed0 + started.elapsed().as_secs_f64();
            if !writer {
                return Ok(PathBuf::new());
            }
            opt.sync_host()?;
            let p = save(&out, &store.to_cpu()?, opt, meta)?;
            prune(&out, c.keep_last);
            *last = Some(p.clone());
            Ok(p)
        };

    // --- the loop ---
    // Each step is queued without waiting for the device; the previous
    // step's metrics are read (and logged, and checked for NaN) while this
    // one runs. Before validation, a checkpoint or the end, the step just
    // queued is read too, so nothing is saved past a step that diverged.
    let spec = StepSpec {
        model: &model,
        seed: c.seed,
        noise_levels: &c.noise_levels,
        clip: c.clip,
        shard: plan.shard,
        collective: opts.collective.as_deref(),
        allreduce_bf16: opts.allreduce_bf16,
    };
    // A queued step and when it began (its batches' wait included).
    let mut pending: Option<(PendingStep, Instant)> = None;
    let mut last_report = Instant::now();
    let deferred = read_deferred(opts.device.as_ref());
    // A recorded step cannot stop in the middle for the ranks' all-reduce.
    let mut graphs = StepGraphs::new(opts.graphs && collective.is_none());
    if let (Some(_), Some(_), true) = (&collective, &opts.device, writer) {
        let size = super::reduce::bucket_bytes()?;
        let bf16 = opts.allreduce_bf16;
        let buckets = super::reduce::GradBuckets::new(&store, size, None, bf16);
        obs.message(&format!(
            "gradients summed over the ranks during the backward pass, in {}: {} bucket(s) of at most {size} bytes",
            if bf16 { "bf16" } else { "fp32" },
            buckets.count()
        ));
    }
    let mut report =
        |(p, t0): (PendingStep, Instant), last_ckpt: &Option<PathBuf>, obs: &mut dyn Observer| -> Result<()> {
            let (number, lr, sigma, epoch, superpatches) = (p.number, p.lr, p.sigma, p.epoch, p.superpatches);
            // From when the step could start: its queueing, or the end of the
            // step before when it was queued behind that one.
            let began = t0.max(last_report);
            let mut v = p.wait()?;
            // The step's loss and PSNR over every rank's micro-batches (the
            // gradient norm is already the global one).
            if let Some(col) = &collective {
                let mut sums = [v.loss, v.psnr];
                col.all_reduce_sum_f64(&mut sums)?;
                let w = col.size() as f64;
                (v.loss, v.psnr) = (sums[0] / w, sums[1] / w);
            }
            if !v.loss.is_finite() {
                return Err(nan_error(number, "loss", v.loss, last_ckpt));
            }
            if !v.grad_norm.is_finite() {
                return Err(nan_error(number, "gradient norm", v.grad_norm, last_ckpt));
            }
            let now = Instant::now();
            let dt = now.duration_since(began).as_secs_f64().max(1e-9);
            last_report = now;
            let m = StepMetrics {
                loss: v.loss,
                psnr: v.psnr,
                lr,
                grad_norm: v.grad_norm,
                sigma,
                superpatches_per_s: superpatches as f64 / dt,
            };
            if writer {
                append_jsonl(
                    &metrics,
                    &json!({
                        "kind": "train", "step": number, "epoch": epoch, "loss": m.loss, "psnr": m.psnr,
                        "lr": lr, "grad_norm": m.grad_norm, "sigma": sigma, "superpatches_per_s": m.superpatches_per_s,
                        "time": elapsed0 + started.elapsed().as_secs_f64(),
                    }),
                )?;
            }
            obs.step(number, total, &m);
            Ok(())
        };
    let already = opts.stop_at.filter(|&s| s <= meta.step && meta.step < total);
    if let Some(s) = already {
        obs.message(&format!(
            "the run is already at step {} (--stop-at {s}): no step taken",
            meta.step
        ));
    }
    while already.is_none() && meta.step < total {
        let step = meta.step;
        if let Some(col) = &collective {
            col.at_step(step + 1);
        }
        // A step's time includes waiting for its batches.
        let t0 = Instant::now();
        let mut batches = Vec::with_capacity(c.accum);
        for _ in 0..c.accum {
            batches.push(loader.next_batch()?);
        }
        let lr = schedule.lr(step);
        let queued = (graphs.queue(&spec, &mut store, &mut opt, step, lr, batches)?, t0);
        if let Some(w) = graphs.warning.take() {
            obs.message(&w);
        }
        // The step took the global batches of every rank: accum × world.
        meta.position = plan.advance(meta.position, per_step);
        meta.step += 1;
        if !deferred {
            report(queued, &last_ckpt, obs)?;
        } else if let Some(prev) = pending.replace(queued) {
            report(prev, &last_ckpt, obs)?;
        }

        let mut stopping = opts.interrupt.load(Ordering::SeqCst) || opts.stop_at.is_some_and(|s| meta.step >= s);
        // A signal may reach the ranks at different steps: all stop together.
        if let Some(col) = &collective {
            stopping = col.all_reduce_max(u64::from(stopping))? > 0;
        }
        let boundary = meta.step % c.val_every == 0 || meta.step == total;
        if boundary || stopping {
            if let Some(p) = pending.take() {
                report(p, &last_ckpt, obs)?;
            }
        }
        // At each validation the ranks compare their weights: a rank that
        // drifted (a bad node, a bug) stops the run instead of spoiling it.
        if let (true, Some(col)) = (boundary, &collective) {
            super::reduce::check_same_weights(&store, col.as_ref(), meta.step)?;
        }
        if boundary {
            // The ranks share the validation set; rank 0 writes.
            let pic = out.join(format!("recon/step-{:07}.png", meta.step));
            let v = validate(
                &model,
                &store,
                c,
                &val_set,
                writer.then_some(pic.as_path()),
                collective.as_deref(),
            )?;
            if writer {
                append_jsonl(
                    &metrics,
                    &json!({"kind": "val", "step": meta.step, "val_loss": v.loss, "val_loss_all": v.loss_all, "val_psnr": v.psnr}),
                )?;
            }
            obs.message(&format!(
                "step {}: validation loss {:.5} (all tokens {:.5}), PSNR {:.2} dB",
                meta.step, v.loss, v.loss_all, v.psnr
            ));
            let better = meta.best_val.is_none_or(|b| v.loss < b);
            if better {
                meta.best_val = Some(v.loss);
            }
            let p = checkpoint(&store, &mut opt, &mut meta, &mut last_ckpt)?;
            if better && writer {
                let best = out.join("best.safetensors");
                std::fs::copy(&p, out.join(".best.tmp")).map_err(|e| Error::io(&best, e))?;
                std::fs::rename(out.join(".best.tmp"), &best).map_err(|e| Error::io(&best, e))?;
                let info = json!({"step": meta.step, "val_loss": v.loss, "val_psnr": v.psnr});
                crate::io::write_atomic(&out.join("best.json"), info.to_string().as_bytes())?;
            }
            if writer {
                redraw_curves(&out)?;
            }
        } else if stopping {
            checkpoint(&store, &mut opt, &mut meta, &mut last_ckpt)?;
            if writer {
                redraw_curves(&out)?;
            }
        }
        if stopping {
            break;
        }
    }
    drop(loader);
    Ok(RunReport {
        out,
        step: meta.step,
        total_steps: total,
        finished: meta.step >= total,
        checkpoint: last_ckpt,
        best_val: meta.best_val,
        skipped_volumes: skipped,
    })
}

/// What a run will do, in one line.
fn plan_line(c: &TrainConfig, world: usize, total: u64, bpe: u64, warmup: u64, volumes: usize) -> String {
    let schedule = match c.lr_schedule {
        super::LrSchedule::Recipe => format!(
            "lr warms up over {warmup} steps to {:e}, then cosine to {:e} at step {total}",
            c.lr, c.min_lr
        ),
        super::LrSchedule::Public => format!(
            "lr {:e} on the public schedule (5 warm-up steps, 90-step cosine cycles)",
            c.lr
        ),
    };
    let s = |n: u64| if n == 1 { "" } else { "s" };
    format!(
        "plan: {total} step{} over {} epoch{} ({bpe} batches an epoch, {volumes} training volumes); {} superpatches \
         a step (batch {} × accum {}{}); {schedule}; validation and a checkpoint every {} steps and at the end",
        s(total),
        c.epochs,
        s(c.epochs),
        c.batch * c.accum * world,
        c.batch,
        c.accum,
        if world > 1 {
            format!(" × {world} ranks")
        } else {
            String::new()
        },
        c.val_every
    )
}

fn nan_error(step: u64, what: &str, value: f64, last: &Option<PathBuf>) -> Error {
    Error::invalid(
        "pretrain",
        format!(
            "step {step}: the {what} is {value}; stopping. Last good checkpoint: {} (lower --lr, check the data, \
             then --resume it)",
            last.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none yet".into())
        ),
    )
}
