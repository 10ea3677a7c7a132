//! `nemesis bench kernels`: each kernel at the paper model's shapes on a
//! device, beside its floors (ENGINEERING.md, "Performance method"): the
//! FLOPs over the bf16 matrix rate and the bytes over the memory bandwidth,
//! both measured in the same run. The flash attention kernels are timed
//! beside the plain ones they replace.

use std::time::Instant;

use clap::{Args, ValueEnum};

use crate::backend::device::{Arg, Gemm, Launch, SharedDevice};
use crate::backend::gpu::{self, AttentionKernel};
use crate::error::{Error, Result};
use crate::rng::RngStream;
use crate::tensor::{SeqLayout, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KernelSet {
    /// The MATB and patch-embedding attention kernels.
    Attention,
}

#[derive(Args, Debug)]
pub struct KernelArgs {
    #[arg(long, value_enum, default_value_t = super::device::DeviceArg::Auto)]
    pub device: super::device::DeviceArg,
    /// Which kernels.
    #[arg(long, value_enum, default_value_t = KernelSet::Attention)]
    pub only: KernelSet,
    /// Timed launches per kernel (after one warm-up).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Tiny shapes and small reference measurements, to check the tool
    /// itself (e.g. on the emulator); the numbers mean nothing.
    #[arg(long)]
    pub quick: bool,
}

/// One attention use of the paper model (SPEC 5, batch 4).
struct Shape {
    name: &'static str,
    layout: SeqLayout,
    heads: usize,
    head_dim: usize,
}

fn paper_shapes(quick: bool) -> Vec<Shape> {
    let s = |name, layout, heads, head_dim| Shape {
        name,
        layout,
        heads,
        head_dim,
    };
    if quick {
        return vec![
            s("spatial (quick)", SeqLayout::spatial(1, 2, 16), 2, 16),
            s("depth (quick)", SeqLayout::depth(1, 4, 8), 2, 12),
        ];
    }
    // Batch 4, grid 16 × 16 × 16, E = 768, 8 heads of 96; masked encoder:
    // 64 visible tokens per slice; patch embedding: 8 + 8 rows, width 96.
    vec![
        s("encoder spatial (L=64)", SeqLayout::spatial(4, 16, 64), 8, 96),
        s("encoder depth (T=16, strided)", SeqLayout::depth(4, 16, 64), 8, 96),
        s("decoder spatial (L=256)", SeqLayout::spatial(4, 16, 256), 8, 96),
        s("decoder depth (T=16, strided)", SeqLayout::depth(4, 16, 256), 8, 96),
        s("patch embedding (16 rows)", SeqLayout::contiguous(4 * 1024, 16), 8, 12),
    ]
}

/// Seconds per call of `f`, after a warm-up, synchronised.
fn time(dev: &SharedDevice, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    dev.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    dev.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() / iters as f64)
}

fn random(dev: &SharedDevice, n: usize, seed: u64) -> Result<Tensor> {
    let mut v = vec![0f32; n];
    RngStream::new(seed, 7).fill_uniform(0, &mut v);
    v.iter_mut().for_each(|x| *x = 2.0 * *x - 1.0);
    Tensor::from_vec(v, [n])?.to_device(dev)
}

/// The bf16 matrix rate (FLOP/s) of an n³ GEMM with bf16 operands already
/// in memory, and the bandwidth (bytes/s) of a streaming read + write.
pub(super) fn reference_rates(dev: &SharedDevice, quick: bool) -> Result<(f64, f64)> {
    let n: usize = if quick { 64 } else { 8192 };
    let words = (n * n).div_ceil(2);
    let (a, b, c) = (dev.alloc(words * 4)?, dev.alloc(words * 4)?, dev.alloc(n * n * 4)?);
    let zero = vec![0u8; words * 4];
    dev.upload(&a, &zero)?;
    dev.upload(&b, &zero)?;
    let g = Gemm {
        bf16_inputs: true,
        ..Gemm::new(n, n, n, false, true)
    };
    let iters = if quick { 1 } else { 10 };
    let t = time(dev, iters, || dev.gemm(&g, &a, &b, &c, None));
    for buf in [&a, &b, &c] {
        dev.free(buf);
    }
    let gemm_rate = 2.0 * (n as f64).powi(3) / t?;
    let len = if quick { 1 << 12 } else { 1 << 28 };
    let x = random(dev, len, 1)?;
    let y = gpu::empty(dev, [len])?;
    let (xs, ys) = (x.device_storage().map(|d| &d.buf), y.device_storage().map(|d| &d.buf));
    let (Some(xs), Some(ys)) = (xs, ys) else {
        return Err(Error::invalid(
            "bench kernels",
            "the copy buffers are not on the device",
        ));
    };
    let cfg = Launch::linear((len / 256).min(65_535) as u32, 256, 0);
    let t = time(dev, iters, || {
        dev.launch(
            "scale_forward",
            &cfg,
            &[Arg::Buf(xs), Arg::Buf(ys), Arg::U64(len as u64), Arg::F32(1.0)],
        )
    })?;
    Ok((gemm_rate, 8.0 * len as f64 / t))
}

