//! Segmentation fine-tuning (SPEC §14): crops of the superpatch size at a
//! foreground-biased position, Dice + CE, AdamW with the learning rate
//! annealed by a cosine per epoch to lr·1e-3, validation Dice by sliding
//! windows, and checkpoints a resumed run continues from exactly (every
//! draw is keyed by seed, step and sample; the BatchNorm statistics travel
//! in the weights, the moments in the state file).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::checkpoint::{load_seg, save_seg};
use super::data::{crop, crop_origin, ClassTable, LabelledVolume};
use super::metrics::dice;
use super::model::{Mode, RunningStats, SegModel};
use super::window::predict_classes;
use crate::autograd::{ParamStore, Tape};
use crate::error::{Error, Result};
use crate::io::{write_atomic, Array, ArrayData, TensorFile};
use crate::model::Dropout;
use crate::picture::{line_plot, Axis, PlotSpec, Series, PALETTE};
use crate::progress::Progress;
use crate::rng::{stream_id, Purpose, RngStream};
use crate::tensor::{DType, Tensor};
use crate::train::{AdamW, AdamWConfig};

/// What a run is: saved in `config.json` and in every state file, and
/// compared on resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegRecipe {
    /// The encoder's source (a checkpoint path, or the random init's seed).
    pub encoder: String,
    pub data: String,
    pub classes: ClassTable,
    pub label_fraction: f64,
    pub freeze_encoder: bool,
    pub batch: usize,
    pub steps: u64,
    pub steps_per_epoch: u64,
    pub lr: f64,
    pub min_lr_factor: f64,
    pub weight_decay: f64,
    pub eval_every: u64,
    pub seed: u64,
}

impl SegRecipe {
    pub fn epochs(&self) -> u64 {
        self.steps.div_ceil(self.steps_per_epoch.max(1))
    }

    /// Cosine annealing per epoch: `min + (lr − min)·½(1 + cos(π·e/E))`.
    pub fn lr_at(&self, step: u64) -> f64 {
        let e = (step / self.steps_per_epoch.max(1)) as f64;
        let min = self.lr * self.min_lr_factor;
        min + (self.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * e / self.epochs() as f64).cos())
    }
}

/// The scalar part of a checkpoint's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegState {
    pub step: u64,
    pub best_dice: Option<f64>,
    pub best_step: Option<u64>,
    pub elapsed: f64,
    pub recipe: SegRecipe,
}

/// Everything a run trains and carries.
pub struct SegRun {
    pub model: SegModel,
    pub store: ParamStore,
    pub stats: RunningStats,
    pub opt: AdamW,
    pub state: SegState,
}

impl SegRun {
    pub fn new(model: SegModel, store: ParamStore, recipe: SegRecipe) -> Self {
        let stats = RunningStats::new(model.config());
        let opt = AdamW::new(adamw_config(&recipe), &store);
        SegRun {
            model,
            store,
            stats,
            opt,
            state: SegState {
                step: 0,
                best_dice: None,
                best_step: None,
                elapsed: 0.0,
                recipe,
            },
        }
    }
}

fn adamw_config(r: &SegRecipe) -> AdamWConfig {
    AdamWConfig {
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: r.weight_decay,
    }
}

/// Volumes, output folder and the stop flag of a run.
pub struct SegTrainIo<'a> {
    pub train: &'a [LabelledVolume],
    pub val: &'a [LabelledVolume],
    pub out: &'a Path,
    /// Set by a signal: the run checkpoints after its step and returns.
    pub interrupt: Arc<AtomicBool>,
    /// Checkpoints kept (the newest).
    pub keep: usize,
}

pub struct SegReport {
    pub steps: u64,
    pub last_dice: Option<f64>,
    pub best_dice: Option<f64>,
    pub best_step: Option<u64>,
    pub interrupted: bool,
    pub checkpoint: PathBuf,
}

fn weights_name(step: u64) -> String {
    format!("checkpoints/step-{step:07}.safetensors")
}

