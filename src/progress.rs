//! Progress for long jobs: an indicatif bar with its ETA on a terminal,
//! otherwise (logs, CI) a plain line every few seconds with the ETA.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    label: String,
    started: Instant,
    /// Items done when the first update came (where the rate counts from).
    first: Option<u64>,
    /// When the last plain line was written (none yet: the first update writes one).
    last_line: Option<Instant>,
    every: Duration,
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} {elapsed_precise} eta {eta} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            // The clock and ETA move while a long item runs.
            b.enable_steady_tick(Duration::from_millis(500));
            b
        });
        Progress {
            bar,
            total,
            done: 0,
            label: label.to_string(),
            started: Instant::now(),
            first: None,
            last_line: None,
            every: Duration::from_secs(5),
        }
    }

    /// One more item done; `msg` describes the latest state.
    pub fn inc(&mut self, msg: &str) {
        self.set(self.done + 1, msg);
    }

    /// `n` more items done.
    pub fn add(&mut self, n: u64, msg: &str) {
        self.set(self.done + n, msg);
    }

    /// Jumps to `done` items (a resumed run starts part-way).
    pub fn set(&mut self, done: u64, msg: &str) {
        let first = self.done;
        self.done = done;
        match &self.bar {
            Some(b) => {
                b.set_message(msg.to_string());
                b.set_position(done);
            }
            None => {
                if self.last_line.is_none_or(|t| t.elapsed() >= self.every) || self.done == self.total {
                    // The rate of the items done in this process (a resumed
                    // run starts part-way).
                    let secs = self.started.elapsed().as_secs_f64();
                    let eta = match self.done.checked_sub(self.first.unwrap_or(first)) {
                        Some(n) if n > 0 && self.done < self.total => {
                            format!(", eta {:.0} s", secs / n as f64 * (self.total - self.done) as f64)
                        }
                        _ => String::new(),
                    };
                    eprintln!("{}: {}/{} ({secs:.0} s{eta}) {msg}", self.label, self.done, self.total);
                    self.last_line = Some(Instant::now());
                }
            }
        }
        self.first.get_or_insert(first);
    }

    /// Runs `f` (which prints) with the bar hidden.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    /// A line that must not be overwritten by the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
