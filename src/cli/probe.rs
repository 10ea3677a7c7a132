//! `nemesis probe`: the organ-presence linear probe of MODEL.md §12.

use std::path::{Path, PathBuf};

use clap::Args;

use super::device::{select, DeviceArg};
use crate::data::DatasetIndex;
use crate::error::{Error, Result};
use crate::io::{claim_folder, FolderLock, LOCK_FILE};
use crate::model::{init_params, load_checkpoint, ModelConfig};
use crate::probe::{self, ProbeOptions, BTCV_LABELS};
use crate::tensor::DType;

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Encoder weights (a `nemesis` checkpoint or a converted official one).
    #[arg(long, value_name = "W.safetensors")]
    pub checkpoint: Option<PathBuf>,
    /// A dataset.json with labelled training and validation volumes, or a
    /// folder holding one (default: the built-in synthetic phantoms).
    #[arg(long, value_name = "INDEX|DIR")]
    pub data: Option<PathBuf>,
    /// Train on `max(1, ⌊n·f⌋)` of the n training volumes (seeded draw).
    #[arg(long, default_value_t = 1.0)]
    pub label_fraction: f64,
    /// The random-encoder baseline: the checkpoint's configuration (or
    /// `--preset`) with freshly initialised weights.
    #[arg(long)]
    pub random_init: bool,
    /// The configuration for `--random-init` without a checkpoint.
    #[arg(long)]
    pub preset: Option<String>,
    /// Train the encoder too (slow; the frozen probe is the benchmark).
    #[arg(long)]
    pub finetune: bool,
    /// Passes of the probe's training over the training tiles.
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Evaluate on the validation tiles every this many epochs (and at the end).
    #[arg(long, default_value_t = 5)]
    pub eval_every: usize,
    /// Tiles per step of the probe's training, and tiles encoded at once.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// The probe's AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Seed of the label subset, the head's init and the tile order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tile size D,H,W; must be the encoder's superpatch size (the default).
    #[arg(long, value_delimiter = ',')]
    pub tile: Option<Vec<usize>>,
    /// Output folder (default: runs/probe-N, the next free N). Frozen
    /// features are cached here and reused by a rerun.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where to run: cpu, auto (CUDA when a usable GPU is there, else the
    /// CPU; says which), cuda, or emu (the CUDA kernels on the CPU, slow).
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
}

/// The index, and the label values its label maps may hold: the keys of the
/// index's `labels` table plus background, else BTCV's 0..=13.
fn read_index(path: &Path) -> Result<(DatasetIndex, Vec<u8>, PathBuf)> {
    let file = if path.is_dir() {
        path.join("dataset.json")
    } else {
        path.to_path_buf()
    };
    if !file.exists() {
        return Err(Error::invalid(
            "--data",
            format!(
                "{} does not exist (give a dataset.json or a folder holding one)",
                file.display()
            ),
        ));
    }
    let index = DatasetIndex::from_json(&file)?;
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&file, e.to_string()))?;
    let allowed = match v.get("labels").and_then(|l| l.as_object()) {
        Some(table) => {
            let mut codes = vec![0u8];
            for k in table.keys() {
                let code: u8 = k
                    .parse()
                    .map_err(|_| Error::format(&file, format!("label table key `{k}` is not a value 0..255")))?;
                codes.push(code);
            }
            codes.sort_unstable();
            codes.dedup();
            codes
        }
        None => BTCV_LABELS.collect(),
    };
    Ok((index, allowed, file))
}

/// A short identity of a checkpoint file: path, size and CRC-32.
fn file_id(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(format!(
        "{} ({} bytes, crc32 {:08x})",
        path.display(),
        bytes.len(),
        crc32fast::hash(&bytes)
    ))
}

pub fn run(a: &ProbeArgs) -> Result<()> {
    let device = select(a.device, false, 0)?;
    let (config, store, encoder_id) = match (&a.checkpoint, a.random_init) {
        (Some(w), false) => {
            let (c, s) = load_checkpoint(w, DType::F32)?;
            (c, s, file_id(w)?)
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
            let s = init_params(&c, a.seed, DType::F32)?;
            (c, s, format!("random init (seed {})", a.seed))
        }
        (None, false) => {
            return Err(Error::invalid(
                "--checkpoint",
                "the probe needs encoder weights (or --random-init for the random baseline)",
            ))
        }
    };
    if let Some(t) = &a.tile {
        if t.as_slice() != config.superpatch_size {
            return Err(Error::invalid(
                "--tile",
                format!(
                    "tiles of {t:?} asked for, but the encoder was built for superpatches of {:?}; \
                     leave --tile out or use a checkpoint of that size",
                    config.superpatch_size
                ),
            ));
        }
    }
    let data = match &a.data {
        Some(d) => d.clone(),
        None => {
            let cache = super::synth::default_cache()?;
            cache
                .parent()
                .map(|p| p.join("nifti"))
                .unwrap_or_else(|| PathBuf::from("."))
        }
    };
    let (index, allowed_labels, index_file) = read_index(&data)?;
    let (out, created) = claim_folder(a.out.as_deref(), "probe")?;
    let lock = FolderLock::acquire(&out, "--out")?;
    eprintln!(
        "probe: {} training and {} validation volumes from {}; encoder {encoder_id}; output {}",
        index.training.len(),
        index.validation.len(),
        index_file.display(),
        out.display()
    );
    let opts = ProbeOptions {
        index,
        data_name: index_file.display().to_string(),
        allowed_labels,
        encoder_id,
        label_fraction: a.label_fraction,
        finetune: a.finetune,
        epochs: a.epochs,
        eval_every: a.eval_every,
        batch: a.batch,
        lr: a.lr,
        seed: a.seed,
        out: out.clone(),
        device,
    };
    let r = match probe::run(&opts, config, store) {
        Ok(r) => r,
        Err(e) => {
            // A folder this command made and wrote nothing into goes.
            let only_lock = std::fs::read_dir(&out)
                .map(|d| d.flatten().all(|e| e.file_name() == LOCK_FILE))
                .unwrap_or(false);
            if created && only_lock {
                let _ = std::fs::remove_dir_all(&out);
            }
            return Err(e);
        }
    };
    drop(lock);
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "undefined".into());
    println!(
        "probe: {} training tiles, {} validation tiles; last evaluation (epoch {}): mean AUROC {}, mean F1 {:.4}; \
         best mean AUROC {} at epoch {} (chosen on the validation set)",
        r.train_tiles,
        r.val_tiles,
        r.last.epoch,
        fmt(r.last.mean_auroc),
        r.last.mean_f1,
        fmt(r.best.mean_auroc),
        r.best.epoch
    );
    println!(
        "wrote {}/report.json, report.md, roc.png and predictions.safetensors",
        r.out.display()
    );
    Ok(())
}
