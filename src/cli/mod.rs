//! The `nemesis` command line. Each subcommand gets its own module as it
//! lands; until then it says which issue brings it and exits with status 2.

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("NEMESIS_GIT_COMMIT"), ")");

#[derive(Parser, Debug)]
#[command(
    name = "nemesis",
    version = VERSION,
    about = "NEMESIS masked-autoencoder pretraining for 3D CT",
    long_about = "NEMESIS masked-autoencoder pretraining and probing for 3D CT superpatches: \
                  noise-enhanced reconstruction, dual (plane + axis) masking, MATB blocks.\n\
                  CPU reference backend today; CUDA kernels via NVRTC as they land."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Arguments of a subcommand that has not landed yet, kept so that a script
/// written against the documented interface gets the "not yet" message
/// rather than a parse error.
#[derive(clap::Args, Debug)]
pub struct Pending {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pretrain a NEMESIS model (built-in default: synthetic CT phantoms, `small` preset, CPU).
    Pretrain(Pending),
    /// Encode superpatches or a NIfTI volume into encoder features.
    Encode(Pending),
    /// Reconstruct masked superpatches with a checkpoint and save pictures.
    Reconstruct(Pending),
    /// Count the FLOPs of a configuration (SPEC 13).
    Flops(Pending),
    /// Convert a NIfTI dataset into a memory-mapped training cache.
    Prepare(Pending),
    /// Print a NIfTI volume's shape, spacing, orientation and HU range.
    Inspect(Pending),
    /// Generate synthetic CT phantoms with organ label maps.
    Synth(Pending),
    /// Linear-probe a frozen encoder on organ presence (AUROC, F1).
    Probe(Pending),
    /// Compare every GPU kernel and a training step with the CPU reference.
    Check(Pending),
    /// Microbenchmarks: kernels and whole training steps.
    Bench(Pending),
}

impl Command {
    fn pending(&self) -> (&'static str, &'static str) {
        match self {
            Command::Pretrain(_) => ("`nemesis pretrain`", "issue 5 (the pretraining job)"),
            Command::Encode(_) => ("`nemesis encode`", "issue 3 (the model)"),
            Command::Reconstruct(_) => ("`nemesis reconstruct`", "issue 3 (the model)"),
            Command::Flops(_) => ("`nemesis flops`", "issue 3 (the model)"),
            Command::Prepare(_) => ("`nemesis prepare`", "issue 4 (the CT data pipeline)"),
            Command::Inspect(_) => ("`nemesis inspect`", "issue 4 (the CT data pipeline)"),
            Command::Synth(_) => ("`nemesis synth`", "issue 4 (the CT data pipeline)"),
            Command::Probe(_) => ("`nemesis probe`", "issue 9 (the linear probe)"),
            Command::Check(_) => ("`nemesis check`", "issue 6 (the CUDA backend)"),
            Command::Bench(_) => ("`nemesis bench`", "issues 7 and 8 (kernels and speed)"),
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let (what, tracking) = cli.command.pending();
    Err(Error::NotYet { what, tracking })
}
