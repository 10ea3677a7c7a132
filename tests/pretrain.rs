//! `nemesis pretrain` end to end on the tiny preset and small synthetic
//! phantoms: the loss falls, a resumed run equals an uninterrupted one bit for
//! bit, a killed run leaves loadable checkpoints, Ctrl-C stops cleanly, and a
//! diverging run stops with a clear error.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nemesis::model::load_checkpoint;
use nemesis::tensor::DType;
use nemesis::train::{load_state, Latest};
use serde_json::Value;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nemesis")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nemesis-pretrain-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Eight small phantoms, prepared once for all tests of this file.
fn cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let d = tmp("data");
        let raw = d.join("nifti");
        let run = |args: &[&str]| {
            let o = Command::new(bin()).args(args).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        run(&[
            "synth",
            "--out",
            raw.to_str().unwrap(),
            "--count",
            "8",
            "--seed",
            "3",
            "--size",
            "40,64,64",
        ]);
        let c = d.join("cache");
        run(&[
            "prepare",
            "--index",
            raw.join("dataset.json").to_str().unwrap(),
            "--out",
            c.to_str().unwrap(),
        ]);
        c
    })
}

fn pretrain(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "pretrain",
        "--preset",
        "tiny",
        "--data",
        cache().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch",
        "2",
        "--val-superpatches",
        "2",
    ];
    args.extend_from_slice(extra);
    Command::new(bin()).args(&args).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// `(step, loss as written)` of the training lines, and the validation lines.
fn metrics(run: &Path) -> (Vec<(u64, String)>, Vec<Value>) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut train = vec![];
    let mut val = vec![];
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        match v["kind"].as_str() {
            Some("train") => train.push((v["step"].as_u64().unwrap(), v["loss"].to_string())),
            _ => val.push(v),
        }
    }
    (train, val)
}

