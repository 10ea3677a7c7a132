//! `nemesis segment train | predict | eval`: segmentation fine-tuning of a
//! pretrained encoder with the UNETR-style decoder of SPEC §14.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use super::device::{select, DeviceArg};
use super::signals::Signals;
use crate::data::{is_nifti_path, DatasetIndex, Entry};
use crate::error::{Error, Result};
use crate::io::{claim_folder, write_atomic, FolderLock};
use crate::model::{init_params, load_checkpoint, ModelConfig};
use crate::probe::label_subset;
use crate::seg::{
    add_decoder_params, evaluate, load_encoder, load_seg, overlay_png, read_labelled, resume_run, train,
    write_prediction, ClassTable, LabelledVolume, Predictor, SegConfig, SegModel, SegRecipe, SegRun, SegTrainIo,
};
use crate::tensor::DType;

#[derive(Subcommand, Debug)]
pub enum SegmentCommand {
    /// Fine-tune an encoder with the segmentation decoder on labelled volumes.
    Train(Box<TrainArgs>),
    /// Segment a whole scan: sliding windows, a label map that lies on the scan.
    Predict(PredictArgs),
    /// Per-class Dice and HD95 of a model over labelled volumes, with a report.
    Eval(EvalArgs),
}

#[derive(Args, Debug)]
pub struct SegmentArgs {
    #[command(subcommand)]
    pub command: SegmentCommand,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct TrainArgs {
    /// Encoder weights: a pretraining checkpoint (safetensors) or an official `.pt`.
    #[arg(long, value_name = "W")]
    pub checkpoint: Option<PathBuf>,
    /// The baseline: the checkpoint's configuration (or `--preset`) with a
    /// freshly initialised encoder.
    #[arg(long)]
    pub random_init: bool,
    /// The encoder configuration for `--random-init` without a checkpoint.
    #[arg(long)]
    pub preset: Option<String>,
    /// Labelled volumes: a dataset.json with `label`s (or a folder holding
    /// one), or a folder with images/ and labels/ (or imagesTr/ and
    /// labelsTr/) of files of the same names. Default: the built-in phantoms.
    #[arg(long, value_name = "INDEX|DIR")]
    pub data: Option<PathBuf>,
    /// Train the decoder alone; the encoder stays as loaded.
    #[arg(long)]
    pub freeze_encoder: bool,
    /// Train on `max(1, ⌊n·f⌋)` of the n training volumes (seeded draw).
    #[arg(long, default_value_t = 1.0)]
    pub label_fraction: f64,
    /// Epochs (an epoch: every training volume once, one crop each).
    #[arg(long, conflicts_with = "steps")]
    pub epochs: Option<u64>,
    /// Optimizer steps instead of epochs.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Crops per step.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// AdamW learning rate (annealed by a cosine per epoch to lr·1e-3).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-5)]
    pub weight_decay: f64,
    /// Validate (sliding-window Dice on the validation volumes) every this many epochs, and at the end.
    #[arg(long, default_value_t = 5)]
    pub eval_every: u64,
    /// Classes 0…N−1 where the index has no `labels` table (default: BTCV's 14).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Seed of the label subset, the decoder's init, crops, order and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (default: runs/segment-N, the next free N).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder exactly where it stopped (its own
    /// settings; other flags are not taken).
    #[arg(long, value_name = "RUN")]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    /// Where to run: cpu, auto (CUDA when a usable GPU is there, else the
    /// CPU; says which), cuda, or emu (the CUDA kernels on the CPU, slow).
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    #[serde(skip, default = "auto")]
    pub device: DeviceArg,
}

fn auto() -> DeviceArg {
    DeviceArg::Auto
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A segmentation model (`best.safetensors` of `segment train`).
    #[arg(long, value_name = "M")]
    pub model: PathBuf,
    /// The scan: a NIfTI file (either half of a pair) or a DICOM series folder.
    #[arg(long, value_name = "SCAN")]
    pub input: PathBuf,
    /// Where the label map goes (default: <scan name>.labels.nii.gz here).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Also an overlay picture of a few slices.
    #[arg(long, value_name = "overlay.png")]
    pub png: Option<PathBuf>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Where to run: cpu, auto (CUDA when a usable GPU is there, else the
    /// CPU; says which), cuda, or emu (the CUDA kernels on the CPU, slow).
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long, value_name = "M")]
    pub model: PathBuf,
    /// Labelled volumes as for `segment train` (default: the built-in phantoms).
    #[arg(long, value_name = "INDEX|DIR")]
    pub data: Option<PathBuf>,
    /// Which volumes of the data: validation (default), training or all.
    #[arg(long, default_value = "validation")]
    pub split: String,
    /// Output folder (default: runs/segment-eval-N).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Where to run: cpu, auto (CUDA when a usable GPU is there, else the
    /// CPU; says which), cuda, or emu (the CUDA kernels on the CPU, slow).
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
}

