use std::process::ExitCode;

use clap::Parser;
use nemesis::cli::{run, Cli};

/// Tensors of tens of megabytes come and go in every training step. By
/// default glibc maps each large allocation fresh and unmaps it at free, so
/// every step faults all of those pages in again and zeroes them. Serving
/// everything from the heap and keeping freed memory there (peak memory
/// stays mapped, as a caching allocator's would) made the CPU step 14 %
/// (small) to 24 % (paper) faster (docs/BENCHMARKS.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator settings; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Output piped into a program that stops reading (`nemesis inspect v.nii
/// | head`) ends the process quietly, as for every Unix tool, instead of a
/// panic on the failed write (Rust ignores SIGPIPE by default).
#[cfg(unix)]
fn quiet_broken_pipe() {
    // SAFETY: restores the default action of one signal before any other
    // thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn quiet_broken_pipe() {}

fn main() -> ExitCode {
    quiet_broken_pipe();
    // A user's own GLIBC_TUNABLES take precedence.
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        keep_freed_memory();
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("nemesis: error: {e}");
            ExitCode::FAILURE
        }
    }
}
