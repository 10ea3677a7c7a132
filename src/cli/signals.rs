//! SIGINT (Ctrl-C) and SIGTERM (what SLURM and other schedulers send
//! before they kill a job) during a run: the first asks the run to finish
//! its step, write a checkpoint and exit with 128 + the signal's number
//! (130 and 143); a second one exits at once with that status, leaving the
//! checkpoints written so far intact (each is written atomically).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;

use crate::error::{Error, Result};

pub struct Signals {
    /// Set by the first signal; what the training loop watches.
    pub stop: Arc<AtomicBool>,
    which: Arc<AtomicUsize>,
}

impl Signals {
    pub fn install() -> Result<Signals> {
        let stop = Arc::new(AtomicBool::new(false));
        let which = Arc::new(AtomicUsize::new(0));
        for sig in [SIGINT, SIGTERM] {
            let err = |e: std::io::Error| Error::invalid("pretrain", format!("cannot handle signal {sig}: {e}"));
            // Registered first, so it runs first: once a signal has been
            // seen, the next one ends the process.
            flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&stop)).map_err(err)?;
            flag::register(sig, Arc::clone(&stop)).map_err(err)?;
            flag::register_usize(sig, Arc::clone(&which), sig as usize).map_err(err)?;
        }
        // Said at once, while the step finishes.
        let seen = Arc::clone(&stop);
        let name = Arc::clone(&which);
        std::thread::spawn(move || {
            while !seen.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let sig = if name.load(Ordering::SeqCst) as i32 == SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            eprintln!("\n{sig}: finishing this step, then writing a checkpoint (a second signal quits at once)");
        });
        Ok(Signals { stop, which })
    }

    /// The signal that stopped the run, as its name and the exit status it
    /// gives; `None` when none came.
    pub fn received(&self) -> Option<(&'static str, u8)> {
        match self.which.load(Ordering::SeqCst) as i32 {
            SIGINT => Some(("SIGINT", 130)),
            SIGTERM => Some(("SIGTERM", 143)),
            _ => None,
        }
    }
}