pub fn run(a: &SegmentArgs) -> Result<u8> {
    match &a.command {
        SegmentCommand::Train(t) => run_train(t),
        SegmentCommand::Predict(p) => run_predict(p).map(|()| 0),
        SegmentCommand::Eval(e) => run_eval(e).map(|()| 0),
    }
}

/// Labelled volumes from `--data`, their class names, and where they came from.
struct Labelled {
    index: DatasetIndex,
    /// The label table's values and names; `None` when the data has none.
    table: Option<BTreeMap<u8, String>>,
    name: String,
}

fn default_data() -> Result<PathBuf> {
    let cache = super::synth::default_cache()?;
    Ok(cache
        .parent()
        .map(|p| p.join("nifti"))
        .unwrap_or_else(|| PathBuf::from(".")))
}

/// A folder's images and labels paired by file name.
fn pairs(dir: &Path) -> Result<Option<Vec<Entry>>> {
    for (im, lb) in [("imagesTr", "labelsTr"), ("images", "labels")] {
        let (idir, ldir) = (dir.join(im), dir.join(lb));
        if !(idir.is_dir() && ldir.is_dir()) {
            continue;
        }
        let mut names: Vec<PathBuf> = std::fs::read_dir(&idir)
            .map_err(|e| Error::io(&idir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_nifti_path(p) && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for image in names {
            let label = ldir.join(image.file_name().unwrap_or_default());
            if !label.exists() {
                return Err(Error::invalid(
                    "--data",
                    format!("{} has no label map {}", image.display(), label.display()),
                ));
            }
            out.push(Entry {
                image,
                label: Some(label),
            });
        }
        if out.is_empty() {
            return Err(Error::invalid(
                "--data",
                format!("{} holds no NIfTI images", idir.display()),
            ));
        }
        return Ok(Some(out));
    }
    Ok(None)
}

fn read_data(data: Option<&Path>) -> Result<Labelled> {
    let path = match data {
        Some(d) => d.to_path_buf(),
        None => default_data()?,
    };
    let file = if path.is_dir() {
        path.join("dataset.json")
    } else {
        path.clone()
    };
    if path.is_dir() && !file.exists() {
        let Some(mut training) = pairs(&path)? else {
            return Err(Error::invalid(
                "--data",
                format!(
                    "{} holds neither a dataset.json nor images/ and labels/ (or imagesTr/ and labelsTr/)",
                    path.display()
                ),
            ));
        };
        // Without a validation split, the last tenth is held out.
        let held = if training.len() >= 2 {
            training.len().div_ceil(10)
        } else {
            0
        };
        let validation = training.split_off(training.len() - held);
        return Ok(Labelled {
            index: DatasetIndex { training, validation },
            table: None,
            name: path.display().to_string(),
        });
    }
    if !file.exists() {
        return Err(Error::invalid("--data", format!("{} does not exist", file.display())));
    }
    let mut index = DatasetIndex::from_json(&file)?;
    if index.validation.is_empty() && index.training.len() >= 2 {
        let held = index.training.len().div_ceil(10);
        index.validation = index.training.split_off(index.training.len() - held);
    }
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&file, e.to_string()))?;
    let table = match v.get("labels").and_then(|l| l.as_object()) {
        None => None,
        Some(t) => {
            let mut m = BTreeMap::new();
            for (k, name) in t {
                let code: u8 = k
                    .parse()
                    .map_err(|_| Error::format(&file, format!("label table key `{k}` is not a value 0..255")))?;
                m.insert(code, name.as_str().unwrap_or(k).to_string());
            }
            Some(m)
        }
    };
    Ok(Labelled {
        index,
        table,
        name: file.display().to_string(),
    })
}

