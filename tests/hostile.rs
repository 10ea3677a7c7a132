//! Hostile input and faults, as a tester bent on breaking the CLI would try
//! them (docs/RELIABILITY.md has the table). Each case asserts the exit
//! status, the key words of the message, and that nothing already on disk
//! changed (checksums of every file before and after). Tiny shapes: each
//! command runs in well under a second.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nemesis::data::{write_volume, CacheManifest, VoxelData};
use nemesis::io::TensorFile;
use nemesis::rng::RngStream;

mod common;
use common::{bin, succeeded as ok};

fn tmp(name: &str) -> PathBuf {
    common::fresh_dir("hostile", name)
}

fn nemesis(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The exit status is `code` and stderr holds every key word.
#[track_caller]
fn refused(o: &Output, code: i32, words: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{err}",
        String::from_utf8_lossy(&o.stdout)
    );
    for w in words {
        assert!(err.contains(w), "`{w}` missing from:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Every file under `dir` (but the lock file, whose note names the last
/// process to hold it) with its CRC-32.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, u32> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().is_some_and(|n| n != ".lock") {
                out.insert(p.clone(), crc32fast::hash(&std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A 40×40×40 int16 CT-like volume (uncompressed, so its header can be
/// patched in place).
fn volume(path: &Path, seed: u64) {
    let n = 40 * 40 * 40;
    let mut u = vec![0.0f32; n];
    RngStream::new(seed, 7).fill_uniform(0, &mut u);
    let v: Vec<i16> = u.iter().map(|x| (x * 2000.0 - 1000.0) as i16).collect();
    write_volume(path, [40, 40, 40], [1.5, 1.0, 1.0], VoxelData::I16(&v)).unwrap();
}

/// Overwrites a little-endian f32 of a NIfTI-1 header.
fn patch_f32(path: &Path, offset: usize, v: f32) {
    let mut b = std::fs::read(path).unwrap();
    b[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    std::fs::write(path, b).unwrap();
}

const SROW_X: usize = 280;
const SCL_SLOPE: usize = 112;

fn index(path: &Path, training: &[&Path], validation: &[&Path]) {
    let list = |v: &[&Path]| v.iter().map(|p| serde_json::json!({"image": s(p)})).collect::<Vec<_>>();
    let j = serde_json::json!({"training": list(training), "validation": list(validation)});
    std::fs::write(path, j.to_string()).unwrap();
}

/// Three good volumes prepared into a cache, shared by the cases.
fn cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let d = tmp("data");
        let v: Vec<PathBuf> = (0..3).map(|i| d.join(format!("ct{i}.nii"))).collect();
        for (i, p) in v.iter().enumerate() {
            volume(p, i as u64);
        }
        index(&d.join("index.json"), &[&v[0], &v[1]], &[&v[2]]);
        let c = d.join("cache");
        ok(&nemesis(&[
            "prepare",
            "--index",
            s(&d.join("index.json")),
            "--out",
            s(&c),
        ]));
        c
    })
}

fn pretrain_args<'a>(out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "pretrain",
        "--preset",
        "tiny",
        "--data",
        s(cache()),
        "--out",
        s(out),
        "--batch",
        "1",
        "--val-superpatches",
        "1",
        "--device",
        "cpu",
    ];
    a.extend_from_slice(extra);
    a
}

/// A finished run of 2 steps with checkpoints at steps 1 and 2.
fn base_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let r = tmp("base").join("run");
        ok(&nemesis(&pretrain_args(&r, &["--steps", "2", "--val-every", "1"])));
        r
    })
}

/// A copy of the base run to mutate.
fn run_copy(name: &str) -> PathBuf {
    let r = tmp(name).join("run");
    copy_dir(base_run(), &r);
    r
}

