//! The binary as a user runs it.

use std::process::Command;

fn nemesis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nemesis"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn help_lists_every_subcommand() {
    let out = nemesis(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "pretrain",
        "encode",
        "reconstruct",
        "flops",
        "prepare",
        "inspect",
        "synth",
        "probe",
        "check",
        "bench",
    ] {
        assert!(text.contains(cmd), "--help does not list `{cmd}`:\n{text}");
    }
}

#[test]
fn version_names_the_commit() {
    let out = nemesis(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("commit"));
}

#[test]
fn an_unknown_subcommand_is_a_usage_error() {
    let out = nemesis(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}

#[test]
fn check_runs_every_kernel_on_the_emulator() {
    let out = nemesis(&["check", "--device", "emu", "--seed", "7", "--steps", "none"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for k in [
        "superpatch_input",
        "attention_backward",
        "layer_norm_backward",
        "dropout_forward",
        "scatter_rows",
        "f32_to_bf16",
        "mma_fragment_probe",
        "flash_mma_probe_bf16",
    ] {
        assert!(text.contains(k), "{k} missing:\n{text}");
    }
    assert!(text.contains(" 0 failed"), "{text}");
    // Without a usable GPU: a clear error and exit status 1, never a panic.
    use nemesis::backend::cuda_probe::{probe, CudaProbe};
    if !matches!(probe(), CudaProbe::Gpus(n) if n > 0) {
        let cuda = nemesis(&["check", "--device", "cuda"]);
        let err = String::from_utf8_lossy(&cuda.stderr);
        assert_eq!(cuda.status.code(), Some(1), "{err}");
        assert!(err.contains("CUDA is not available"), "{err}");
    }
}

#[test]
fn a_missing_cuda_driver_is_a_clear_error_not_a_crash() {
    use nemesis::backend::cuda_probe::{probe_library, CudaProbe};
    let p = probe_library("/nonexistent/libcuda.so.1");
    assert!(matches!(p, CudaProbe::NoDriver(_)));
    assert!(p.describe().contains("no CUDA driver") && p.describe().contains("/nonexistent/libcuda.so.1"));
    // This machine's answer, whatever it is, is a sentence and an exit status, never a panic.
    let out = nemesis(&["flops", "--preset", "tiny"]);
    assert!(out.status.success());
    let enc = nemesis(&[
        "encode",
        "--checkpoint",
        "x",
        "--input",
        "y",
        "--output",
        "z",
        "--device",
        "cuda",
    ]);
    assert_eq!(enc.status.code(), Some(1));
    let err = String::from_utf8_lossy(&enc.stderr);
    assert!(err.contains("CUDA is not available") || err.contains("x"), "{err}");
}

#[test]
fn mixed_precision_on_the_cpu_is_a_clear_error() {
    let out = nemesis(&["bench", "step", "--preset", "tiny", "--device", "cpu", "--bf16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--bf16") && err.contains("device"), "{err}");
}

#[test]
fn bench_kernels_times_flash_and_plain_attention_on_a_device() {
    let out = nemesis(&["bench", "kernels", "--device", "emu", "--quick", "--iters", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for k in ["plain f32", "flash f32", "flash bf16", "of floor", "TFLOP/s"] {
        assert!(text.contains(k), "{k} missing:\n{text}");
    }
    // Both passes of three kernels on two shapes.
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(" fwd ") || l.contains(" bwd "))
            .count(),
        12,
        "{text}"
    );
    let other = nemesis(&[
        "bench", "kernels", "--device", "emu", "--quick", "--iters", "1", "--only", "other",
    ]);
    let text = String::from_utf8_lossy(&other.stdout);
    assert!(other.status.success(), "{text}");
    for k in ["cuBLASLt bf16", "layernorm", "gelu", "dropout", "input", "adamw_multi"] {
        assert!(text.contains(k), "{k} missing:\n{text}");
    }
    let cpu = nemesis(&["bench", "kernels", "--device", "cpu"]);
    let err = String::from_utf8_lossy(&cpu.stderr);
    assert_eq!(cpu.status.code(), Some(1), "{err}");
    assert!(err.contains("--device cuda"), "{err}");
}

/// Every flag of every command says what it does (a description line, not
/// only a default or the possible values), and every command's help ends
/// with examples.
#[test]
fn every_flag_is_described_and_every_command_has_examples() {
    let commands: &[&[&str]] = &[
        &["pretrain"],
        &["init"],
        &["encode"],
        &["reconstruct"],
        &["flops"],
        &["prepare"],
        &["inspect"],
        &["synth"],
        &["probe"],
        &["check"],
        &["compile-kernels"],
        &["bench"],
        &["bench", "data"],
        &["bench", "step"],
        &["bench", "kernels"],
    ];
    let mut silent = Vec::new();
    for c in commands {
        let mut args = c.to_vec();
        args.push("--help");
        let o = nemesis(&args);
        assert!(o.status.success(), "{c:?}");
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let flag = l.trim_start();
            if !(flag.starts_with("--") || flag.starts_with("-h")) || !l.starts_with("  ") {
                continue;
            }
            // Compact help puts the description after the flag, two or more
            // spaces on; long help on the next line.
            let is_text = |t: &str| {
                !(t.is_empty() || t.starts_with("[default") || t.starts_with("[possible") || t.starts_with("Possible"))
            };
            let inline = flag
                .split("  ")
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .nth(1)
                .unwrap_or("");
            let next = lines.get(i + 1).map(|n| n.trim()).unwrap_or("");
            let described = is_text(inline) || (is_text(next) && !next.starts_with('-'));
            if !described {
                silent.push(format!("{} {flag}", c.join(" ")));
            }
        }
        // `bench`'s subcommands show their examples under `bench --help`.
        if c.len() == 1 {
            assert!(
                text.contains("Examples:"),
                "`nemesis {} --help` has no examples",
                c.join(" ")
            );
        }
    }
    assert!(silent.is_empty(), "flags without a description: {silent:#?}");
    let top = String::from_utf8_lossy(&nemesis(&["--help"]).stdout).to_string();
    assert!(!top.contains("today") && top.contains("emulator"), "{top}");
}

#[test]
fn inspect_calls_a_label_map_a_label_map() {
    let d = std::env::temp_dir().join(format!("nemesis-cli-labels-{}", std::process::id()));
    let p = d.join("labels.nii");
    std::fs::create_dir_all(&d).unwrap();
    let mut v = vec![0u8; 8 * 8 * 8];
    v[5] = 3;
    v[100] = 7;
    nemesis::data::write_volume(&p, [8, 8, 8], [1.0, 1.0, 1.0], nemesis::data::VoxelData::U8(&v)).unwrap();
    let o = nemesis(&["inspect", p.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("a label map: 3 distinct, 0, 3, 7"), "{text}");
    assert!(!text.contains("HU "), "{text}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
#[cfg(not(feature = "mpi"))]
fn several_ranks_in_a_build_without_mpi_say_how_to_build_it() {
    let o = Command::new(env!("CARGO_BIN_EXE_nemesis"))
        .args([
            "pretrain",
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--out",
            "/nonexistent/never",
        ])
        .env("OMPI_COMM_WORLD_RANK", "1")
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_LOCAL_RANK", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("rank 1 of 2 (local rank 1), launched by Open MPI") && err.contains("--features mpi"),
        "{err}"
    );
}

#[test]
#[cfg(not(feature = "mpi"))]
fn nproc_per_node_in_a_build_without_mpi_says_how_to_build_it() {
    let o = nemesis(&["pretrain", "--preset", "tiny", "--nproc-per-node", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--nproc-per-node") && err.contains("--features mpi"),
        "{err}"
    );
}