pub fn run(a: &KernelArgs) -> Result<()> {
    let Some(dev) = super::device::select(a.device, false)? else {
        return Err(Error::invalid(
            "bench kernels",
            "times device kernels: use --device cuda on a GPU (or --device emu --quick to check the tool)",
        ));
    };
    if a.iters == 0 {
        return Err(Error::invalid("--iters", "must be at least 1"));
    }
    let (matrix, bandwidth) = reference_rates(&dev, a.quick)?;
    println!(
        "{}: bf16 GEMM {:.1} TFLOP/s (n³ = {}³, operands in bf16), streaming copy {:.0} GB/s",
        dev.name(),
        matrix / 1e12,
        if a.quick { 64 } else { 8192 },
        bandwidth / 1e9
    );
    println!("floor = max(FLOPs / GEMM rate, bytes / copy bandwidth); FLOPs count QKᵀ and PV (forward), and dV, dP, dQ, dK (backward), not recomputation");
    println!(
        "{:<32} {:<11} {:<4} {:>10} {:>10} {:>10} {:>9}",
        "shape", "kernel", "pass", "time (ms)", "TFLOP/s", "floor (ms)", "of floor"
    );
    match a.only {
        KernelSet::Attention => {
            for s in paper_shapes(a.quick) {
                attention_rows(&dev, &s, a.iters, matrix, bandwidth)?;
            }
        }
    }
    Ok(())
}

fn attention_rows(dev: &SharedDevice, s: &Shape, iters: usize, matrix: f64, bandwidth: f64) -> Result<()> {
    let e = s.heads * s.head_dim;
    let rows = s.layout.num_rows();
    let qkv = random(dev, rows * 3 * e, 2)?.reshape([rows, 3 * e])?;
    let dout = random(dev, rows * e, 3)?.reshape([rows, e])?;
    let per_head = (s.layout.num_seqs() * s.heads) as f64 * (s.layout.len as f64).powi(2) * s.head_dim as f64;
    let fwd_flops = 4.0 * per_head;
    let bwd_flops = 8.0 * per_head;
    let fwd_bytes = 4.0 * (4 * rows * e) as f64;
    let bwd_bytes = 4.0 * (8 * rows * e) as f64;
    for kernel in [
        AttentionKernel::Plain,
        AttentionKernel::FlashF32,
        AttentionKernel::FlashBf16,
    ] {
        let label = match kernel {
            AttentionKernel::Plain => "plain f32",
            AttentionKernel::FlashF32 => "flash f32",
            AttentionKernel::FlashBf16 => "flash bf16",
        };
        let (out, lse) = gpu::attention_with(kernel, &qkv, s.layout, s.heads, None)?;
        let tf = time(dev, iters, || {
            gpu::attention_with(kernel, &qkv, s.layout, s.heads, None).map(|_| ())
        })?;
        let tb = time(dev, iters, || {
            gpu::attention_backward_with(kernel, &dout, &qkv, &out, &lse, s.layout, s.heads, None).map(|_| ())
        })?;
        for (pass, t, flops, bytes) in [("fwd", tf, fwd_flops, fwd_bytes), ("bwd", tb, bwd_flops, bwd_bytes)] {
            let floor = (flops / matrix).max(bytes / bandwidth);
            println!(
                "{:<32} {:<11} {:<4} {:>10.3} {:>10.2} {:>10.3} {:>8.1}%",
                s.name,
                label,
                pass,
                t * 1e3,
                flops / t / 1e12,
                floor * 1e3,
                100.0 * floor / t
            );
        }
    }
    Ok(())
}