fn wait_until(what: &str, secs: u64, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn lock_holder(run: &Path) -> String {
    std::fs::read_to_string(run.join(".lock")).unwrap_or_default()
}

/// A fresh folder `name` holding `w.safetensors`, tiny-preset weights.
fn tiny_checkpoint(name: &str) -> (PathBuf, PathBuf) {
    let d = tmp(name);
    let w = d.join("w.safetensors");
    ok(&nemesis(&["init", "--preset", "tiny", "--out", s(&w)]));
    (d, w)
}

/// `encode` of `input` with the weights `w`, on the CPU, into `d/f.safetensors`.
fn encode(d: &Path, w: &Path, input: &Path) -> Output {
    nemesis(&[
        "encode",
        "--checkpoint",
        s(w),
        "--input",
        s(input),
        "--output",
        s(&d.join("f.safetensors")),
        "--device",
        "cpu",
    ])
}

// --- sizes before allocations ---

#[test]
fn a_config_whose_sizes_overflow_is_refused_before_anything_is_written() {
    let d = tmp("overflow");
    let cfg = d.join("c.json");
    let rest = r#""embed_dim":32,"depth":1,"decoder_depth":1,"ffn_dim":64,"num_heads":2,"decoder_num_heads":2"#;
    let cases: [(&str, &[&str]); 2] = [
        (
            r#""superpatch_size":[4294967296,4294967296,1],"patch_size":[1,1,1]"#,
            &["superpatch_size", "at most 65536"],
        ),
        // Sides that pass one by one but whose product does not.
        (
            r#""superpatch_size":[65536,65536,16],"patch_size":[16,16,16]"#,
            &["voxels per superpatch", "more than one tensor may hold"],
        ),
    ];
    for (sizes, words) in cases {
        std::fs::write(&cfg, format!("{{{sizes},{rest}}}")).unwrap();
        refused(
            &nemesis(&["init", "--config", s(&cfg), "--out", s(&d.join("w.safetensors"))]),
            1,
            words,
        );
    }
    assert!(!d.join("w.safetensors").exists());
}

/// A valid tiny checkpoint whose config claims a huge superpatch: `encode`
/// estimates first and refuses with the numbers, before any table is built.
#[test]
fn a_checkpoint_too_large_for_memory_is_refused_with_the_estimate() {
    let (d, w) = tiny_checkpoint("huge");
    let mut f = TensorFile::read(&w).unwrap();
    let mut c: serde_json::Value = serde_json::from_str(&f.metadata["config"]).unwrap();
    c["superpatch_size"] = serde_json::json!([1024, 1024, 1024]);
    f.metadata.insert("config".into(), c.to_string());
    TensorFile::write(&w, &f.metadata, &f.arrays).unwrap();
    let before = snapshot(&d);
    let o = Command::new(bin())
        .args(["encode", "--checkpoint", s(&w), "--input", s(&d.join("x.nii"))])
        .args(["--output", s(&d.join("f.safetensors")), "--device", "cpu"])
        .env("NEMESIS_MEMORY_LIMIT", "2G")
        .output()
        .unwrap();
    refused(
        &o,
        1,
        &["not enough memory", "positional table", "activations", "lower --batch"],
    );
    assert_eq!(snapshot(&d), before);
}

#[test]
fn a_checkpoint_with_nan_weights_is_refused_naming_the_tensor() {
    let (d, w) = tiny_checkpoint("nanw");
    let mut f = TensorFile::read(&w).unwrap();
    let name = f.arrays.keys().next().unwrap().clone();
    if let nemesis::io::ArrayData::F32(v) = &mut f.arrays.get_mut(&name).unwrap().data {
        v[3] = f32::NAN;
    }
    TensorFile::write(&w, &f.metadata, &f.arrays).unwrap();
    let before = snapshot(&d);
    refused(&encode(&d, &w, &d.join("x.safetensors")), 1, &[&name, "non-finite"]);
    assert_eq!(snapshot(&d), before);
}

#[test]
fn encode_inputs_outside_0_1_are_refused() {
    let (d, w) = tiny_checkpoint("range");
    let mut x = vec![0.5f32; 32 * 32 * 32];
    x[10] = 1.5;
    let mut arrays = BTreeMap::new();
    arrays.insert(
        "image".to_string(),
        nemesis::io::Array {
            shape: vec![1, 1, 32, 32, 32],
            data: nemesis::io::ArrayData::F32(x),
        },
    );
    let input = d.join("x.safetensors");
    TensorFile::write(&input, &Default::default(), &arrays).unwrap();
    let before = snapshot(&d);
    let o = encode(&d, &w, &input);
    refused(&o, 1, &["outside [0, 1]", "1.5", "flat index 10"]);
    assert_eq!(snapshot(&d), before);
}

// --- one writer per run folder ---

#[test]
fn a_second_pretrain_on_a_folder_in_use_is_refused_naming_the_holder() {
    let d = tmp("two");
    let r = d.join("run");
    let first = spawn(&pretrain_args(&r, &["--steps", "60", "--val-every", "30"]));
    wait_until("the first run's lock", 60, || lock_holder(&r).contains("pid"));
    let o = nemesis(&pretrain_args(&r, &["--steps", "60"]));
    refused(
        &o,
        1,
        &["in use by another nemesis process", &format!("pid {}", first.id())],
    );
    let o = nemesis(&["pretrain", "--resume", s(&r)]);
    refused(&o, 1, &["--resume", "in use", &format!("pid {}", first.id())]);
    ok(&first.wait_with_output().unwrap());
    // One run's metrics, each step once.
    let steps: Vec<u64> = std::fs::read_to_string(r.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=60).collect::<Vec<_>>());
    // The lock died with its holder: the run resumes.
    ok(&nemesis(&["pretrain", "--resume", s(&r), "--steps", "61"]));
}

