//! Attention (src/backend/gpu/attention.rs) against the CPU reference: the
//! plain kernels on a few layouts with `run`, and the flash kernels over
//! every head dim, length and layout with `attention_kernels`.

use super::{grad_of, rel, values, CheckRow, Kit, BF16_LIMIT, FP32_LIMIT};
use crate::autograd::{ParamStore, Tape};
use crate::backend::gpu::{self, AttentionKernel};
use crate::device::SharedDevice;
use crate::error::Result;
use crate::ops::{AttentionOptions, AttnDropout};
use crate::rng::RngStream;
use crate::tensor::{SeqLayout, Tensor};

/// The output and QKV gradient of attention over `qkv` on the CPU: the
/// reference every kernel is held to.
fn reference(
    qkv: &[f32],
    dout: &[f32],
    layout: SeqLayout,
    heads: usize,
    e: usize,
    dropout: Option<AttnDropout>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let n = layout.num_rows();
    let tape = Tape::new();
    let x = tape.input(Tensor::from_vec(qkv.to_vec(), [n, 3 * e])?, true);
    let opts = AttentionOptions { layout, heads, dropout };
    let y = tape.attention(&x, &opts)?;
    let out = y.value().to_vec::<f32>()?;
    let grads = tape.backward_with(&y, Tensor::from_vec(dout.to_vec(), [n, e])?, &mut ParamStore::new())?;
    Ok((out, grad_of(&grads, &x)?))
}

/// The plain kernels (what `NEMESIS_ATTENTION=plain` runs) on the two MATB
/// streams, the patch embedding's attention and a long head.
pub(super) fn plain_cases(kit: &mut Kit) -> Result<()> {
    let r = kit.r;
    let cases = [
        ("spatial", SeqLayout::spatial(2, 3, 5), 2, 12, None),
        ("depth", SeqLayout::depth(2, 4, 6), 3, 8, Some(0.1)),
        ("patch-embedding", SeqLayout::contiguous(5, 12), 2, 6, Some(0.1)),
        ("spatial dh 96", SeqLayout::spatial(1, 2, 9), 1, 96, None),
    ];
    for (k, (name, layout, heads, dh, p)) in cases.into_iter().enumerate() {
        let e = heads * dh;
        let n = layout.num_rows();
        let qkv = kit.values(n * 3 * e, 1_000_000 + 100_000 * k as u64, 1.5);
        let dout = kit.values(n * e, 2_000_000 + 100_000 * k as u64, 1.0);
        let drop = p.map(|p| (p, r));
        let (want_out, want_dq) = reference(&qkv, &dout, layout, heads, e, p.map(|p| AttnDropout { p, rng: r }))?;
        let tq = kit.up(&qkv, [n, 3 * e])?;
        let (out, lse) = gpu::attention_with(AttentionKernel::Plain, &tq, layout, heads, drop)?;
        let tg = kit.up(&dout, [n, e])?;
        let dq = gpu::attention_backward_with(AttentionKernel::Plain, &tg, &tq, &out, &lse, layout, heads, drop)?;
        let case = format!("{name}, {} seqs × {} rows, {heads}×{dh}", layout.num_seqs(), layout.len);
        kit.push("attention_forward", &case, rel(&super::host(&out)?, &want_out));
        kit.push("attention_backward", case, rel(&super::host(&dq)?, &want_dq));
    }
    Ok(())
}

/// One attention shape of the flash-kernel checks.
#[derive(Clone, Copy, Debug)]
pub struct AttnCase {
    pub name: &'static str,
    pub layout: SeqLayout,
    pub heads: usize,
    pub head_dim: usize,
    pub dropout: Option<f64>,
}

/// The flash-kernel cases: every head dim of 4, 12, 16, 32, 64, 96 and 128,
/// every length of 1, 7, 16, 64, 100 and 256, contiguous and strided
/// layouts, with and without dropout. `quick` keeps the cases the emulator
/// runs in seconds (no length 256 or head dim 128 in bf16).
pub fn attention_cases() -> Vec<AttnCase> {
    let c = |name, layout, heads, head_dim, dropout| AttnCase {
        name,
        layout,
        heads,
        head_dim,
        dropout,
    };
    vec![
        c("contiguous", SeqLayout::contiguous(3, 7), 2, 4, None),
        c("patch-embedding", SeqLayout::contiguous(5, 16), 2, 12, Some(0.1)),
        c("spatial", SeqLayout::spatial(2, 2, 1), 3, 16, None),
        c("depth (strided)", SeqLayout::depth(1, 64, 2), 1, 32, Some(0.1)),
        c("spatial", SeqLayout::spatial(1, 1, 100), 1, 64, None),
        c("depth (strided)", SeqLayout::depth(1, 7, 3), 2, 96, Some(0.2)),
        c("spatial", SeqLayout::spatial(1, 1, 256), 1, 128, Some(0.1)),
        c("depth (strided)", SeqLayout::depth(2, 16, 5), 2, 12, None),
    ]
}

/// Each case through `kernel` on `dev` against the CPU reference: output
/// and QKV gradient, under the limit of the kernel's precision.
pub fn attention_kernels(
    dev: &SharedDevice,
    kernel: AttentionKernel,
    cases: &[AttnCase],
    seed: u64,
) -> Result<Vec<CheckRow>> {
    let r = RngStream::new(seed, 0xF1A5);
    let (label, limit) = match kernel {
        AttentionKernel::Plain => ("plain", FP32_LIMIT),
        AttentionKernel::FlashF32 => ("flash f32", FP32_LIMIT),
        AttentionKernel::FlashBf16 => ("flash bf16", BF16_LIMIT),
    };
    let mut rows = Vec::new();
    for (k, c) in cases.iter().enumerate() {
        let e = c.heads * c.head_dim;
        let n = c.layout.num_rows();
        let qkv = values(n * 3 * e, r, 100_000_000 * k as u64, 1.5);
        let dout = values(n * e, r, 100_000_000 * k as u64 + 50_000_000, 1.0);
        let drop = c.dropout.map(|p| (p, r));
        let (want_out, want_dq) = reference(
            &qkv,
            &dout,
            c.layout,
            c.heads,
            e,
            c.dropout.map(|p| AttnDropout { p, rng: r }),
        )?;
        let tq = Tensor::from_vec(qkv, [n, 3 * e])?.to_device(dev)?;
        let (out, lse) = gpu::attention_with(kernel, &tq, c.layout, c.heads, drop)?;
        let tg = Tensor::from_vec(dout, [n, e])?.to_device(dev)?;
        let dq = gpu::attention_backward_with(kernel, &tg, &tq, &out, &lse, c.layout, c.heads, drop)?;
        let case = format!(
            "{}, {} seqs × {} rows, {}×{}{}",
            c.name,
            c.layout.num_seqs(),
            c.layout.len,
            c.heads,
            c.head_dim,
            c.dropout.map(|p| format!(", dropout {p}")).unwrap_or_default()
        );
        let push = |rows: &mut Vec<CheckRow>, what: &'static str, rel_err: f64| {
            rows.push(CheckRow {
                kernel: what,
                case: format!("{label}: {case}"),
                rel_err,
                limit,
            })
        };
        push(&mut rows, "attention forward", rel(&out.to_cpu()?.to_vec()?, &want_out));
        push(&mut rows, "attention backward", rel(&dq.to_cpu()?.to_vec()?, &want_dq));
    }
    Ok(rows)
}
