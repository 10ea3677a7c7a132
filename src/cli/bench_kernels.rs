//! `nemesis bench kernels`: each kernel at the paper model's shapes on a
//! device, beside its floors (docs/DESIGN.md, "Performance method"): the
//! FLOPs over the bf16 matrix rate and the bytes over the memory bandwidth,
//! both measured in the same run. The flash attention kernels are timed
//! beside the plain ones they replace.

use std::time::Instant;

use clap::{Args, ValueEnum};

use crate::backend::gpu::{self, AttentionKernel};
use crate::device::{Gemm, Launch, SharedDevice};
use crate::error::{Error, Result};
use crate::rng::RngStream;
use crate::tensor::{Readers, SeqLayout, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KernelSet {
    /// The MATB and patch-embedding attention kernels.
    Attention,
    /// The other kernels of a training step: GEMMs, layer norm, GELU,
    /// dropout, the bias add, the fused input, AdamW.
    Other,
    /// Both.
    All,
}

#[derive(Args, Debug)]
pub struct KernelArgs {
    /// Where to run: cpu, auto (CUDA when a usable GPU is there, else the
    /// CPU; says which), cuda, or emu (the CUDA kernels on the CPU, slow).
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

/// One attention use of the paper model (MODEL.md §5, batch 4).
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
    let (xs, ys) = (device_values(&x)?, device_values(&y)?);
    let (Some(xs), Some(ys)) = (xs, ys) else {
        return Err(Error::invalid(
            "bench kernels",
            "the copy buffers are not on the device",
        ));
    };
    let cfg = Launch::linear((len / 256).min(65_535) as u32, 256, 0);
    let t = time(dev, iters, || {
        crate::backend::kernels::k::scale_forward(&**dev, &cfg, xs, ys, len as u64, 1.0)
    })?;
    Ok((gemm_rate, 8.0 * len as f64 / t))
}

pub fn run(a: &KernelArgs) -> Result<()> {
    let Some(dev) = super::device::select(a.device, false, 0)? else {
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
    println!("floor = max(FLOPs / GEMM rate, bytes / copy bandwidth); attention FLOPs count QKᵀ and PV (forward), and dV, dP, dQ, dK (backward), not recomputation; bytes are the minimal traffic (each input read once, each output written once)");
    println!(
        "{:<32} {:<14} {:<4} {:>10} {:>10} {:>10} {:>9}",
        "shape", "kernel", "pass", "time (ms)", "TFLOP/s", "floor (ms)", "of floor"
    );
    if matches!(a.only, KernelSet::Attention | KernelSet::All) {
        for s in paper_shapes(a.quick) {
            attention_rows(&dev, &s, a.iters, matrix, bandwidth)?;
        }
    }
    if matches!(a.only, KernelSet::Other | KernelSet::All) {
        other_rows(&dev, a.quick, a.iters, Rates { matrix, bandwidth })?;
    }
    Ok(())
}

/// The measured rates the floors come from.
#[derive(Clone, Copy)]
struct Rates {
    matrix: f64,
    bandwidth: f64,
}

fn row(name: &str, kernel: &str, pass: &str, t: f64, flops: f64, bytes: f64, r: Rates) {
    let floor = (flops / r.matrix).max(bytes / r.bandwidth);
    let rate = if flops > 0.0 {
        format!("{:>10.2}", flops / t / 1e12)
    } else {
        format!("{:>7.0} GB/s", bytes / t / 1e9)
    };
    println!(
        "{:<32} {:<14} {:<4} {:>10.3} {} {:>10.3} {:>8.1}%",
        name,
        kernel,
        pass,
        t * 1e3,
        rate,
        floor * 1e3,
        100.0 * floor / t
    );
}

/// The f32 buffer of a device tensor (none for a host tensor).
fn device_values(t: &Tensor) -> Result<Option<&crate::device::Buffer>> {
    t.device_storage().map(gpu::storage_values).transpose()
}

/// The rest of a paper-preset step at batch 4: the decoder's 16 384 rows of
/// E = 768 (FFN 1024), the QKV projection, the input of 4 × 128³, AdamW over
/// every parameter. (TFLOP/s for GEMMs, GB/s for the memory-bound kernels.)
fn other_rows(dev: &SharedDevice, quick: bool, iters: usize, r: Rates) -> Result<()> {
    let (rows, e, ffn) = if quick { (64, 32, 48) } else { (16_384, 768, 1024) };
    let x = random(dev, rows * e, 4)?.reshape([rows, e])?;
    let w = random(dev, 3 * e * e, 5)?.reshape([3 * e, e])?;
    let b = random(dev, 3 * e, 6)?;
    for bf16 in [false, true] {
        let g = Gemm {
            bf16,
            ..Gemm::new(rows, 3 * e, e, false, true)
        };
        let y = gpu::empty(dev, [rows, 3 * e])?;
        let (Some(xs), Some(ws), Some(ys), Some(bs)) = (
            device_values(&x)?,
            device_values(&w)?,
            device_values(&y)?,
            device_values(&b)?,
        ) else {
            return Err(Error::invalid("bench kernels", "operands are not on the device"));
        };
        let t = time(dev, iters, || dev.gemm(&g, xs, ws, ys, Some(bs)))?;
        let flops = 2.0 * (rows * 3 * e * e) as f64;
        let bytes = 4.0 * (rows * e + 3 * e * e + rows * 3 * e) as f64;
        let label = if bf16 { "cuBLASLt bf16" } else { "cuBLASLt f32" };
        row("QKV projection + bias", label, "fwd", t, flops, bytes, r);
    }
    let lw = random(dev, e, 7)?;
    let lb = random(dev, e, 8)?;
    let (y, mean, rstd) = gpu::layer_norm(&x, &lw, &lb, 1e-5, Readers::Any)?;
    let t = time(dev, iters, || {
        gpu::layer_norm(&x, &lw, &lb, 1e-5, Readers::Any).map(|_| ())
    })?;
    row("layer norm", "layernorm", "fwd", t, 0.0, 8.0 * (rows * e) as f64, r);
    let t = time(dev, iters, || {
        gpu::layer_norm_backward(&y, &x, &lw, &mean, &rstd).map(|_| ())
    })?;
    row("layer norm", "layernorm", "bwd", t, 0.0, 12.0 * (rows * e) as f64, r);
    // The residual and the norm after it in one pass (reads x, a; writes s, y)
    // against the two kernels it replaces.
    let t = time(dev, iters, || {
        gpu::add_layer_norm(&x, &y, 0.5, &lw, &lb, 1e-5, Readers::Any).map(|_| ())
    })?;
    row(
        "residual + layer norm, fused",
        "add_layer_norm",
        "fwd",
        t,
        0.0,
        16.0 * (rows * e) as f64,
        r,
    );
    let t = time(dev, iters, || {
        let s = gpu::add(&gpu::scale(&y, 0.5)?, &x)?;
        gpu::layer_norm(&s, &lw, &lb, 1e-5, Readers::Any).map(|_| ())
    })?;
    row(
        "residual + layer norm, 3 kernels",
        "unfused",
        "fwd",
        t,
        0.0,
        16.0 * (rows * e) as f64,
        r,
    );
    // A bias gradient: the column sums of rows × 3E (two fixed-order passes).
    let gq = random(dev, rows * 3 * e, 12)?;
    let t = time(dev, iters, || gpu::column_sums(&gq, 3 * e).map(|_| ()))?;
    row(
        "bias gradient (QKV)",
        "column_partials",
        "bwd",
        t,
        0.0,
        4.0 * (rows * 3 * e) as f64,
        r,
    );
    let h = random(dev, rows * ffn, 9)?;
    let t = time(dev, iters, || gpu::gelu(&h).map(|_| ()))?;
    row("GELU (FFN width)", "gelu", "fwd", t, 0.0, 8.0 * (rows * ffn) as f64, r);
    let t = time(dev, iters, || gpu::gelu_backward(&h, &h).map(|_| ()))?;
    row("GELU (FFN width)", "gelu", "bwd", t, 0.0, 12.0 * (rows * ffn) as f64, r);
    let t = time(dev, iters, || gpu::dropout(&h, 0.1, RngStream::new(1, 2)).map(|_| ()))?;
    row("dropout p=0.1", "dropout", "fwd", t, 0.0, 8.0 * (rows * ffn) as f64, r);
    let bias = random(dev, ffn, 10)?;
    let t = time(dev, iters, || gpu::add(&h, &bias).map(|_| ()))?;
    row("bias add", "add_broadcast", "fwd", t, 0.0, 8.0 * (rows * ffn) as f64, r);
    // The fused input: 4 superpatches of 128³ as i16 → 1024 visible tokens of 512 each.
    let (batch, side, patch): (usize, usize, usize) = if quick { (1, 16, 8) } else { (4, 128, 8) };
    let hu: Vec<i16> = (0..batch * side * side * side)
        .map(|i| (i % 2000) as i16 - 1000)
        .collect();
    let up = gpu::upload_hu(dev, &hu)?;
    let tokens = (side / patch).pow(3);
    let ids: Vec<usize> = (0..batch).flat_map(|_| (0..tokens).step_by(4)).collect();
    let t = time(dev, iters, || {
        gpu::superpatch_input(&up, batch, [side; 3], [patch; 3], &ids, 0.05, RngStream::new(3, 4)).map(|_| ())
    })?;
    let out_values = ids.len() * patch * patch * patch;
    row(
        "superpatch input (¼ visible)",
        "input",
        "fwd",
        t,
        0.0,
        (2 * out_values + 4 * out_values) as f64,
        r,
    );
    // AdamW over the paper model's parameter count, in one launch.
    let n = if quick {
        10_000
    } else {
        crate::model::param_count(&crate::model::ModelConfig::paper())
    };
    let (pw, pg, pm, pv) = (
        random(dev, n, 11)?,
        random(dev, n, 12)?,
        gpu::zeros(dev, [n])?,
        gpu::zeros(dev, [n])?,
    );
    let step = gpu::AdamWStep {
        lr: 1e-4,
        betas: (0.9, 0.95),
        eps: 1e-8,
        weight_decay: 0.05,
        t: 1,
    };
    let clip = gpu::clip_values(dev, 1.0, 1.0)?;
    let t = time(dev, iters, || gpu::adamw_multi(&[[&pw, &pg, &pm, &pv]], &step, &clip))?;
    row(
        "AdamW, all parameters",
        "adamw_multi",
        "step",
        t,
        0.0,
        28.0 * n as f64,
        r,
    );
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
                "{:<32} {:<14} {:<4} {:>10.3} {:>10.2} {:>10.3} {:>8.1}%",
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