#[test]
fn runs_started_together_without_out_get_folders_of_their_own() {
    let d = tmp("auto");
    let args = [
        "pretrain",
        "--preset",
        "tiny",
        "--data",
        s(cache()),
        "--steps",
        "2",
        "--batch",
        "1",
        "--val-superpatches",
        "1",
        "--device",
        "cpu",
    ];
    let kids: Vec<Child> = (0..3)
        .map(|_| {
            Command::new(bin())
                .args(args)
                .current_dir(&d)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        ok(&k.wait_with_output().unwrap());
    }
    for n in 1..=3 {
        let latest = d.join(format!("runs/pretrain-{n}/latest.json"));
        assert!(latest.is_file(), "{}", latest.display());
    }
}

// --- caches that heal ---

#[test]
fn a_volume_with_bad_geometry_or_scaling_is_rejected_by_name_and_the_cache_stays_whole() {
    let d = tmp("geometry");
    let good: Vec<PathBuf> = (0..2).map(|i| d.join(format!("good{i}.nii"))).collect();
    for (i, p) in good.iter().enumerate() {
        volume(p, 10 + i as u64);
    }
    let cases: [(&str, usize, f32, &str); 4] = [
        ("nan_sform.nii", SROW_X, f32::NAN, "sform affine holds NaN"),
        ("zero_sform.nii", SROW_X, 0.0, "not a positive size"),
        ("huge_slope.nii", SCL_SLOPE, 1e37, "beyond f32"),
        ("absurd_hu.nii", SCL_SLOPE, 1e3, "beyond ±100000 HU"),
    ];
    let mut bad = Vec::new();
    for (k, (name, offset, value, _)) in cases.iter().enumerate() {
        let p = d.join(name);
        volume(&p, 20 + k as u64);
        patch_f32(&p, *offset, *value);
        bad.push(p);
    }
    let mut train: Vec<&Path> = bad.iter().map(|p| p.as_path()).collect();
    train.push(&good[0]);
    index(&d.join("index.json"), &train, &[&good[1]]);
    let c = d.join("cache");
    let o = nemesis(&["prepare", "--index", s(&d.join("index.json")), "--out", s(&c)]);
    let text = ok(&o);
    for (name, _, _, words) in &cases {
        let line = text
            .lines()
            .find(|l| l.contains("failed") && l.contains(name))
            .unwrap_or_else(|| panic!("{name} not reported:\n{text}"));
        assert!(line.contains(words), "{line}");
    }
    assert!(text.contains("4 failed"), "{text}");
    let m = CacheManifest::load(&c).unwrap();
    assert_eq!(m.entries.len(), 2);
    assert_eq!(m.failures.len(), 4);
    // Prepare again: the same answer, nothing of the good volumes redone.
    let again = ok(&nemesis(&[
        "prepare",
        "--index",
        s(&d.join("index.json")),
        "--out",
        s(&c),
    ]));
    assert!(again.contains("0 prepared, 2 already cached, 4 failed"), "{again}");
}

#[test]
fn a_damaged_manifest_entry_spoils_only_itself_and_prepare_repairs_it() {
    let d = tmp("manifest");
    copy_dir(&cache().parent().unwrap().join("cache"), &d.join("cache"));
    let c = d.join("cache");
    let path = c.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["entries"][0]["spacing"][1] = serde_json::Value::Null;
    std::fs::write(&path, v.to_string()).unwrap();
    let m = CacheManifest::load(&c).unwrap();
    assert_eq!(m.entries.len(), 2, "the others are still served");
    assert_eq!(m.damaged.len(), 1);
    let index = cache().parent().unwrap().join("index.json");
    let o = ok(&nemesis(&["prepare", "--index", s(&index), "--out", s(&c)]));
    assert!(o.contains("0 failed"), "{o}");
    let m = CacheManifest::load(&c).unwrap();
    assert_eq!((m.entries.len(), m.damaged.len()), (3, 0));
}

#[test]
fn duplicate_dataset_entries_are_prepared_once_and_said_once() {
    let d = tmp("dupes");
    let v: Vec<PathBuf> = (0..2).map(|i| d.join(format!("v{i}.nii"))).collect();
    for (i, p) in v.iter().enumerate() {
        volume(p, 30 + i as u64);
    }
    index(&d.join("index.json"), &[&v[0], &v[0], &v[1], &v[0]], &[&v[1]]);
    let o = nemesis(&[
        "prepare",
        "--index",
        s(&d.join("index.json")),
        "--out",
        s(&d.join("cache")),
        "--jobs",
        "4",
    ]);
    let text = ok(&o);
    assert!(text.contains("2 prepared") && text.contains("0 failed"), "{text}");
    assert_eq!(text.matches("listed 3 times").count(), 1, "{text}");
    assert_eq!(text.matches("listed 2 times").count(), 1, "{text}");
}

#[test]
fn a_dataset_with_no_usable_volume_names_what_was_dropped_and_leaves_no_run_folder() {
    let d = tmp("small");
    let broken = d.join("broken.nii");
    std::fs::write(&broken, b"not a nifti").unwrap();
    index(&d.join("index.json"), &[&broken], &[]);
    let r = d.join("run");
    let o = nemesis(&[
        "pretrain",
        "--preset",
        "tiny",
        "--data",
        s(&d.join("index.json")),
        "--out",
        s(&r),
        "--device",
        "cpu",
    ]);
    refused(&o, 1, &["no volume could be prepared", "broken.nii"]);
    assert!(!r.exists(), "a run refused before its first step leaves no folder");
    // One good volume beside the broken one trains, and says both.
    let good = d.join("good.nii");
    volume(&good, 40);
    index(&d.join("index2.json"), &[&good, &broken], &[]);
    let o = nemesis(&[
        "pretrain",
        "--preset",
        "tiny",
        "--data",
        s(&d.join("index2.json")),
        "--out",
        s(&r),
        "--device",
        "cpu",
        "--steps",
        "1",
        "--val-superpatches",
        "1",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("broken.nii") && text.contains("one usable volume"),
        "{text}"
    );
}

// --- resume continues the run ---

#[test]
fn resume_without_data_json_is_an_error_naming_it() {
    let r = run_copy("nodata");
    std::fs::remove_file(r.join("data.json")).unwrap();
    let before = snapshot(&r);
    refused(
        &nemesis(&["pretrain", "--resume", s(&r), "--steps", "3"]),
        1,
        &["data.json", "--data"],
    );
    assert_eq!(snapshot(&r), before);
}

#[test]
fn resume_flags_apply_as_said_changes_or_are_refused() {
    let r = run_copy("flags");
    let before = snapshot(&r);
    for flag in [["--batch", "2"], ["--seed", "7"], ["--noise-levels", "0.1"]] {
        let o = nemesis(&["pretrain", "--resume", s(&r), flag[0], flag[1]]);
        refused(&o, 1, &[flag[0], "cannot change in a resumed run", "--init"]);
    }
    assert_eq!(snapshot(&r), before);
    let o = nemesis(&[
        "pretrain",
        "--resume",
        s(&r),
        "--steps",
        "3",
        "--lr",
        "0.01",
        "--device",
        "cpu",
    ]);
    let text = ok(&o);
    assert!(text.contains("lr 0.0001 → 0.01 from step 3"), "{text}");
    assert!(text.contains("steps 2 → 3 from step 3"), "{text}");
    let metrics = std::fs::read_to_string(r.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines
        .iter()
        .any(|v| v["kind"] == "change" && v["key"] == "lr" && v["step"] == 3));
    let last = lines.iter().rfind(|v| v["kind"] == "train").unwrap();
    assert_eq!((last["step"].as_u64(), last["lr"].as_f64()), (Some(3), Some(0.01)));
}

#[test]
fn a_loose_weights_file_is_refused_before_any_data_work() {
    let (d, w) = tiny_checkpoint("loose");
    let before = snapshot(&d);
    // No data work: the data home it would build the default set in stays empty.
    let home = d.join("data-home");
    let o = Command::new(bin())
        .args(["pretrain", "--resume", s(&w)])
        .env("NEMESIS_DATA", &home)
        .output()
        .unwrap();
    refused(&o, 1, &["no training state", "w.state.safetensors", "--init"]);
    assert!(!home.exists(), "data was prepared before the refusal");
    assert_eq!(snapshot(&d), before);
}

#[test]
fn a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one() {
    let r = run_copy("damaged");
    let latest = r.join("checkpoints/step-0000002.safetensors");
    let len = std::fs::metadata(&latest).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&latest).unwrap();
    f.set_len(len / 2).unwrap();
    let o = nemesis(&["pretrain", "--resume", s(&r), "--steps", "3", "--device", "cpu"]);
    let text = ok(&o);
    assert!(text.contains("step-0000002.safetensors is not usable"), "{text}");
    assert!(
        text.contains("newest intact checkpoint") && text.contains("(step 1)"),
        "{text}"
    );
    assert!(text.contains("finished 3 steps"), "{text}");
}

#[test]
fn weights_of_another_config_inside_a_run_are_named_as_such() {
    let r = run_copy("otherconf");
    let w = r.join("checkpoints/step-0000002.safetensors");
    ok(&nemesis(&["init", "--preset", "small", "--out", s(&w)]));
    let o = nemesis(&["pretrain", "--resume", s(&w)]);
    refused(&o, 1, &["step-0000002.safetensors"]);
}

// --- signals ---

#[test]
fn a_second_sigterm_exits_at_once_leaving_the_checkpoints_intact() {
    let d = tmp("term2");
    let r = d.join("run");
    let child = spawn(&pretrain_args(&r, &["--steps", "100000", "--val-every", "5"]));
    wait_until("a checkpoint", 60, || r.join("latest.json").exists());
    for _ in 0..2 {
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", String::from_utf8_lossy(&o.stderr));
    let latest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.join("latest.json")).unwrap()).unwrap();
    let w = r.join(latest["weights"].as_str().unwrap());
    nemesis::model::load_checkpoint(&w, nemesis::tensor::DType::F32).unwrap();
}

