//! Data-parallel training over MPI (`cargo test --release --features mpi
//! --test mpi`; CI installs Open MPI). Two CPU ranks with batch 2 equal one
//! rank with accum 2, byte for byte in the weights and line for line in the
//! metrics; two emulator ranks track the CPU run.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::{bin, succeeded as ok};

fn tmp(name: &str) -> PathBuf {
    common::fresh_dir("mpi", name)
}

fn mpirun(np: usize, args: &[&str]) -> Output {
    Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string(), bin()])
        .args(args)
        .output()
        .expect("mpirun (Open MPI) is installed")
}

fn run_args<'a>(out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "pretrain",
        "--preset",
        "tiny",
        "--steps",
        "6",
        "--val-every",
        "3",
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    a
}

/// `(kind, step, loss or val_loss, psnr, grad_norm, lr, sigma)` of each metrics line.
fn metrics(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let k = |n: &str| v[n].to_string();
            format!(
                "{} {} {} {} {} {} {} {}",
                k("kind"),
                k("step"),
                k("loss"),
                k("psnr"),
                k("grad_norm"),
                k("lr"),
                k("sigma"),
                k("val_loss")
            )
        })
        .collect()
}

/// A long 2-rank run (until stopped) of `out`, validating every `val_every` steps.
fn spawn_long_run(out: &Path, val_every: &str) -> std::process::Child {
    spawn_long_run_with(out, val_every, &[], std::process::Stdio::null())
}

fn spawn_long_run_with(
    out: &Path,
    val_every: &str,
    extra: &[&str],
    stderr: std::process::Stdio,
) -> std::process::Child {
    Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2", bin()])
        .args(["pretrain", "--preset", "tiny", "--batch", "1", "--device", "cpu"])
        .args([
            "--steps",
            "100000",
            "--val-every",
            val_every,
            "--out",
            out.to_str().unwrap(),
        ])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Waits (at most a minute, against a hang) until `file` exists, while the run goes on.
fn wait_for_file(child: &mut std::process::Child, file: &Path) {
    let t = Instant::now();
    while !file.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "mpirun ended before {}",
            file.display()
        );
        assert!(t.elapsed() < Duration::from_secs(60), "no {}", file.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (at most a minute, against a hang) for the run to end.
fn wait_for_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the ranks do not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The run's `latest.json`.
fn latest(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("latest.json")).unwrap()).unwrap()
}

/// Training lines equal; validation lines equal up to the order in which the
/// ranks' sums were added (the ranks share the validation set).
#[track_caller]
fn same_metrics(a: &Path, b: &Path) {
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.len(), mb.len());
    let val = |run: &Path| -> Vec<f64> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["val_loss"].as_f64())
            .collect()
    };
    for (x, y) in ma.iter().zip(&mb).filter(|(x, _)| x.starts_with("\"train\"")) {
        assert_eq!(x, y);
    }
    let (va, vb) = (val(a), val(b));
    assert_eq!(va.len(), vb.len());
    for (x, y) in va.iter().zip(&vb) {
        assert!((x - y).abs() <= 1e-12 * y.abs(), "validation loss {x} vs {y}");
    }
}