fn state_name(step: u64) -> String {
    format!("checkpoints/step-{step:07}.state.safetensors")
}

/// Weights, then state, then `latest.json`, each atomically.
fn save_run(out: &Path, run: &mut SegRun, keep: usize) -> Result<PathBuf> {
    let step = run.state.step;
    std::fs::create_dir_all(out.join("checkpoints")).map_err(|e| Error::io(out, e))?;
    let weights = out.join(weights_name(step));
    save_seg(
        &weights,
        run.model.config(),
        &run.store,
        &run.stats,
        Some(&run.state.recipe.classes),
    )?;
    run.opt.sync_host()?;
    let mut arrays = BTreeMap::new();
    for (k, (_, p)) in run.store.iter().enumerate() {
        for (tag, v) in [("m", &run.opt.m[k]), ("v", &run.opt.v[k])] {
            arrays.insert(
                format!("{tag}.{}", p.name),
                Array {
                    shape: p.value.dims().to_vec(),
                    data: ArrayData::F32(v.clone()),
                },
            );
        }
    }
    let mut md = HashMap::new();
    let state = serde_json::to_string(&run.state).map_err(|e| Error::format(out, e.to_string()))?;
    md.insert("state".to_string(), state);
    md.insert("adamw_step".to_string(), run.opt.step.to_string());
    TensorFile::write(&out.join(state_name(step)), &md, &arrays)?;
    let latest = json!({"step": step, "weights": weights_name(step), "state": state_name(step)});
    write_atomic(&out.join("latest.json"), latest.to_string().as_bytes())?;
    // Older checkpoints beyond `keep` go (never the one just written).
    let mut steps: Vec<u64> = std::fs::read_dir(out.join("checkpoints"))
        .map_err(|e| Error::io(out, e))?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("step-")?.strip_suffix(".safetensors")?.parse().ok()
        })
        .collect();
    steps.sort_unstable();
    for s in steps.iter().rev().skip(keep.max(1)) {
        let _ = std::fs::remove_file(out.join(weights_name(*s)));
        let _ = std::fs::remove_file(out.join(state_name(*s)));
    }
    Ok(weights)
}

/// Reopens the run in `out` from its `latest.json`: weights, running
/// statistics, optimizer moments and state.
pub fn resume_run(out: &Path) -> Result<SegRun> {
    let latest_path = out.join("latest.json");
    let text = std::fs::read_to_string(&latest_path).map_err(|e| Error::io(&latest_path, e))?;
    let latest: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(&latest_path, e.to_string()))?;
    let field = |k: &str| {
        latest
            .get(k)
            .and_then(|v| v.as_str())
            .map(|s| out.join(s))
            .ok_or_else(|| Error::format(&latest_path, format!("has no `{k}`")))
    };
    let ck = load_seg(&field("weights")?, DType::F32)?;
    let (config, store, stats) = (ck.config, ck.store, ck.stats);
    let state_path = field("state")?;
    let file = TensorFile::read(&state_path)?;
    let state: SegState = file
        .metadata
        .get("state")
        .ok_or_else(|| Error::format(&state_path, "has no `state` metadata"))
        .and_then(|s| serde_json::from_str(s).map_err(|e| Error::format(&state_path, e.to_string())))?;
    let mut opt = AdamW::new(adamw_config(&state.recipe), &store);
    opt.step = file
        .metadata
        .get("adamw_step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::format(&state_path, "has no optimizer step"))?;
    for (k, (_, p)) in store.iter().enumerate() {
        for (tag, dst) in [("m", &mut opt.m[k]), ("v", &mut opt.v[k])] {
            let t = file.tensor(&format!("{tag}.{}", p.name))?;
            if t.numel() != p.value.numel() {
                return Err(Error::format(
                    &state_path,
                    format!("`{tag}.{}` has the wrong size", p.name),
                ));
            }
            *dst = t.to_vec::<f32>()?;
        }
    }
    Ok(SegRun {
        model: SegModel::new(config)?,
        store,
        stats,
        opt,
        state,
    })
}

