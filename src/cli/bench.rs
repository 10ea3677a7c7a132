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
    /// Kernel microbenchmarks (CUDA; issues 7 and 8).
    Kernels(super::Pending),
    /// Whole training steps (issue 8).
    Step(super::Pending),
}

#[derive(Args, Debug)]
pub struct DataArgs {
    /// A cache folder made by `nemesis prepare` (default: the built-in synthetic set).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Superpatch edge in voxels.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
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
        BenchWhat::Kernels(_) => super::pending("`nemesis bench kernels`", "issues 7 and 8 (CUDA kernels and speed)"),
        BenchWhat::Step(_) => super::pending("`nemesis bench step`", "issue 8 (speed)"),
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
