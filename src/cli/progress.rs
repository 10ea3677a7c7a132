//! Progress for long jobs: an indicatif bar on a terminal, plain periodic
//! lines otherwise (logs, CI).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    label: String,
    last_line: Instant,
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
            b
        });
        Progress {
            bar,
            total,
            done: 0,
            label: label.to_string(),
            last_line: Instant::now(),
            every: Duration::from_secs(5),
        }
    }

    /// One more item done; `msg` describes the latest state.
    pub fn inc(&mut self, msg: &str) {
        self.done += 1;
        match &self.bar {
            Some(b) => {
                b.set_message(msg.to_string());
                b.inc(1);
            }
            None => {
                if self.last_line.elapsed() >= self.every || self.done == self.total {
                    eprintln!("{}: {}/{} {msg}", self.label, self.done, self.total);
                    self.last_line = Instant::now();
                }
            }
        }
    }

    /// Jumps to `done` items (a resumed run starts part-way).
    pub fn set(&mut self, done: u64, msg: &str) {
        self.done = done;
        match &self.bar {
            Some(b) => {
                b.set_message(msg.to_string());
                b.set_position(done);
            }
            None => {
                if self.last_line.elapsed() >= self.every || self.done == self.total {
                    eprintln!("{}: {}/{} {msg}", self.label, self.done, self.total);
                    self.last_line = Instant::now();
                }
            }
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
