//! How `pretrain` meets the launchers without MPI or a GPU: GPU ranks
//! started by `--nproc-per-node` on a machine without one end at once with
//! the reason (none waits at the rendezvous), and ranks that torchrun
//! started on the CPU are told how CPU ranks start. The NCCL path itself
//! runs on a GPU (tools/device-check.sh); the rendezvous has unit tests
//! (src/dist/rendezvous.rs).

use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{bin, output_text};

#[test]
fn gpu_ranks_without_a_gpu_end_with_the_reason() {
    let out = common::fresh_dir("launchers", "gpu");
    let start = Instant::now();
    let o = Command::new(bin())
        .args(["pretrain", "--preset", "tiny", "--steps", "1", "--device", "cuda"])
        .args(["--nproc-per-node", "2", "--collective-timeout", "60", "--out"])
        .arg(out.join("run"))
        // Whatever the test machine has, no GPU is visible here.
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .unwrap();
    let t = output_text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("starting 2 GPU ranks"), "{t}");
    // Both ranks say why, and neither waited for the other until the timeout.
    assert_eq!(t.matches("CUDA is not available").count(), 2, "{t}");
    assert!(start.elapsed() < Duration::from_secs(60), "{t}");
    assert!(!out.join("run").join("latest.json").exists());
}

#[test]
fn bf16_allreduce_alone_is_refused() {
    let out = common::fresh_dir("launchers", "alone");
    let o = Command::new(bin())
        .args([
            "pretrain",
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--device",
            "cpu",
            "--bf16-allreduce",
            "--out",
        ])
        .arg(out.join("run"))
        .output()
        .unwrap();
    let t = output_text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("--bf16-allreduce") && t.contains("several ranks"), "{t}");
    assert!(!out.join("run").exists());
}

#[test]
fn cpu_and_emulator_ranks_from_torchrun_are_told_to_use_mpirun() {
    for device in ["cpu", "emu"] {
        let out = common::fresh_dir("launchers", device);
        let o = Command::new(bin())
            .args([
                "pretrain", "--preset", "tiny", "--steps", "1", "--device", device, "--out",
            ])
            .arg(out.join("run"))
            .envs([
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("LOCAL_RANK", "0"),
                ("MASTER_ADDR", "127.0.0.1"),
                ("MASTER_PORT", "29999"),
            ])
            .output()
            .unwrap();
        let t = output_text(&o);
        assert!(!o.status.success(), "{t}");
        assert!(t.contains("rank 0 of 2") && t.contains("torchrun"), "{t}");
        assert!(t.contains("start them with mpirun"), "{t}");
    }
}
