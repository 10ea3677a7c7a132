//! `nemesis prepare`: NIfTI volumes → a folder of memory-mappable cache files.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clap::Args;
use rayon::prelude::*;

use crate::data::{
    file_stamp, read_volume, write_cache, CacheManifest, CachedVolume, DatasetIndex, Entry, Failure, ManifestEntry,
    Split,
};
use crate::error::{Error, Result};
use crate::progress::Progress;

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["index", "dir"])))]
pub struct PrepareArgs {
    /// A dataset index JSON (`training`/`validation` lists of {image, label}).
    #[arg(long, value_name = "INDEX.json")]
    pub index: Option<PathBuf>,
    /// A folder of NIfTI volumes (all used for training).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The cache folder to fill (created if needed; a finished entry is kept).
    #[arg(long, value_name = "CACHE")]
    pub out: PathBuf,
    /// Volumes converted at once (default: the number of cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Also re-check the checksum of entries that are already cached.
    #[arg(long)]
    pub verify: bool,
}

/// A cache file name that is stable for a source path and unique across
/// folders holding files of the same name.
fn cache_name(image: &Path) -> String {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    let stem = [".nii.gz", ".nii", ".hdr"]
        .iter()
        .find_map(|ext| lower.ends_with(ext).then(|| &name[..name.len() - ext.len()]))
        .unwrap_or(&name);
    format!(
        "volumes/{stem}-{:08x}.nmc",
        crc32fast::hash(image.to_string_lossy().as_bytes())
    )
}

enum Outcome {
    Prepared(ManifestEntry),
    Kept(ManifestEntry),
}

fn prepare_one(entry: &Entry, split: Split, out: &Path, verify: bool) -> Result<Outcome> {
    let file = cache_name(&entry.image);
    let path = out.join(&file);
    let source = entry.image.display().to_string();
    let manifest_entry = |shape, spacing| ManifestEntry {
        split,
        image: source.clone(),
        label: entry.label.as_ref().map(|l| l.display().to_string()),
        file: file.clone(),
        shape,
        spacing,
        warnings: Vec::new(),
    };
    if let Ok(c) = CachedVolume::open(&path) {
        let h = c.header();
        let same_label = h.label_source.as_deref() == entry.label.as_ref().map(|l| l.display().to_string()).as_deref();
        let stamps: Vec<(u64, u64)> = std::iter::once(entry.image.as_path())
            .chain(entry.label.as_deref())
            .map(file_stamp)
            .collect();
        let kept = manifest_entry(h.shape, h.spacing);
        let fresh = h.source == source && same_label && h.source_stamp == stamps;
        if fresh && kept.is_sound() && (!verify || c.verify().is_ok()) {
            return Ok(Outcome::Kept(kept));
        }
    }
    let volume = read_volume(&entry.image)?;
    volume.check_ct_range()?;
    let label = entry.label.as_ref().map(|l| read_volume(l)).transpose()?;
    let h = write_cache(&path, &volume, label.as_ref())?;
    let mut e = manifest_entry(h.shape, h.spacing);
    e.warnings = volume.info.warnings.iter().map(|w| format!("{source}: {w}")).collect();
    Ok(Outcome::Prepared(e))
}

/// What `prepare_dataset` did.
pub struct PrepareSummary {
    pub manifest: CacheManifest,
    /// Volumes the index lists more than once: prepared once, said once.
    pub duplicates: Vec<String>,
    pub prepared: usize,
    pub kept: usize,
}