/// The classes: the data's label table, else `0..n` (`--num-classes`, BTCV's 14 by default).
fn class_table(d: &Labelled, num_classes: Option<usize>) -> Result<ClassTable> {
    match (&d.table, num_classes) {
        (Some(t), Some(n)) if n != t.len() + usize::from(!t.contains_key(&0)) => Err(Error::invalid(
            "--num-classes",
            format!(
                "{n} classes asked for, but the data's label table has {} (background included)",
                t.len() + usize::from(!t.contains_key(&0))
            ),
        )),
        (Some(t), _) => {
            let values: Vec<u8> = t.keys().copied().collect();
            ClassTable::new(&values, |c| t.get(&c).cloned())
        }
        (None, n) => {
            let n = n.unwrap_or(14);
            if !(2..=256).contains(&n) {
                return Err(Error::invalid("--num-classes", format!("{n} must be 2…256")));
            }
            let values: Vec<u8> = (0..n).map(|k| k as u8).collect();
            ClassTable::new(&values, |_| None)
        }
    }
}

fn read_all(entries: &[Entry], table: &ClassTable, window: [usize; 3], what: &str) -> Result<Vec<LabelledVolume>> {
    let t0 = std::time::Instant::now();
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let v = read_labelled(e, table, window)?;
            eprintln!(
                "segment: {what} volume {}/{} {} {:?} ({:.1} s)",
                i + 1,
                entries.len(),
                v.name,
                v.shape,
                t0.elapsed().as_secs_f64()
            );
            Ok(v)
        })
        .collect()
}

/// The encoder's configuration and weights for a new run, and its identity.
fn encoder_for(a: &TrainArgs) -> Result<(ModelConfig, crate::autograd::ParamStore, String)> {
    match (&a.checkpoint, a.random_init) {
        (Some(w), false) => {
            let (c, s) = load_encoder(w, DType::F32)?;
            Ok((c, s, w.display().to_string()))
        }
        (ckpt, true) => {
            let c = match (ckpt, &a.preset) {
                (Some(w), _) => load_checkpoint(w, DType::F32)?.0,
                (None, Some(p)) => ModelConfig::preset(p)?,
                (None, None) => {
                    return Err(Error::invalid(
                        "--random-init",
                        "needs a configuration: give --checkpoint (its config is used) or --preset",
                    ))
                }
            };
            let full = init_params(&c, a.seed, DType::F32)?;
            let mut s = crate::autograd::ParamStore::new();
            for (_, p) in full.iter().filter(|(_, p)| p.name.starts_with("encoder.")) {
                s.add(p.name.clone(), p.value.clone())?;
            }
            Ok((c, s, format!("random init (seed {})", a.seed)))
        }
        (None, false) => Err(Error::invalid(
            "--checkpoint",
            "segmentation starts from encoder weights (or --random-init for the baseline)",
        )),
    }
}

