//! Data-parallel training over MPI (`cargo test --release --features mpi
//! --test mpi`; CI installs Open MPI). Two CPU ranks with batch 2 equal one
//! rank with accum 2, byte for byte in the weights and line for line in the
//! metrics; two emulator ranks track the CPU run.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nemesis")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nemesis-mpi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[track_caller]
fn ok(o: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    text
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
    assert_eq!(metrics(&a), metrics(&b));
    // Rank 0 alone wrote: one metrics line per step.
    assert_eq!(metrics(&a).iter().filter(|l| l.starts_with("\"train\"")).count(), 6);
    // The run resumes on one rank where the two left it.
    ok(&Command::new(bin())
        .args([
            "pretrain",
            "--resume",
            a.to_str().unwrap(),
            "--steps",
            "7",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap());
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
    std::fs::remove_dir_all(&d).ok();
}
