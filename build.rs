//! Build-time facts for `nemesis --version`: the git commit the binary was
//! built from, so a benchmark or checkpoint can name the exact engine.
//! (The CUDA kernels under kernels/ are embedded here once the CUDA backend
//! lands; they are compiled at run time by NVRTC, not at build time.)

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-changed=kernels");
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=NEMESIS_GIT_COMMIT={commit}");
}
