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

fn main() -> ExitCode {
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