/// `0..n` in a seeded order (Fisher–Yates on Philox draws).
fn shuffled(n: usize, rng: RngStream) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((rng.bits(i as u64) as u64 * (i as u64 + 1)) >> 32) as usize;
        order.swap(i, j);
    }
    order
}

/// The training crops of `step`: images `B × 1 × window` and classes.
fn make_batch(r: &SegRecipe, train: &[LabelledVolume], window: [usize; 3], step: u64) -> Result<(Tensor, Vec<u32>)> {
    let epoch = step / r.steps_per_epoch;
    let order = shuffled(
        train.len(),
        RngStream::new(r.seed, stream_id(Purpose::Shuffle, epoch, 0x5E6)),
    );
    let first = (step % r.steps_per_epoch) as usize * r.batch;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for b in 0..r.batch {
        let v = &train[order[(first + b) % train.len()]];
        let origin = crop_origin(v, window, r.seed, step, b as u64);
        let (img, cls) = crop(v, window, origin);
        x.extend_from_slice(&img);
        y.extend(cls.iter().map(|&c| c as u32));
    }
    Ok((Tensor::from_vec(x, [r.batch, 1, window[0], window[1], window[2]])?, y))
}

/// Mean Dice over the foreground classes of every validation volume (a
/// class absent from both maps of a volume does not count), and per class.
pub fn validate(run: &SegRun, val: &[LabelledVolume], batch: usize) -> Result<(Option<f64>, Vec<Option<f64>>)> {
    let k = run.model.config().num_classes;
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); k];
    for (i, v) in val.iter().enumerate() {
        let label = format!("validation {}/{}", i + 1, val.len());
        let pred = predict_classes(&run.model, &run.store, &run.stats, &v.image, v.shape, batch, &label)?;
        for (c, scores) in per.iter_mut().enumerate().skip(1) {
            if let Some(d) = dice(&pred, &v.classes, c as u8) {
                scores.push(d);
            }
        }
    }
    let per: Vec<Option<f64>> = per
        .iter()
        .map(|s| (!s.is_empty()).then(|| s.iter().sum::<f64>() / s.len() as f64))
        .collect();
    let defined: Vec<f64> = per.iter().skip(1).flatten().copied().collect();
    let mean = (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64);
    Ok((mean, per))
}

fn append_line(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| Error::io(path, e))
}

/// The curves of `metrics.jsonl`: training loss and validation Dice.
pub fn curves(out: &Path) -> Result<()> {
    let path = out.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let (mut loss, mut dice) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = v.get("step").and_then(|s| s.as_f64()).unwrap_or(0.0);
        if let Some(l) = v.get("loss").and_then(|l| l.as_f64()) {
            loss.push((step, l));
        }
        if let Some(d) = v.get("val_dice").and_then(|d| d.as_f64()) {
            dice.push((step, d));
        }
    }
    let spec = PlotSpec {
        title: "NEMESIS segmentation fine-tuning".into(),
        x_label: "step".into(),
        left_label: "Dice + CE loss (log)".into(),
        right_label: "validation mean Dice".into(),
        series: vec![
            Series::new("train loss", PALETTE[0], Axis::Left, loss),
            Series::new("val Dice", PALETTE[1], Axis::Right, dice),
        ],
        left_log: true,
        ..PlotSpec::default()
    };
    Ok(line_plot(&spec)?.save_png(out.join("curves.png"))?)
}