// --- every number validated where it enters ---

#[test]
fn bad_numbers_are_refused_by_name_and_leave_no_folder() {
    let d = tmp("numbers");
    let r = d.join("run");
    let cases: [(&[&str], &str); 6] = [
        (&["--lr", "-1"], "lr -1"),
        (&["--weight-decay", "nan"], "weight_decay must be a finite number"),
        (&["--clip", "nan"], "clip must be a finite number"),
        (&["--warmup-epochs", "-5"], "warmup_epochs must be ≥ 0"),
        (&["--lr", "inf"], "lr must be a finite number"),
        (&["--noise-levels", "0,nan"], "noise_levels"),
    ];
    for (flags, words) in cases {
        let o = nemesis(&pretrain_args(&r, flags));
        refused(&o, 1, &["config", words]);
        assert!(!r.exists(), "{flags:?} left a run folder");
    }
}

// --- names and paths ---

#[test]
fn a_252_byte_file_name_is_written_and_a_300_byte_one_is_named_too_long() {
    let d = tmp("names");
    let name = format!("{}.safetensors", "w".repeat(240));
    assert_eq!(name.len(), 252);
    ok(&nemesis(&["init", "--preset", "tiny", "--out", s(&d.join(&name))]));
    assert!(d.join(&name).is_file());
    let long = format!("{}.safetensors", "w".repeat(288));
    refused(
        &nemesis(&["init", "--preset", "tiny", "--out", s(&d.join(long))]),
        1,
        &["too long"],
    );
}

