//! The `nemesis` command line. Each subcommand has its own module; one that
//! has not landed yet says which issue brings it and exits with status 2.

mod bench;
mod bench_kernels;
mod check;
mod compile_kernels;
mod device;
mod encode;
mod flops;
mod init;
mod inspect;
mod model_source;
mod prepare;
mod pretrain;
mod probe;
mod progress;
mod reconstruct;
mod signals;
mod synth;

use clap::{Parser, Subcommand};

use crate::error::Result;

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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pretrain a NEMESIS model (built-in default: synthetic CT phantoms, `small` preset, CPU).
    #[command(allow_negative_numbers = true)]
    Pretrain(Box<pretrain::PretrainArgs>),
    /// Write a freshly initialised checkpoint (PyTorch-default init, seeded).
    Init(init::InitArgs),
    /// Encode superpatches into encoder features (inference: nothing masked).
    Encode(encode::EncodeArgs),
    /// Reconstruct masked superpatches with a checkpoint; optionally a picture.
    #[command(allow_negative_numbers = true)]
    Reconstruct(reconstruct::ReconstructArgs),
    /// Count the FLOPs of a configuration, module by module (MODEL.md §13).
    Flops(flops::FlopsArgs),
    /// Convert a NIfTI dataset into a memory-mapped training cache.
    Prepare(prepare::PrepareArgs),
    /// Print a NIfTI volume's shape, spacing, datatype, scaling, orientation and HU range.
    Inspect(inspect::InspectArgs),
    /// Generate synthetic CT phantoms with organ label maps and a dataset.json.
    Synth(synth::SynthArgs),
    /// Linear-probe a frozen encoder on organ presence (AUROC, F1).
    #[command(allow_negative_numbers = true)]
    Probe(probe::ProbeArgs),
    /// Compare every GPU kernel with the CPU reference, on the emulator or a GPU.
    Check(check::CheckArgs),
    /// Compile every CUDA kernel with NVRTC for a GPU architecture (no GPU needed).
    CompileKernels(compile_kernels::CompileKernelsArgs),
    /// Benchmarks with side-by-side baselines: data loading, kernels, training steps.
    Bench(bench::BenchArgs),
}

/// Runs a command; the exit status it asks for on success (0, or 130/143
/// for a run a signal stopped after its checkpoint).
pub fn run(cli: Cli) -> Result<u8> {
    let done = match &cli.command {
        Command::Pretrain(a) => return pretrain::run_cli(a),
        Command::Init(a) => init::run(a),
        Command::Encode(a) => encode::run(a),
        Command::Reconstruct(a) => reconstruct::run(a),
        Command::Flops(a) => flops::run(a),
        Command::Prepare(a) => prepare::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Probe(a) => probe::run(a),
        Command::Check(a) => check::run(a),
        Command::CompileKernels(a) => compile_kernels::run(a),
        Command::Bench(a) => bench::run(a),
    };
    done.map(|()| 0)
}