pub fn run(a: &PrepareArgs) -> Result<()> {
    let index = match (&a.index, &a.dir) {
        (Some(i), _) => DatasetIndex::from_json(i)?,
        (None, Some(d)) => DatasetIndex::from_dir(d)?,
        (None, None) => return Err(Error::invalid("prepare", "give --index or --dir")),
    };
    let jobs = a.jobs.unwrap_or_else(rayon::current_num_threads).max(1);
    let s = prepare_dataset(&index, &a.out, jobs, a.verify)?;
    let manifest = &s.manifest;
    let train = manifest.entries.iter().filter(|e| e.split == Split::Training).count();
    println!(
        "{}: {} prepared, {} already cached, {} failed ({train} training, {} validation volumes ready)",
        a.out.display(),
        s.prepared,
        s.kept,
        manifest.failures.len(),
        manifest.entries.len() - train
    );
    for w in manifest.entries.iter().flat_map(|e| &e.warnings).chain(&s.duplicates) {
        println!("  warning: {w}");
    }
    for f in &manifest.failures {
        println!("  failed: {}", f.error);
    }
    if manifest.entries.is_empty() {
        return Err(Error::invalid("prepare", "no volume could be prepared"));
    }
    Ok(())
}

/// The index's entries in order, each volume once (by its canonical path):
/// a volume listed twice would be written twice at once by two workers.
/// The later listings are named in the second list.
fn deduplicated(index: &DatasetIndex) -> (Vec<(Entry, Split)>, Vec<String>) {
    let mut seen = std::collections::HashMap::new();
    let mut work = Vec::new();
    let mut repeats: Vec<(String, usize, Split)> = Vec::new();
    let all = index
        .training
        .iter()
        .map(|e| (e, Split::Training))
        .chain(index.validation.iter().map(|e| (e, Split::Validation)));
    for (entry, split) in all {
        let key = std::fs::canonicalize(&entry.image).unwrap_or_else(|_| entry.image.clone());
        match seen.get(&key) {
            Some(&first) => {
                let name = entry.image.display().to_string();
                match repeats.iter_mut().find(|r| r.0 == name) {
                    Some(r) => r.1 += 1,
                    None => repeats.push((name, 2, first)),
                }
            }
            None => {
                seen.insert(key, split);
                work.push((entry.clone(), split));
            }
        }
    }
    let said = repeats
        .into_iter()
        .map(|(name, n, split)| {
            format!(
                "{name} is listed {n} times; prepared once, for {}",
                format!("{split:?}").to_lowercase()
            )
        })
        .collect();
    (work, said)
}

/// Converts every entry of `index` into `out`, `jobs` at a time, keeping
/// entries already cached; a volume that fails is listed, not fatal.
pub fn prepare_dataset(index: &DatasetIndex, out: &Path, jobs: usize, verify: bool) -> Result<PrepareSummary> {
    std::fs::create_dir_all(out.join("volumes")).map_err(|e| Error::io(out, e))?;
    let (work, duplicates) = deduplicated(index);
    let progress = Mutex::new(Progress::new("prepare", work.len() as u64));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .build()
        .map_err(|e| Error::invalid("--jobs", e.to_string()))?;
    let results: Vec<std::result::Result<Outcome, Failure>> = pool.install(|| {
        work.par_iter()
            .map(|(entry, split)| {
                let r = prepare_one(entry, *split, out, verify).map_err(|e| Failure {
                    image: entry.image.display().to_string(),
                    error: e.to_string(),
                });
                if let Ok(mut p) = progress.lock() {
                    if let Err(f) = &r {
                        p.println(&format!("failed: {}", f.error));
                    }
                    let name = entry
                        .image
                        .file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_default();
                    p.inc(&name);
                }
                r
            })
            .collect()
    });
    if let Ok(p) = progress.lock() {
        p.finish();
    }
    let mut manifest = CacheManifest::default();
    let (mut prepared, mut kept) = (0, 0);
    for r in results {
        match r {
            Ok(Outcome::Prepared(e)) => {
                prepared += 1;
                manifest.entries.push(e);
            }
            Ok(Outcome::Kept(e)) => {
                kept += 1;
                manifest.entries.push(e);
            }
            Err(f) => manifest.failures.push(f),
        }
    }
    manifest.save(out)?;
    Ok(PrepareSummary {
        manifest,
        duplicates,
        prepared,
        kept,
    })
}