fn run_train(a: &TrainArgs) -> Result<u8> {
    let signals = Signals::install()?;
    let (args, out, mut run) = match &a.resume {
        Some(dir) => {
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let args: TrainArgs = serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))?;
            let run = resume_run(dir)?;
            eprintln!(
                "segment train: resuming {} at step {} of {}",
                dir.display(),
                run.state.step,
                run.state.recipe.steps
            );
            (args, dir.clone(), Some(run))
        }
        None => {
            let (out, _) = claim_folder(a.out.as_deref(), "segment")?;
            (a.clone(), out, None)
        }
    };
    let _lock = FolderLock::acquire(&out, "--out")?;
    let data = read_data(args.data.as_deref())?;
    let table = class_table(&data, args.num_classes)?;
    let keep = label_subset(data.index.training.len(), args.label_fraction, args.seed);
    let train_entries: Vec<Entry> = keep.iter().map(|&i| data.index.training[i].clone()).collect();
    let run = match run.take() {
        Some(r) => {
            if r.state.recipe.classes != table {
                return Err(Error::invalid(
                    "--resume",
                    "the data's classes differ from the run's; was the dataset changed?",
                ));
            }
            r
        }
        None => {
            let (enc_config, mut store, encoder) = encoder_for(&args)?;
            let config = SegConfig::new(enc_config, table.len())?;
            add_decoder_params(&config, &mut store, args.seed, DType::F32)?;
            let spe = train_entries.len().div_ceil(args.batch.max(1)) as u64;
            let steps = match (args.steps, args.epochs) {
                (Some(s), _) => s,
                (None, Some(e)) => e * spe,
                (None, None) => 20 * spe,
            };
            if args.batch == 0 || steps == 0 {
                return Err(Error::invalid(
                    "segment train",
                    "--batch and the run's length must be positive",
                ));
            }
            let recipe = SegRecipe {
                encoder,
                data: data.name.clone(),
                classes: table.clone(),
                label_fraction: args.label_fraction,
                freeze_encoder: args.freeze_encoder,
                batch: args.batch,
                steps,
                steps_per_epoch: spe,
                lr: args.lr,
                min_lr_factor: 1e-3,
                weight_decay: args.weight_decay,
                eval_every: args.eval_every,
                seed: args.seed,
            };
            let json = serde_json::to_string_pretty(&args).map_err(|e| Error::invalid("config", e.to_string()))?;
            write_atomic(&out.join("config.json"), json.as_bytes())?;
            SegRun::new(SegModel::new(config)?, store, recipe)
        }
    };
    let mut run = run;
    if let Some(dev) = select(a.device, false, 0)? {
        run.store = run.store.to_device(&dev)?;
    }
    let window = run.model.config().encoder.superpatch_size;
    let r = &run.state.recipe;
    eprintln!(
        "segment train: {} training volumes (label fraction {}), {} validation; {} classes; encoder {}{}; \
         {} steps of {} crops of {:?} ({} epochs); output {}",
        train_entries.len(),
        r.label_fraction,
        data.index.validation.len(),
        r.classes.len(),
        r.encoder,
        if r.freeze_encoder { " (frozen)" } else { "" },
        r.steps,
        r.batch,
        window,
        r.epochs(),
        out.display()
    );
    let train_volumes = read_all(&train_entries, &table, window, "training")?;
    let val_volumes = read_all(&data.index.validation, &table, window, "validation")?;
    let io = SegTrainIo {
        train: &train_volumes,
        val: &val_volumes,
        out: &out,
        interrupt: signals.stop.clone(),
        keep: 3,
    };
    let report = train(&io, &mut run)?;
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "undefined".into());
    if let Some((name, status)) = signals.received() {
        eprintln!(
            "stopped by {name} after step {}; checkpoint {}; continue with: nemesis segment train --resume {}",
            report.steps,
            report.checkpoint.display(),
            out.display()
        );
        return Ok(status);
    }
    println!(
        "segment train: {} steps; last validation mean Dice {}; best {} at step {}",
        report.steps,
        fmt(report.last_dice),
        fmt(report.best_dice),
        report.best_step.map(|s| s.to_string()).unwrap_or_else(|| "–".into())
    );
    println!(
        "wrote {}/best.safetensors, metrics.jsonl, curves.png; next: nemesis segment eval --model {}/best.safetensors",
        out.display(),
        out.display()
    );
    Ok(0)
}

