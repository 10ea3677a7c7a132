//! The cache, `prepare`, the crop sampler and the loader.

use std::path::{Path, PathBuf};
use std::process::Command;

use nemesis::data::{
    hu_window, read_volume, sample_crop, write_cache, write_volume, CacheManifest, CachedVolume, CropSpec, EpochPlan,
    Loader, Position, Split, VoxelData,
};
use nemesis::rng::RngStream;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nemesis-data-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A body-like volume: soft tissue (40 HU) in a box, air (−1000) around it.
fn body(shape: [usize; 3], seed: u64) -> Vec<i16> {
    let [d, h, w] = shape;
    let r = RngStream::new(seed, 1);
    (0..d * h * w)
        .map(|i| {
            let (y, x) = ((i / w) % h, i % w);
            let inside = y >= h / 4 && y < 3 * h / 4 && x >= w / 4 && x < 3 * w / 4;
            if inside {
                40 + (r.bits(i as u64) % 20) as i16
            } else {
                -1000
            }
        })
        .collect()
}

fn write_nifti(dir: &Path, name: &str, shape: [usize; 3], seed: u64) -> PathBuf {
    let p = dir.join(name);
    write_volume(&p, shape, [2.0, 0.8, 0.8], VoxelData::I16(&body(shape, seed))).unwrap();
    p
}

fn cache_of(dir: &Path, name: &str, shape: [usize; 3], seed: u64) -> PathBuf {
    let nii = write_nifti(dir, &format!("{name}.nii"), shape, seed);
    let out = dir.join(format!("{name}.nmc"));
    write_cache(&out, &read_volume(&nii).unwrap(), None).unwrap();
    out
}