#[test]
fn the_loss_falls_over_30_steps() {
    let out = tmp("falls");
    let run = out.join("run");
    ok(&pretrain(&run, &["--steps", "30", "--val-every", "15", "--lr", "1e-3"]));
    let (train, val) = metrics(&run);
    assert_eq!(train.len(), 30);
    let loss = |r: std::ops::Range<usize>| {
        train[r.clone()]
            .iter()
            .map(|(_, l)| l.parse::<f64>().unwrap())
            .sum::<f64>()
            / r.len() as f64
    };
    let (first, last) = (loss(0..5), loss(25..30));
    assert!(last < 0.8 * first, "loss {first} → {last}");
    assert_eq!(val.len(), 2);
    assert!(val[1]["val_loss"].as_f64().unwrap() < val[0]["val_loss"].as_f64().unwrap() * 1.05);
    // Every step reports a rate (tests never judge speed: a loaded machine
    // would fail them at random).
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rates = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["superpatches_per_s"].as_f64())
        .filter(|r| r.is_finite() && *r > 0.0)
        .count();
    assert_eq!(rates, 30);
    for f in [
        "config.json",
        "curves.png",
        "best.safetensors",
        "best.json",
        "latest.json",
        "recon/step-0000030.png",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn a_resumed_run_equals_the_uninterrupted_one_bit_for_bit() {
    let out = tmp("resume");
    let (a, b) = (out.join("a"), out.join("b"));
    let common = ["--steps", "16", "--val-every", "4", "--accum", "2"];
    ok(&pretrain(&a, &common));
    let mut first = common.to_vec();
    first.extend(["--stop-at", "6"]);
    let text = ok(&pretrain(&b, &first));
    assert!(text.contains("stopped after step 6"), "{text}");
    let resumed = Command::new(bin())
        .args(["pretrain", "--resume", b.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&resumed);
    let (ta, va) = metrics(&a);
    let (tb, vb) = metrics(&b);
    assert_eq!(ta.len(), 16);
    assert_eq!(ta, tb, "every training loss, as written, is equal");
    assert_eq!(va, vb, "every validation figure is equal");
    let wa = std::fs::read(a.join("checkpoints/step-0000016.safetensors")).unwrap();
    let wb = std::fs::read(b.join("checkpoints/step-0000016.safetensors")).unwrap();
    assert!(wa == wb, "the final weights are byte-identical");
    std::fs::remove_dir_all(&out).ok();
}

fn spawn(run: &Path, extra: &[&str]) -> Child {
    let mut args = vec![
        "pretrain",
        "--preset",
        "tiny",
        "--data",
        cache().to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--batch",
        "2",
        "--val-superpatches",
        "2",
        "--steps",
        "100000",
    ];
    args.extend_from_slice(extra);
    Command::new(bin())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(path: &Path, secs: u64) {
    let t = Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn latest_loads(run: &Path) -> u64 {
    let l: Latest = serde_json::from_str(&std::fs::read_to_string(run.join("latest.json")).unwrap()).unwrap();
    let (_, store) = load_checkpoint(&run.join(&l.weights), DType::F32).unwrap();
    let (_, meta) = load_state(&run.join(&l.state), &store).unwrap();
    assert_eq!(meta.step, l.step);
    l.step
}

#[test]
fn a_killed_run_leaves_its_checkpoints_loadable() {
    let out = tmp("killed");
    let run = out.join("run");
    // A checkpoint every step, so the kill lands during or between writes.
    let mut child = spawn(&run, &["--val-every", "1"]);
    wait_for(&run.join("latest.json"), 60);
    std::thread::sleep(Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();
    let step = latest_loads(&run);
    assert!(step >= 1);
    // Every file under a checkpoint name is whole; only temporary names may be partial.
    for e in std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok())
    {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".state.safetensors") || name.starts_with('.') {
            continue;
        }
        load_checkpoint(&e.path(), DType::F32).unwrap_or_else(|err| panic!("{name}: {err}"));
    }
    // And the run resumes from it.
    let o = Command::new(bin())
        .args([
            "pretrain",
            "--resume",
            run.to_str().unwrap(),
            "--data",
            cache().to_str().unwrap(),
            "--steps",
        ])
        .arg((step + 2).to_string())
        .output()
        .unwrap();
    assert!(ok(&o).contains(&format!("finished {} steps", step + 2)));
    std::fs::remove_dir_all(&out).ok();
}

/// SIGINT (Ctrl-C) and SIGTERM (a scheduler's notice) each finish the step,
/// write a checkpoint of it and exit with 128 + the signal's number.
fn signal_stops_cleanly(signal: &str, status: i32) {
    let out = tmp(&format!("signal-{signal}"));
    let run = out.join("run");
    let child = spawn(&run, &["--val-every", "1000"]);
    wait_for(&run.join("metrics.jsonl"), 60);
    std::thread::sleep(Duration::from_millis(300));
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(status), "{text}\n{err}");
    assert!(
        text.contains("stopped after step") && text.contains("checkpoint"),
        "{text}"
    );
    assert!(err.contains(&format!("stopped by SIG{signal}")), "{err}");
    let step = latest_loads(&run);
    let (train, _) = metrics(&run);
    assert_eq!(train.last().unwrap().0, step, "the checkpoint is of the last step done");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn ctrl_c_finishes_the_step_writes_a_checkpoint_and_exits_130() {
    signal_stops_cleanly("INT", 130);
}

#[test]
fn sigterm_finishes_the_step_writes_a_checkpoint_and_exits_143() {
    signal_stops_cleanly("TERM", 143);
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_the_last_good_checkpoint() {
    let out = tmp("nan");
    let run = out.join("run");
    let o = pretrain(
        &run,
        &[
            "--steps",
            "20",
            "--val-every",
            "1",
            "--lr",
            "1e30",
            "--warmup-epochs",
            "0",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("step ") && err.contains("Last good checkpoint"), "{err}");
    assert!(err.contains("NaN") || err.contains("inf"), "{err}");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn bad_run_settings_are_clear_errors() {
    let out = tmp("bad");
    let o = pretrain(&out.join("r"), &["--lr=-1"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("lr"));
    let o = Command::new(bin())
        .args(["pretrain", "--resume", out.join("nothing").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let cfg = out.join("run.toml");
    std::fs::write(&cfg, "preset = \"tiny\"\nlearning_rate = 3\n").unwrap();
    let o = Command::new(bin())
        .args(["pretrain", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("run.toml") && err.contains("learning_rate"), "{err}");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn init_starts_from_given_weights_of_the_same_model_only() {
    let out = tmp("init");
    let w = out.join("w.safetensors");
    let o = Command::new(bin())
        .args(["init", "--preset", "tiny", "--seed", "9", "--out", w.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&o);
    let run = out.join("run");
    ok(&pretrain(
        &run,
        &["--steps", "2", "--val-every", "2", "--init", w.to_str().unwrap()],
    ));
    let small = out.join("small.safetensors");
    ok(&Command::new(bin())
        .args(["init", "--preset", "small", "--out", small.to_str().unwrap()])
        .output()
        .unwrap());
    let o = pretrain(&out.join("run2"), &["--steps", "2", "--init", small.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("another configuration") && err.contains("embed_dim"),
        "{err}"
    );
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn the_emulated_gpu_path_trains_like_the_cpu_and_resumes() {
    let out = tmp("emu");
    let (cpu, emu) = (out.join("cpu"), out.join("emu"));
    let common = ["--steps", "3", "--val-every", "3"];
    ok(&pretrain(&cpu, &common));
    let mut first = common.to_vec();
    first.extend(["--stop-at", "2", "--device", "emu"]);
    ok(&pretrain(&emu, &first));
    // The optimizer moments come back from the device into the checkpoint,
    // so the resumed run continues where the device left off.
    let resumed = Command::new(bin())
        .args(["pretrain", "--resume", emu.to_str().unwrap(), "--device", "emu"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&resumed.stderr).to_string();
    ok(&resumed);
    assert!(err.contains("device: emu"), "{err}");
    let (tc, vc) = metrics(&cpu);
    let (te, ve) = metrics(&emu);
    assert_eq!(tc.len(), 3);
    assert_eq!(te.len(), 3);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b.abs();
    for ((_, a), (_, b)) in tc.iter().zip(&te) {
        let (a, b) = (a.parse::<f64>().unwrap(), b.parse::<f64>().unwrap());
        assert!(close(b, a), "training loss {b} on the emulator, {a} on the CPU");
    }
    let key = |v: &[Value]| v.last().unwrap()["val_loss"].as_f64().unwrap();
    assert!(close(key(&ve), key(&vc)), "{ve:?} vs {vc:?}");
    let name = "checkpoints/step-0000003.safetensors";
    let (_, wc) = load_checkpoint(&cpu.join(name), DType::F32).unwrap();
    let (_, we) = load_checkpoint(&emu.join(name), DType::F32).unwrap();
    for ((_, a), (_, b)) in wc.iter().zip(we.iter()) {
        let name_of = a.name.clone();
        let (mut a, mut b) = (a.value.to_f64_vec().unwrap(), b.value.to_f64_vec().unwrap());
        // The key third of a fused in_proj bias has a gradient of exactly
        // zero in exact arithmetic (softmax ignores a constant added to every
        // score of a row); its computed gradient is rounding noise, which
        // Adam turns into ±lr steps. Those values carry no information.
        if name_of.ends_with("in_proj_bias") {
            let e = a.len() / 3;
            a.drain(e..2 * e);
            b.drain(e..2 * e);
        }
        let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
        let den: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        assert!(num / den <= 1e-4, "{name_of}: weights differ by {:.3e}", num / den);
    }
    std::fs::remove_dir_all(&out).ok();
}

/// A run says its plan in one line, and its config.json says the same epochs.
#[test]
fn a_run_states_its_plan_and_its_config_agrees() {
    let out = tmp("plan");
    let run = out.join("run");
    let o = pretrain(
        &run,
        &[
            "--steps",
            "10",
            "--stop-at",
            "6",
            "--val-every",
            "3",
            "--warmup-epochs",
            "0.5",
        ],
    );
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    let plan = err
        .lines()
        .find(|l| l.starts_with("plan: "))
        .unwrap_or_else(|| panic!("{err}"));
    // Eight phantoms, one held out for validation: 7 volumes, 3 batches of 2.
    assert!(
        plan.contains("10 steps over 4 epochs (3 batches an epoch, 7 training volumes)"),
        "{plan}"
    );
    assert!(plan.contains("2 superpatches a step (batch 2 × accum 1)"), "{plan}");
    assert!(
        plan.contains("warms up over 2 steps") && plan.contains("at step 10"),
        "{plan}"
    );
    let config: Value = serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["epochs"], 4);
    assert_eq!(config["steps"], 10);
    // --stop-at at or below the step a run is at takes no step.
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let o = Command::new(bin())
        .args(["pretrain", "--resume", run.to_str().unwrap(), "--stop-at", "4"])
        .output()
        .unwrap();
    let text = ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already at step 6 (--stop-at 4): no step taken"), "{err}");
    assert!(text.contains("stopped after step 6"), "{text}");
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), before);
    // A path that does not exist is named as such.
    let o = Command::new(bin())
        .args(["pretrain", "--resume", out.join("nope").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no such file or folder"), "{err}");
    std::fs::remove_dir_all(&out).ok();
}

/// Small datasets of one's own: a folder `synth` made (its dataset.json,
/// the volumes under images/) is that dataset for `--data`; one scan
/// trains, its validation crops taken from it with a warning; too few
/// volumes for a batch draw more crops each, said and recorded.
#[test]
fn one_scan_in_a_dataset_folder_trains() {
    let d = tmp("one-scan");
    let data = d.join("data");
    let o = Command::new(bin())
        .args([
            "synth",
            "--out",
            data.to_str().unwrap(),
            "--count",
            "1",
            "--seed",
            "5",
            "--size",
            "40,64,64",
        ])
        .output()
        .unwrap();
    ok(&o);
    assert!(data.join("dataset.json").is_file() && !data.join("one.nii.gz").exists());
    // One step of the tiny preset on the folder, into `out`, with `extra`.
    let pretrain_on = |out: &Path, extra: &[&str]| {
        let o = Command::new(bin())
            .args([
                "pretrain",
                "--preset",
                "tiny",
                "--data",
                data.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .args(["--batch", "2", "--val-superpatches", "2"])
            .args(extra)
            .env("NEMESIS_DATA", d.join("home"))
            .output()
            .unwrap();
        ok(&o);
        o
    };
    let run = d.join("run");
    let o = pretrain_on(&run, &["--steps", "2"]);
    let text = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(text.contains("warning: one usable volume"), "{text}");
    assert!(
        text.contains(
            "1 training volume(s) × 1 crop(s) per volume make no full batch of 2: drawing 2 crops per volume"
        ),
        "{text}"
    );
    let config: Value = serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["crops_per_volume"], 2);
    // Asked for, more crops need no saying.
    let o = pretrain_on(&d.join("run2"), &["--steps", "1", "--crops-per-volume", "3"]);
    let text = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!text.contains("make no full batch"), "{text}");
    std::fs::remove_dir_all(&d).ok();
}