/// Trains from `run.state.step` to the recipe's last step (or a signal).
pub fn train(io: &SegTrainIo, run: &mut SegRun) -> Result<SegReport> {
    let r = run.state.recipe.clone();
    if io.train.is_empty() {
        return Err(Error::invalid("segment train", "no training volumes"));
    }
    let window = run.model.config().encoder.superpatch_size;
    let p_drop = run.model.config().encoder.dropout;
    let metrics = io.out.join("metrics.jsonl");
    let t0 = Instant::now() - std::time::Duration::from_secs_f64(run.state.elapsed);
    let mut progress = Progress::new("segment train", r.steps);
    progress.set(run.state.step, "");
    let mut last_dice = None;
    let mut checkpoint = io.out.join(weights_name(run.state.step));
    let mut interrupted = false;
    while run.state.step < r.steps {
        let step = run.state.step;
        let lr = r.lr_at(step);
        let (x, labels) = make_batch(&r, io.train, window, step)?;
        let tape = Tape::new();
        let dropout = Dropout::new(p_drop, r.seed, step);
        let mode = Mode::Train {
            dropout: Some(&dropout),
            freeze_encoder: r.freeze_encoder,
        };
        let (logits, moments) = run.model.forward(&tape, &run.store, &run.stats, &x, mode)?;
        let loss = tape.dice_ce(&logits, &labels)?;
        let loss_value = loss.value().scalar_value()?;
        if !loss_value.is_finite() {
            return Err(Error::invalid(
                "segment train",
                format!("the loss is {loss_value} at step {step}; the last checkpoint is intact"),
            ));
        }
        run.store.zero_grad();
        tape.backward(&loss, &mut run.store)?;
        run.stats.update(&moments)?;
        run.opt.update(&mut run.store, lr)?;
        run.state.step += 1;
        run.state.elapsed = t0.elapsed().as_secs_f64();
        let epoch = step / r.steps_per_epoch;
        append_line(
            &metrics,
            &json!({"step": step + 1, "epoch": epoch, "loss": loss_value, "lr": lr, "time": run.state.elapsed}),
        )?;
        progress.set(run.state.step, &format!("loss {loss_value:.4} lr {lr:.2e}"));
        let end_of_epoch = run.state.step.is_multiple_of(r.steps_per_epoch);
        let last = run.state.step == r.steps;
        let validate_now =
            !io.val.is_empty() && (last || (end_of_epoch && (epoch + 1).is_multiple_of(r.eval_every.max(1))));
        if validate_now {
            let (mean, per) = validate(run, io.val, r.batch)?;
            last_dice = mean;
            let names = &r.classes.names;
            let per_class: serde_json::Map<String, serde_json::Value> = per
                .iter()
                .enumerate()
                .skip(1)
                .map(|(c, d)| (names[c].clone(), json!(d)))
                .collect();
            append_line(
                &metrics,
                &json!({"step": run.state.step, "epoch": epoch, "val_dice": mean, "val_dice_per_class": per_class}),
            )?;
            if let Some(m) = mean {
                if run.state.best_dice.is_none_or(|b| m > b) {
                    run.state.best_dice = Some(m);
                    run.state.best_step = Some(run.state.step);
                    save_seg(
                        &io.out.join("best.safetensors"),
                        run.model.config(),
                        &run.store,
                        &run.stats,
                        Some(&r.classes),
                    )?;
                    let best = json!({"step": run.state.step, "val_dice": m});
                    write_atomic(&io.out.join("best.json"), best.to_string().as_bytes())?;
                }
            }
            eprintln!(
                "segment train: step {} (epoch {}): validation mean Dice {}",
                run.state.step,
                epoch + 1,
                mean.map(|m| format!("{m:.4}")).unwrap_or_else(|| "undefined".into())
            );
        }
        let stop = io.interrupt.load(Ordering::SeqCst);
        if validate_now || last || stop {
            checkpoint = save_run(io.out, run, io.keep)?;
            curves(io.out)?;
        }
        if stop && !last {
            interrupted = true;
            break;
        }
    }
    progress.finish();
    if io.val.is_empty() {
        // Without validation volumes the last weights are the model.
        save_seg(
            &io.out.join("best.safetensors"),
            run.model.config(),
            &run.store,
            &run.stats,
            Some(&r.classes),
        )?;
    }
    Ok(SegReport {
        steps: run.state.step,
        last_dice,
        best_dice: run.state.best_dice,
        best_step: run.state.best_step,
        interrupted,
        checkpoint,
    })
}
