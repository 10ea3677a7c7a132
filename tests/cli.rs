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
fn a_subcommand_that_has_not_landed_says_so_and_exits_2() {
    let out = nemesis(&["probe", "--epochs", "3"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not yet") && err.contains("issue 9"), "{err}");
}

#[test]
fn an_unknown_subcommand_is_a_usage_error() {
    let out = nemesis(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}