#[test]
fn cache_round_trip_and_damage() {
    let d = tmp("cache");
    let shape = [6, 10, 12];
    let nii = write_nifti(&d, "a.nii.gz", shape, 1);
    let lab = d.join("a_label.nii.gz");
    let labels: Vec<u8> = (0..720).map(|i| (i % 3) as u8).collect();
    write_volume(&lab, shape, [2.0, 0.8, 0.8], VoxelData::U8(&labels)).unwrap();
    let out = d.join("a.nmc");
    let v = read_volume(&nii).unwrap();
    let h = write_cache(&out, &v, Some(&read_volume(&lab).unwrap())).unwrap();
    assert_eq!(h.shape, shape);
    let c = CachedVolume::open(&out).unwrap();
    c.verify().unwrap();
    assert_eq!(c.hu(), body(shape, 1).as_slice());
    assert_eq!(c.labels().unwrap(), labels.as_slice());
    assert_eq!(c.header().spacing, [2.0, 0.8, 0.8]);

    // A label map of another shape is refused, naming both files.
    let other = d.join("b_label.nii.gz");
    write_volume(&other, [6, 10, 11], [1.0; 3], VoxelData::U8(&labels[..660])).unwrap();
    let e = write_cache(&d.join("b.nmc"), &v, Some(&read_volume(&other).unwrap()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("b_label.nii.gz") && e.contains("[6, 10, 11]") && e.contains("[6, 10, 12]"),
        "{e}"
    );

    // Truncated and bit-flipped files.
    let bytes = std::fs::read(&out).unwrap();
    let cut = d.join("cut.nmc");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let e = CachedVolume::open(&cut).err().unwrap().to_string();
    assert!(e.contains("cut.nmc") && e.contains("truncated"), "{e}");
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let flip = d.join("flip.nmc");
    std::fs::write(&flip, &flipped).unwrap();
    let e = CachedVolume::open(&flip).unwrap().verify().unwrap_err().to_string();
    assert!(e.contains("checksum"), "{e}");
    std::fs::write(d.join("junk.nmc"), b"hello").unwrap();
    assert!(CachedVolume::open(&d.join("junk.nmc")).is_err());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn prepare_skips_bad_files_resumes_and_writes_a_manifest() {
    let d = tmp("prepare");
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_nifti(&src, "one.nii.gz", [6, 10, 12], 1);
    write_nifti(&src, "two.nii", [7, 9, 8], 2);
    let good = src.join("three.nii.gz");
    write_nifti(&src, "three.nii.gz", [5, 8, 8], 3);
    let full = std::fs::read(&good).unwrap();
    std::fs::write(src.join("broken.nii.gz"), &full[..full.len() / 2]).unwrap();
    let index = d.join("dataset.json");
    std::fs::write(
        &index,
        r#"{"training": [{"image": "src/one.nii.gz"}, {"image": "src/broken.nii.gz"}, {"image": "src/missing.nii.gz"}, "src/two.nii"],
            "validation": [{"image": "src/three.nii.gz", "label": null}]}"#,
    )
    .unwrap();
    let cache = d.join("cache");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_nemesis"))
            .args([
                "prepare",
                "--index",
                index.to_str().unwrap(),
                "--out",
                cache.to_str().unwrap(),
                "--jobs",
                "2",
            ])
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 prepared") && text.contains("2 failed"), "{text}");
    assert!(
        text.contains("broken.nii.gz") && text.contains("missing.nii.gz"),
        "{text}"
    );
    let m = CacheManifest::load(&cache).unwrap();
    assert_eq!(m.files(&cache, Split::Training).len(), 2);
    assert_eq!(m.files(&cache, Split::Validation).len(), 1);
    assert_eq!(m.failures.len(), 2);
    for f in m.files(&cache, Split::Training) {
        CachedVolume::open(&f).unwrap().verify().unwrap();
    }
    // A second run keeps what is there.
    let again = run();
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.contains("0 prepared") && text.contains("3 already cached"),
        "{text}"
    );
    // A source that changes is prepared again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write_nifti(&src, "two.nii", [7, 9, 9], 4);
    let third = run();
    let text = String::from_utf8_lossy(&third.stdout);
    assert!(
        text.contains("1 prepared") && text.contains("2 already cached"),
        "{text}"
    );
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("volumes"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn crops_stay_in_bounds_pad_and_follow_the_air_rule() {
    let d = tmp("crop");
    let vol_path = cache_of(&d, "v", [20, 24, 24], 5);
    let vol = CachedVolume::open(&vol_path).unwrap();
    let spec = CropSpec::new([8, 8, 8]);
    let mut out = vec![0.0f32; 512];
    let rng = RngStream::new(3, 3);
    for s in 0..50u64 {
        let c = sample_crop(
            vol.hu(),
            vol.shape(),
            &spec,
            rng,
            s * CropSpec::DRAWS_PER_CROP,
            &mut out,
        );
        assert!(c.origin[0] <= 12 && c.origin[1] <= 16 && c.origin[2] <= 16, "{c:?}");
        assert!(c.mean >= spec.air_threshold || c.tries == spec.max_tries, "{c:?}");
        // The crop holds the windowed voxels at its origin.
        let hu = vol.hu();
        let (z, y, x) = (c.origin[0] + 1, c.origin[1] + 2, c.origin[2] + 3);
        assert_eq!(out[(8 + 2) * 8 + 3], hu_window(hu[(z * 24 + y) * 24 + x] as f32));
        let mut again = vec![0.0f32; 512];
        assert_eq!(
            sample_crop(
                vol.hu(),
                vol.shape(),
                &spec,
                rng,
                s * CropSpec::DRAWS_PER_CROP,
                &mut again
            ),
            c
        );
        assert_eq!(again, out, "same stream and index, same crop");
    }
    // A volume smaller than the crop is zero-padded at the far ends.
    let small = CachedVolume::open(&cache_of(&d, "s", [4, 6, 5], 6)).unwrap();
    let c = sample_crop(small.hu(), small.shape(), &spec, rng, 0, &mut out);
    assert_eq!(c.origin, [0, 0, 0]);
    assert!(
        out[(4 * 8) * 8..].iter().all(|&v| v == 0.0),
        "slices past the volume are zero"
    );
    assert_eq!(out[7], 0.0, "columns past the volume are zero");
    // All air: every try fails the rule, the best is kept, nothing is all-zero by fiat.
    let air_path = d.join("air.nii");
    write_volume(&air_path, [10, 10, 10], [1.0; 3], VoxelData::I16(&vec![-1000; 1000])).unwrap();
    write_cache(&d.join("air.nmc"), &read_volume(&air_path).unwrap(), None).unwrap();
    let air = CachedVolume::open(&d.join("air.nmc")).unwrap();
    let c = sample_crop(air.hu(), air.shape(), &spec, rng, 0, &mut out);
    assert_eq!(c.tries, 10);
    // Mostly air with a bright corner: the best try is the one kept.
    let mut corner = vec![-1000i16; 1000];
    for z in 6..10 {
        for y in 6..10 {
            for x in 6..10 {
                corner[(z * 10 + y) * 10 + x] = 250;
            }
        }
    }
    let cp = d.join("corner.nii");
    write_volume(&cp, [10, 10, 10], [1.0; 3], VoxelData::I16(&corner)).unwrap();
    write_cache(&d.join("corner.nmc"), &read_volume(&cp).unwrap(), None).unwrap();
    let cv = CachedVolume::open(&d.join("corner.nmc")).unwrap();
    let mut best_possible = 0.0f32;
    for s in 0..20u64 {
        let c = sample_crop(cv.hu(), cv.shape(), &spec, rng, s * CropSpec::DRAWS_PER_CROP, &mut out);
        let mean = out.iter().sum::<f32>() / 512.0;
        assert!((mean - c.mean).abs() < 1e-5, "the returned crop is the one described");
        best_possible = best_possible.max(c.mean);
    }
    assert!(best_possible > 0.05);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn loader_is_deterministic_restorable_and_ordered() {
    let d = tmp("loader");
    let files: Vec<PathBuf> = (0..5)
        .map(|i| cache_of(&d, &format!("v{i}"), [12, 16, 16], i))
        .collect();
    let mut with_missing = files.clone();
    with_missing.push(d.join("gone.nmc"));
    let (plan, bad) = EpochPlan::new(with_missing, CropSpec::new([8, 8, 8]), 2, 2, 7).unwrap();
    assert_eq!(bad.len(), 1, "the missing file is reported, not fatal");
    assert_eq!(plan.batches_per_epoch(), 5);
    let direct: Vec<_> = (0..12)
        .map(|n| plan.make_batch(plan.advance(Position::default(), n)).unwrap())
        .collect();
    // Two crops of each volume in a row, every volume once per epoch.
    let vols: Vec<usize> = direct[..5].iter().flat_map(|b| b.sources.iter().map(|s| s.0)).collect();
    for pair in vols.chunks(2) {
        assert_eq!(pair[0], pair[1]);
    }
    let mut seen = vols.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5);
    assert_ne!(plan.order(0), plan.order(1), "each epoch is shuffled anew");

    let data = |b: &nemesis::data::Batch| match &b.data {
        nemesis::data::BatchData::F32(v) => v.clone(),
        _ => panic!("f32"),
    };
    for threads in [1, 3] {
        let mut l = Loader::start(plan.clone(), Position::default(), threads, 2);
        for want in &direct {
            let got = l.next_batch().unwrap();
            assert_eq!(got.position, want.position);
            assert_eq!(data(&got), data(want), "{threads} threads");
        }
    }
    // Restarting at a saved position continues the same sequence.
    let at = Position { epoch: 1, batch: 2 };
    let mut l = Loader::start(plan.clone(), at, 2, 3);
    assert_eq!(data(&l.next_batch().unwrap()), data(&direct[7]));
    assert_eq!(data(&l.next_batch().unwrap()), data(&direct[8]));
    drop(l);
    // Data-parallel shards: rank r of W takes global batches r, r + W, …, so
    // the ranks together see the one-rank sequence, each batch once; a
    // resumed rank continues from the global position.
    for world in [2, 3] {
        let mut got: Vec<Option<Vec<f32>>> = vec![None; 12];
        for rank in 0..world {
            let mut shard = plan.clone();
            shard.shard = nemesis::dist::Shard { rank, world };
            let mut l = Loader::start(shard, Position::default(), 2, 2);
            for n in 0..12 / world {
                let b = l.next_batch().unwrap();
                let g = n * world + rank;
                assert_eq!(b.position, direct[g].position, "world {world} rank {rank} batch {n}");
                assert!(got[g].replace(data(&b)).is_none());
            }
        }
        for (g, b) in got.iter().enumerate() {
            assert_eq!(b.as_ref(), Some(&data(&direct[g])), "world {world}: global batch {g}");
        }
    }
    let mut shard = plan.clone();
    shard.shard = nemesis::dist::Shard { rank: 1, world: 2 };
    let mut l = Loader::start(shard, at, 1, 2);
    assert_eq!(data(&l.next_batch().unwrap()), data(&direct[8]));
    assert_eq!(data(&l.next_batch().unwrap()), data(&direct[10]));
    drop(l);
    assert!(
        EpochPlan::new(files[..1].to_vec(), CropSpec::new([8, 8, 8]), 4, 1, 0).is_err(),
        "no full batch"
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn synth_writes_deterministic_phantoms_and_an_index() {
    let d = tmp("synth");
    let run = |out: &Path, seed: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_nemesis"))
            .args([
                "synth",
                "--out",
                out.to_str().unwrap(),
                "--count",
                "3",
                "--seed",
                seed,
                "--size",
                "24,40,40",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let (a, b, c) = (d.join("a"), d.join("b"), d.join("c"));
    run(&a, "5");
    run(&b, "5");
    run(&c, "6");
    let read = |p: &Path| read_volume(&p.join("images/phantom_0001.nii.gz")).unwrap().hu;
    assert_eq!(read(&a), read(&b), "same seed, same phantom");
    assert_ne!(read(&a), read(&c), "another seed, another phantom");
    let labels = read_volume(&a.join("labels/phantom_0001.nii.gz")).unwrap();
    assert_eq!(labels.shape, [24, 40, 40]);
    assert!(labels
        .hu
        .iter()
        .all(|&v| [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 11.0].contains(&v)));
    let index = nemesis::data::DatasetIndex::from_json(&a.join("dataset.json")).unwrap();
    assert_eq!((index.training.len(), index.validation.len()), (2, 1));
    assert!(index.training[0].label.as_ref().unwrap().exists());
    let o = Command::new(env!("CARGO_BIN_EXE_nemesis"))
        .args(["synth", "--out", d.join("x").to_str().unwrap(), "--size", "24,0,40"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "a zero size is a usage error");
    std::fs::remove_dir_all(&d).ok();
}