#[test]
fn a_batch_beyond_memory_is_refused_with_the_estimate_and_leaves_no_folder() {
    let d = tmp("batch");
    let r = d.join("run");
    let o = Command::new(bin())
        .args(["pretrain", "--preset", "tiny", "--data", s(cache()), "--out", s(&r)])
        .args(["--batch", "64", "--steps", "2", "--device", "cpu"])
        .env("NEMESIS_MEMORY_LIMIT", "64M")
        .output()
        .unwrap();
    refused(
        &o,
        1,
        &[
            "not enough memory on the host",
            "training at --batch 64",
            "raise --accum",
        ],
    );
    assert!(!r.exists());
}

#[test]
fn a_header_promising_more_voxels_than_memory_is_refused_before_reading() {
    let d = tmp("dims");
    let p = d.join("big.nii");
    volume(&p, 50);
    let mut b = std::fs::read(&p).unwrap();
    for k in 0..3 {
        b[42 + 2 * k..44 + 2 * k].copy_from_slice(&32767i16.to_le_bytes());
    }
    std::fs::write(&p, b).unwrap();
    let before = snapshot(&d);
    refused(
        &nemesis(&["inspect", s(&p)]),
        1,
        &["32767×32767×32767 volume needs about", "TiB to read"],
    );
    assert_eq!(snapshot(&d), before);
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_without_a_panic() {
    let d = tmp("pipe");
    let p = d.join("v.nii");
    volume(&p, 60);
    let mut child = Command::new(bin())
        .args(["inspect", s(&p)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the first line is read.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(o.status.success() || o.status.code().is_none(), "{:?}: {err}", o.status);
}
