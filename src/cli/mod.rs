//! The `nemesis` command line. Each subcommand has its own module; one that
//! has not landed yet says which issue brings it and exits with status 2.

mod bench;
mod bench_conv;
mod bench_gemm;
mod bench_kernels;
mod bench_seg;
mod check;
mod compile_kernels;
mod convert;
mod device;
mod encode;
mod flops;
mod init;
mod inspect;
mod model_source;
mod prepare;
mod pretrain;
mod probe;
mod ranks;
mod reconstruct;
mod segment;
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
                  noise-enhanced reconstruction, dual (plane + axis) masking, MATB blocks. \
                  Runs on the CPU (the reference), on an NVIDIA GPU (CUDA kernels compiled \
                  at run time by NVRTC), or on the emulator (those kernels on the CPU).",
    after_help = "Start here:\n  \
                  nemesis pretrain                      # the built-in default: synthetic CT, a few minutes on a CPU\n  \
                  nemesis probe --checkpoint runs/pretrain-1/best.safetensors\n  \
                  nemesis <command> --help              # every flag, its unit and default, and examples"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pretrain a NEMESIS model (built-in default: synthetic CT phantoms, `small` preset, CPU).
    #[command(allow_negative_numbers = true)]
    #[command(
        after_help = "Examples:\n  nemesis pretrain                                     # built-in default: synthetic phantoms, small preset, 600 steps\n  nemesis pretrain --data ct_folder/ --preset small --epochs 50\n  nemesis pretrain --data dataset.json --config run.toml --device cuda --bf16\n  nemesis pretrain --resume runs/pretrain-1 --steps 2000 --lr 5e-5   # continue; changes are said\nExit status: 0 done, 1 error, 130 / 143 stopped by SIGINT / SIGTERM after a checkpoint."
    )]
    Pretrain(Box<pretrain::PretrainArgs>),
    /// Write a freshly initialised checkpoint (PyTorch-default init, seeded).
    #[command(
        after_help = "Examples:\n  nemesis init --preset tiny --out tiny.safetensors\n  nemesis init --config model.json --seed 7 --out w.safetensors"
    )]
    Init(init::InitArgs),
    /// Convert an official PyTorch checkpoint (.pt) into safetensors weights, no Python needed.
    #[command(
        after_help = "Examples:\n  nemesis convert MAE_768_0.5.pt paper.safetensors                # configuration inferred from the shapes (said)\n  nemesis convert MAE_768_0.5.pt paper.safetensors --preset paper\n  nemesis convert ckpt.pt w.safetensors --num-heads 12 --superpatch-size 96,96,96\n--checkpoint and --init take a .pt directly too."
    )]
    Convert(convert::ConvertArgs),
    /// Encode superpatches into encoder features (inference: nothing masked).
    #[command(
        after_help = "Examples:\n  nemesis encode --checkpoint runs/pretrain-1/best.safetensors --input ct.nii.gz --output features.safetensors\n  nemesis encode --checkpoint w.safetensors --input superpatches.safetensors --output f.safetensors --batch 1"
    )]
    Encode(encode::EncodeArgs),
    /// Reconstruct masked superpatches with a checkpoint; optionally a picture.
    #[command(allow_negative_numbers = true)]
    #[command(
        after_help = "Examples:\n  nemesis reconstruct --checkpoint runs/pretrain-1/best.safetensors --input ct.nii.gz --output r.safetensors --png r.png\n  nemesis reconstruct --checkpoint w.safetensors --input x.safetensors --output r.safetensors --seed 3 --noise-std 0.03"
    )]
    Reconstruct(reconstruct::ReconstructArgs),
    /// Count the FLOPs of a configuration, module by module (MODEL.md §13).
    #[command(
        after_help = "Examples:\n  nemesis flops --preset paper\n  nemesis flops --preset small --batch 8      # and the memory a batch of 8 needs"
    )]
    Flops(flops::FlopsArgs),
    /// Convert a NIfTI dataset into a memory-mapped training cache.
    #[command(
        after_help = "Examples:\n  nemesis prepare --dir ct_folder/ --out cache/\n  nemesis prepare --index dataset.json --out cache/ --jobs 8 --verify"
    )]
    Prepare(prepare::PrepareArgs),
    /// Print a NIfTI volume's shape, spacing, datatype, scaling, orientation and HU range.
    #[command(
        after_help = "Examples:\n  nemesis inspect ct.nii.gz\n  nemesis inspect ct.nii.gz --export ct.safetensors"
    )]
    Inspect(inspect::InspectArgs),
    /// Generate synthetic CT phantoms with organ label maps and a dataset.json.
    #[command(
        after_help = "Examples:\n  nemesis synth --out phantoms/ --count 10\n  nemesis synth --out small/ --count 4 --size 48,96,96 --seed 1\n  nemesis synth --out dicom/ --count 4 --format dicom      # each image a DICOM series folder"
    )]
    Synth(synth::SynthArgs),
    /// Linear-probe a frozen encoder on organ presence (AUROC, F1).
    #[command(allow_negative_numbers = true)]
    #[command(
        after_help = "Examples:\n  nemesis probe --checkpoint runs/pretrain-1/best.safetensors              # built-in phantoms\n  nemesis probe --checkpoint runs/pretrain-1/best.safetensors --random-init  # the random-encoder baseline\n  nemesis probe --checkpoint paper.safetensors --data dataset.json --label-fraction 0.1"
    )]
    Probe(probe::ProbeArgs),
    /// Segmentation: fine-tune an encoder with a UNETR-style decoder, predict whole scans, evaluate.
    #[command(
        after_help = "Examples:\n  nemesis segment train --checkpoint runs/pretrain-1/best.safetensors        # built-in phantoms and their organ labels\n  nemesis segment train --checkpoint runs/pretrain-1/best.safetensors --random-init   # the baseline\n  nemesis segment predict --model runs/segment-1/best.safetensors --input ct.nii.gz --png overlay.png\n  nemesis segment eval --model runs/segment-1/best.safetensors"
    )]
    Segment(segment::SegmentArgs),
    /// Compare every GPU kernel with the CPU reference, on the emulator or a GPU.
    #[command(
        after_help = "Examples:\n  nemesis check                       # every kernel and whole steps on the emulator (about 40 s on 2 cores)\n  nemesis check --device cuda --seed 1\n  nemesis check --steps none          # the kernels only"
    )]
    Check(check::CheckArgs),
    /// Compile every CUDA kernel with NVRTC for a GPU architecture (no GPU needed).
    #[command(
        after_help = "Examples:\n  nemesis compile-kernels --arch sm_90 --out kernels-sm90/\n  NEMESIS_KERNEL_CACHE=kernels-sm90/ nemesis pretrain --device cuda   # on the GPU machine"
    )]
    CompileKernels(compile_kernels::CompileKernelsArgs),
    /// Benchmarks with side-by-side baselines: data loading, kernels, training steps.
    #[command(
        after_help = "Examples:\n  nemesis bench step --preset small --device cpu\n  nemesis bench step --preset paper --device cuda --bf16\n  nemesis bench data\n  nemesis bench kernels --device cuda --only all\n  nemesis bench seg-step --preset small --device cpu    # beside tools/torch_seg_baseline.py"
    )]
    Bench(bench::BenchArgs),
}

/// Runs a command; the exit status it asks for on success (0, or 130/143
/// for a run a signal stopped after its checkpoint).
pub fn run(cli: Cli) -> Result<u8> {
    let done = match &cli.command {
        Command::Pretrain(a) => return pretrain::run_cli(a),
        Command::Init(a) => init::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Encode(a) => encode::run(a),
        Command::Reconstruct(a) => reconstruct::run(a),
        Command::Flops(a) => flops::run(a),
        Command::Prepare(a) => prepare::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Probe(a) => probe::run(a),
        Command::Segment(a) => return segment::run(a),
        Command::Check(a) => check::run(a),
        Command::CompileKernels(a) => compile_kernels::run(a),
        Command::Bench(a) => bench::run(a),
    };
    done.map(|()| 0)
}