#[test]
fn two_cpu_ranks_equal_one_rank_with_accum_2() {
    let d = tmp("cpu");
    let (a, b) = (d.join("A"), d.join("B"));
    let text = ok(&mpirun(2, &run_args(&a, &["--batch", "2", "--device", "cpu"])));
    assert!(
        text.contains("rank 1 of 2 (local rank 1), launched by Open MPI"),
        "{text}"
    );
    assert!(text.contains("batch 2 × accum 1 × 2 ranks"), "{text}");
    ok(&Command::new(bin())
        .args(run_args(&b, &["--batch", "2", "--accum", "2", "--device", "cpu"]))
        .output()
        .unwrap());
    for f in ["checkpoints/step-0000006.safetensors", "best.safetensors"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    same_metrics(&a, &b);
    // Rank 0 alone wrote: one metrics line per step.
    assert_eq!(metrics(&a).iter().filter(|l| l.starts_with("\"train\"")).count(), 6);
    // One rank resumes where the two left it, with the same global batch:
    // its step 7 equals step 7 of the one-rank run with accum 2.
    let resume = |run: &Path| {
        ok(&Command::new(bin())
            .args([
                "pretrain",
                "--resume",
                run.to_str().unwrap(),
                "--steps",
                "7",
                "--device",
                "cpu",
            ])
            .output()
            .unwrap())
    };
    let text = resume(&a);
    assert!(
        text.contains("2 rank(s) → 1") && text.contains("accum 1 → 2 from step 7"),
        "{text}"
    );
    resume(&b);
    assert_eq!(
        std::fs::read(a.join("checkpoints/step-0000007.safetensors")).unwrap(),
        std::fs::read(b.join("checkpoints/step-0000007.safetensors")).unwrap()
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn two_emulator_ranks_track_the_cpu_run() {
    let d = tmp("emu");
    let (a, b) = (d.join("A"), d.join("B"));
    ok(&mpirun(2, &run_args(&a, &["--batch", "1", "--device", "emu"])));
    ok(&Command::new(bin())
        .args(run_args(&b, &["--batch", "1", "--accum", "2", "--device", "cpu"]))
        .output()
        .unwrap());
    let loss = |run: &Path| -> Vec<f64> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
            .collect()
    };
    let (la, lb) = (loss(&a), loss(&b));
    assert_eq!(la.len(), 6);
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "emulator ranks {x}, CPU {y}");
    }
    // With 4 KiB buckets the gradients go in dozens of all-reduces started
    // during the backward pass instead of one: the same sums, bit for bit.
    let c = d.join("C");
    let many = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2", bin()])
        .args(run_args(&c, &["--batch", "1", "--device", "emu"]))
        .env("NEMESIS_BUCKET_BYTES", "4096")
        .output()
        .unwrap();
    let text = ok(&many);
    assert!(text.contains("43 bucket(s) of at most 4096 bytes"), "{text}");
    assert_eq!(
        std::fs::read(a.join("checkpoints/step-0000006.safetensors")).unwrap(),
        std::fs::read(c.join("checkpoints/step-0000006.safetensors")).unwrap()
    );
    std::fs::remove_dir_all(&d).ok();
}

/// `--bf16-allreduce`: the sums are rounded to bf16, the same way on CPU
/// ranks (MPI) and emulator ranks (rounded on the device, summed through
/// MPI, widened on the device): the two track each other closely, and
/// both stay near the fp32 run without equalling it.
#[test]
fn bf16_allreduce_rounds_alike_on_cpu_and_emulator_ranks() {
    let d = tmp("bf16");
    let (a, b, c) = (d.join("A"), d.join("B"), d.join("C"));
    ok(&mpirun(2, &run_args(&a, &["--batch", "1", "--device", "cpu"])));
    let text = ok(&mpirun(
        2,
        &run_args(&b, &["--batch", "1", "--device", "cpu", "--bf16-allreduce"]),
    ));
    let emu = ok(&mpirun(
        2,
        &run_args(&c, &["--batch", "1", "--device", "emu", "--bf16-allreduce"]),
    ));
    assert!(!text.contains("bucket"), "CPU ranks sum on the host: {text}");
    assert!(emu.contains("in bf16: 1 bucket(s)"), "{emu}");
    let norms = |run: &Path| -> Vec<f64> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["grad_norm"].as_f64())
            .collect()
    };
    let (fp32, cpu, emu) = (norms(&a), norms(&b), norms(&c));
    assert_eq!(fp32.len(), 6);
    // Step 1 starts from the same weights: only the rounding differs.
    assert_ne!(fp32[0], cpu[0]);
    for i in 0..6 {
        assert!(
            (fp32[i] - cpu[i]).abs() <= 1e-3 * fp32[i],
            "step {}: fp32 {} bf16 {}",
            i + 1,
            fp32[i],
            cpu[i]
        );
        assert!(
            (emu[i] - cpu[i]).abs() <= 1e-5 * cpu[i],
            "step {}: emu {} cpu {}",
            i + 1,
            emu[i],
            cpu[i]
        );
    }
    std::fs::remove_dir_all(&d).ok();
}

