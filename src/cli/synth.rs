//! `nemesis synth`: synthetic abdominal CT phantoms with BTCV-style label
//! maps, and the built-in default dataset that `pretrain`, `probe` and
//! `bench data` use when given no data.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clap::Args;
use rayon::prelude::*;
use serde_json::json;

use super::prepare::prepare_dataset;
use crate::data::synth::{phantom, PhantomOptions};
use crate::data::{write_series, write_volume, CacheManifest, DatasetIndex, VoxelData};
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::progress::Progress;

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output folder: images/, labels/ and dataset.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Phantoms to generate; the last fifth (at least one) are listed for validation.
    #[arg(long, default_value_t = 30)]
    pub count: usize,
    /// Seed of the phantoms' anatomy and noise: the same seed, the same volumes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Volume size in voxels, D,H,W (D = slices, superior–inferior; each
    /// side 1 to 1024) (default: 96,160,160, at 2.5 × 0.8 × 0.8 mm).
    #[arg(long, value_name = "D,H,W", value_parser = parse_size)]
    pub size: Option<[usize; 3]>,
    /// How the images are written: nifti (images/phantom_NNNN.nii.gz) or
    /// dicom (images/phantom_NNNN/, a CT series of one file a slice, as a
    /// scanner exports it); label maps are NIfTI either way.
    #[arg(long, value_enum, default_value_t = ImageFormat::Nifti)]
    pub format: ImageFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Nifti,
    Dicom,
}

fn parse_size(s: &str) -> std::result::Result<[usize; 3], String> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>().map_err(|e| format!("`{p}`: {e}")))
        .collect::<std::result::Result<_, _>>()?;
    match v.as_slice() {
        [d, h, w] if *d > 0 && *h > 0 && *w > 0 => Ok([*d, *h, *w]),
        _ => Err(format!("expected three positive sizes D,H,W, got `{s}`")),
    }
}

/// BTCV organ names by label value (MODEL.md §12).
pub const ORGANS: [(u8, &str); 8] = [
    (8, "aorta"),
    (4, "gallbladder"),
    (1, "spleen"),
    (3, "left kidney"),
    (2, "right kidney"),
    (6, "liver"),
    (7, "stomach"),
    (11, "pancreas"),
];

/// Writes `count` phantoms and `dataset.json` (the last fifth, at least one,
/// held out for validation). Existing phantom files are kept: the same seed
/// and index always give the same phantom.
pub fn synthesize(out: &Path, count: usize, seed: u64, size: Option<[usize; 3]>, format: ImageFormat) -> Result<()> {
    if count == 0 {
        return Err(Error::invalid("synth", "--count must be at least 1"));
    }
    let mut opts = PhantomOptions::default();
    if let Some(s) = size {
        opts.size = s;
    }
    for sub in ["images", "labels"] {
        let d = out.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    let name = |i: usize| format!("phantom_{i:04}.nii.gz");
    let image = |i: usize| match format {
        ImageFormat::Nifti => name(i),
        ImageFormat::Dicom => format!("phantom_{i:04}"),
    };
    let progress = Mutex::new(Progress::new("synth", count as u64));
    (0..count).into_par_iter().try_for_each(|i| -> Result<()> {
        let (img, lab) = (out.join("images").join(image(i)), out.join("labels").join(name(i)));
        if !(img.exists() && lab.exists()) {
            let p = phantom(seed, i as u64, &opts).map_err(|e| Error::invalid("synth", e.to_string()))?;
            match format {
                ImageFormat::Nifti => write_volume(&img, p.size, p.spacing, VoxelData::I16(&p.hu))?,
                ImageFormat::Dicom => {
                    write_series(&img, p.size, p.spacing, &p.hu, [seed, i as u64], "synthetic phantom")?
                }
            }
            write_volume(&lab, p.size, p.spacing, VoxelData::U8(&p.labels))?;
        }
        if let Ok(mut p) = progress.lock() {
            p.inc(&image(i));
        }
        Ok(())
    })?;
    if let Ok(p) = progress.lock() {
        p.finish();
    }
    let held_out = if count >= 2 { (count / 5).max(1) } else { 0 };
    let entry = |i: usize| json!({"image": format!("images/{}", image(i)), "label": format!("labels/{}", name(i))});
    let index = json!({
        "description": "synthetic abdominal CT phantoms made by `nemesis synth`",
        "seed": seed,
        "size": opts.size,
        // Written as the f32 values they are (0.8, not 0.800000011920929).
        "spacing": opts.spacing.map(|s| s.to_string().parse::<f64>().unwrap_or(s as f64)),
        "labels": ORGANS.iter().map(|(v, n)| (v.to_string(), n.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
        "training": (0..count - held_out).map(entry).collect::<Vec<_>>(),
        "validation": (count - held_out..count).map(entry).collect::<Vec<_>>(),
    });
    let path = out.join("dataset.json");
    let text = serde_json::to_string_pretty(&index).map_err(|e| Error::format(&path, e.to_string()))?;
    write_atomic(&path, text.as_bytes())
}

pub fn run(a: &SynthArgs) -> Result<()> {
    synthesize(&a.out, a.count, a.seed, a.size, a.format)?;
    println!(
        "wrote {} phantoms and {}",
        a.count,
        a.out.join("dataset.json").display()
    );
    Ok(())
}

/// Where the built-in default data lives: `$NEMESIS_DATA`, else
/// `$XDG_CACHE_HOME/nemesis`, else `~/.cache/nemesis`, else `./.nemesis`.
pub fn data_home() -> PathBuf {
    if let Some(d) = std::env::var_os("NEMESIS_DATA") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("nemesis");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("nemesis"),
        None => PathBuf::from(".nemesis"),
    }
}

/// The default synthetic dataset: generated and prepared once, then reused.
/// Returns the cache folder.
pub fn default_cache() -> Result<PathBuf> {
    let base = data_home().join("synthetic-v1");
    let cache = base.join("cache");
    if let Ok(m) = CacheManifest::load(&cache) {
        if !m.entries.is_empty() && m.failures.is_empty() {
            return Ok(cache);
        }
    }
    let raw = base.join("nifti");
    eprintln!("building the default synthetic dataset in {} (once)", base.display());
    synthesize(&raw, 30, 42, None, ImageFormat::Nifti)?;
    let index = DatasetIndex::from_json(&raw.join("dataset.json"))?;
    let s = prepare_dataset(&index, &cache, rayon::current_num_threads(), false)?;
    if !s.manifest.failures.is_empty() {
        return Err(Error::invalid(
            "default dataset",
            format!(
                "{} phantoms failed to prepare: {}",
                s.manifest.failures.len(),
                s.manifest.failures[0].error
            ),
        ));
    }
    Ok(cache)
}
