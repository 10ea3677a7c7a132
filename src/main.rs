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

/// The main thread becomes worker 0 of rayon's global pool, so the CPU
/// step's parallel loops start from inside the pool: no hand-off to a
/// sleeping worker and back at each op (a third of the context switches of
/// a step). With one thread the pool stays apart from the main thread, since
/// a loader thread's parallel work would otherwise wait for a main thread
/// that is waiting for the loader.
fn main_thread_joins_the_pool() {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads >= 2 {
        // An error means a pool already exists; the default one then serves.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .use_current_thread()
            .build_global();
    }
}

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
    main_thread_joins_the_pool();
    match run(cli) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("nemesis: error: {e}");
            ExitCode::FAILURE
        }
    }
}