/// The model of `path`, on the device `--device` picks.
fn predictor(path: &Path, batch: usize, device: DeviceArg) -> Result<Predictor> {
    let mut ck = load_seg(path, DType::F32)?;
    if let Some(dev) = select(device, false, 0)? {
        ck.store = ck.store.to_device(&dev)?;
    }
    Predictor::new(ck, batch)
}

fn run_predict(a: &PredictArgs) -> Result<()> {
    let p = predictor(&a.model, a.batch, a.device)?;
    let table = p.classes();
    let (v, image, classes) = p.predict_scan(&a.input)?;
    let output = a.output.clone().unwrap_or_else(|| {
        let name = a
            .input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = name
            .trim_end_matches(".gz")
            .trim_end_matches(".nii")
            .trim_end_matches(".hdr");
        let stem = stem.trim_end_matches(".img");
        PathBuf::from(format!("{stem}.labels.nii.gz"))
    });
    write_prediction(&output, &v, &classes, &table)?;
    let mut counts = vec![0usize; table.len()];
    classes.iter().for_each(|&c| counts[c as usize] += 1);
    let found: Vec<String> = (1..table.len())
        .filter(|&k| counts[k] > 0)
        .map(|k| format!("{} {}", table.names[k], counts[k]))
        .collect();
    println!(
        "segment predict: {} {:?} → {} (voxels per class: {})",
        a.input.display(),
        v.shape,
        output.display(),
        if found.is_empty() {
            "none labelled".into()
        } else {
            found.join(", ")
        }
    );
    if let Some(png) = &a.png {
        overlay_png(png, &image, &classes, None, v.shape)?;
        println!("wrote {}", png.display());
    }
    Ok(())
}

fn run_eval(a: &EvalArgs) -> Result<()> {
    let p = predictor(&a.model, a.batch, a.device)?;
    let data = read_data(a.data.as_deref())?;
    let entries: Vec<Entry> = match a.split.as_str() {
        "validation" => data.index.validation.clone(),
        "training" => data.index.training.clone(),
        "all" => data
            .index
            .training
            .iter()
            .chain(&data.index.validation)
            .cloned()
            .collect(),
        other => {
            return Err(Error::invalid(
                "--split",
                format!("`{other}`: choose validation, training or all"),
            ))
        }
    };
    if entries.is_empty() {
        return Err(Error::invalid(
            "--split",
            format!("the data has no {} volumes", a.split),
        ));
    }
    if let Some(t) = &data.table {
        let model = p.classes();
        let theirs: Vec<u8> = std::iter::once(0)
            .chain(t.keys().copied().filter(|&k| k != 0))
            .collect();
        if theirs != model.values {
            return Err(Error::invalid(
                "segment eval",
                format!(
                    "the model has {} classes (label values {:?}), the data's table {} ({theirs:?})",
                    model.len(),
                    model.values,
                    theirs.len()
                ),
            ));
        }
    }
    let (out, _) = claim_folder(a.out.as_deref(), "segment-eval")?;
    let _lock = FolderLock::acquire(&out, "--out")?;
    let r = evaluate(&p, &entries, &a.model.display().to_string(), &data.name, &out)?;
    let fmt = |v: Option<f64>, d: usize| v.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "undefined".into());
    // HD95 needs voxels of the class in both maps; say so where it has none.
    let mm = |v: Option<f64>| {
        v.map(|v| format!("{v:.2} mm"))
            .unwrap_or_else(|| "undefined (the class is missing from the prediction or the truth)".into())
    };
    println!(
        "segment eval: {} volumes; mean Dice {}, mean HD95 {}",
        r.volumes.len(),
        fmt(r.mean_dice, 4),
        mm(r.mean_hd95)
    );
    for c in &r.classes {
        println!("  {:<14} Dice {}  HD95 {}", c.class, fmt(c.dice, 4), mm(c.hd95));
    }
    println!(
        "wrote {}/report.json, report.md, overlay.png and labels/",
        out.display()
    );
    Ok(())
}