/// `kill -9` of one rank: mpirun ends the others within seconds (the
/// survivor cannot finish a step without its peer), the last checkpoint
/// loads, and two ranks resume the run.
#[test]
fn a_killed_rank_ends_the_run_and_leaves_a_checkpoint_to_resume() {
    let d = tmp("kill");
    let a = d.join("A");
    let mut child = spawn_long_run(&a, "2");
    wait_for_file(&mut child, &a.join("latest.json"));
    let pids = rank_pids(&child);
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(Command::new("kill").args(["-9", &pids[1]]).status().unwrap().success());
    let status = wait_for_exit(&mut child);
    assert!(!status.success());
    let latest = latest(&a);
    let step = latest["step"].as_u64().unwrap();
    let w = a.join(latest["weights"].as_str().unwrap());
    nemesis::model::load_checkpoint(&w, nemesis::tensor::DType::F32).unwrap();
    let text = ok(&mpirun(
        2,
        &[
            "pretrain",
            "--resume",
            a.to_str().unwrap(),
            "--steps",
            &(step + 2).to_string(),
            "--device",
            "cpu",
        ],
    ));
    assert!(text.contains(&format!("finished {} steps", step + 2)), "{text}");
    std::fs::remove_dir_all(&d).ok();
}

/// The ranks mpirun started, by rank (read from each one's environment).
fn rank_pids(child: &std::process::Child) -> Vec<String> {
    let ranks = Command::new("pgrep")
        .args(["-P", &child.id().to_string()])
        .output()
        .unwrap();
    let mut pids: Vec<(usize, String)> = String::from_utf8_lossy(&ranks.stdout)
        .split_whitespace()
        .map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            let rank = env
                .split(|&b| b == 0)
                .filter_map(|kv| {
                    String::from_utf8_lossy(kv)
                        .strip_prefix("OMPI_COMM_WORLD_RANK=")
                        .map(String::from)
                })
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (rank, pid.to_string())
        })
        .collect();
    pids.sort();
    pids.into_iter().map(|(_, p)| p).collect()
}

/// A rank that stops answering (SIGSTOP: alive, silent): the other waits
/// `--collective-timeout`, names it, and MPI stops the job; the last
/// checkpoint loads.
#[test]
fn a_rank_that_stops_answering_is_named_after_the_timeout() {
    let d = tmp("stop");
    let a = d.join("A");
    let log = d.join("stderr.txt");
    let mut child = spawn_long_run_with(
        &a,
        "2",
        &["--collective-timeout", "3"],
        std::fs::File::create(&log).unwrap().into(),
    );
    wait_for_file(&mut child, &a.join("latest.json"));
    let pids = rank_pids(&child);
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(Command::new("kill")
        .args(["-STOP", &pids[1]])
        .status()
        .unwrap()
        .success());
    let stopped = Instant::now();
    let status = wait_for_exit(&mut child);
    assert!(!status.success());
    // The timeout, the grace for answers, then MPI's abort.
    assert!(stopped.elapsed() < Duration::from_secs(40), "{:?}", stopped.elapsed());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("rank 0 waited 3 s") && text.contains("rank 1 does not answer"),
        "{text}"
    );
    let latest = latest(&a);
    nemesis::model::load_checkpoint(
        &a.join(latest["weights"].as_str().unwrap()),
        nemesis::tensor::DType::F32,
    )
    .unwrap();
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn nproc_per_node_equals_the_mpirun_run() {
    let d = tmp("nproc");
    let (a, b) = (d.join("A"), d.join("B"));
    ok(&mpirun(2, &run_args(&a, &["--batch", "2", "--device", "cpu"])));
    let text = ok(&Command::new(bin())
        .args(run_args(
            &b,
            &["--batch", "2", "--device", "cpu", "--nproc-per-node", "2"],
        ))
        .output()
        .unwrap());
    assert!(
        text.contains("starting 2 ranks") && text.contains("rank 1 of 2"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(a.join("checkpoints/step-0000006.safetensors")).unwrap(),
        std::fs::read(b.join("checkpoints/step-0000006.safetensors")).unwrap()
    );
    same_metrics(&a, &b);
    std::fs::remove_dir_all(&d).ok();
}

/// Ctrl-C to mpirun: every rank finishes the same step, rank 0 writes its
/// checkpoint, and the metrics end at that step.
#[test]
fn ctrl_c_to_the_launcher_stops_every_rank_after_one_checkpoint() {
    let d = tmp("int");
    let a = d.join("A");
    let mut child = spawn_long_run(&a, "100000");
    wait_for_file(&mut child, &a.join("metrics.jsonl"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    wait_for_exit(&mut child);
    let latest = latest(&a);
    let last = metrics(&a).last().cloned().unwrap();
    assert!(
        last.starts_with(&format!("\"train\" {}", latest["step"])),
        "{last} vs {latest}"
    );
    std::fs::remove_dir_all(&d).ok();
}
