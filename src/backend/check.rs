//! `nemesis check`: every GPU kernel against the CPU reference on fresh
//! random inputs (odd and even sizes), with the tolerances of
//! ENGINEERING.md, through any `DeviceApi`: the emulator on every machine,
//! the CUDA device on a GPU.

use super::cpu::{elementwise, layer_norm};
use super::device::DeviceApi;
use super::launch;
use crate::autograd::{ParamStore, Tape};
use crate::data::hu_window;
use crate::error::Result;
use crate::model::{add_noise, patchify, DualMask, ModelConfig};
use crate::ops::{AttentionOptions, AttnDropout};
use crate::rng::RngStream;
use crate::tensor::{SeqLayout, Tensor};

/// fp32 against the CPU reference (ENGINEERING.md, "Numerics").
pub const FP32_LIMIT: f64 = 1e-4;

#[derive(Clone, Debug)]
pub struct CheckRow {
    pub kernel: &'static str,
    pub case: String,
    pub rel_err: f64,
    pub limit: f64,
}

impl CheckRow {
    pub fn ok(&self) -> bool {
        self.rel_err.is_finite() && self.rel_err <= self.limit
    }
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    // NaN anywhere (a poisoned output left unwritten) must fail.
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

fn values(n: usize, rng: RngStream, at: u64, scale: f32) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    rng.fill_uniform(at, &mut v);
    v.iter_mut().for_each(|x| *x = (2.0 * *x - 1.0) * scale);
    v
}

/// Runs every kernel check on `dev` with inputs drawn from `seed`.
pub fn run(dev: &dyn DeviceApi, seed: u64) -> Result<Vec<CheckRow>> {
    let r = RngStream::new(seed, 0xC4EC);
    let mut rows = Vec::new();
    let mut push = |kernel: &'static str, case: String, rel_err: f64| {
        rows.push(CheckRow {
            kernel,
            case,
            rel_err,
            limit: FP32_LIMIT,
        })
    };
    for (k, n) in [1usize, 64, 999, 4096].into_iter().enumerate() {
        let x = values(n, r, 10_000 * k as u64, 4.0);
        let g = values(n, r, 10_000 * k as u64 + 5000, 1.0);
        push(
            "gelu_forward",
            format!("n={n}"),
            rel(&launch::gelu_forward(dev, &x)?, &elementwise::gelu(&x)),
        );
        push(
            "gelu_backward",
            format!("n={n}"),
            rel(
                &launch::gelu_backward(dev, &g, &x)?,
                &elementwise::gelu_backward(&g, &x),
            ),
        );
        let tape = Tape::inference();
        let d = tape.dropout(&tape.constant(Tensor::from_vec(x.clone(), [n])?), 0.1, r)?;
        push(
            "dropout_forward",
            format!("n={n} p=0.1"),
            rel(
                &launch::dropout_forward(dev, &x, 0.1, r)?,
                d.value().cpu_slice::<f32>()?,
            ),
        );
        push(
            "sigmoid_forward",
            format!("n={n}"),
            rel(&launch::sigmoid_forward(dev, &x)?, &elementwise::sigmoid(&x)),
        );
        push(
            "gate_mix_forward",
            format!("n={n}"),
            rel(
                &launch::gate_mix_forward(dev, &x, &g, 0.3)?,
                &elementwise::gate_mix(&x, &g, 0.3f32),
            ),
        );
    }
    for (k, (nr, cols)) in [(1usize, 1usize), (7, 13), (64, 192)].into_iter().enumerate() {
        let x = values(nr * cols, r, 50_000 + 10_000 * k as u64, 1.0);
        let b = values(cols, r, 60_000 + 1000 * k as u64, 1.0);
        let case = format!("{nr}×{cols}");
        push(
            "add_broadcast",
            case.clone(),
            rel(&launch::add_broadcast(dev, &x, &b)?, &elementwise::add(&x, &b)),
        );
        push(
            "column_sums",
            case,
            rel(
                &launch::column_sums(dev, &x, cols)?,
                &elementwise::reduce_broadcast(&x, cols),
            ),
        );
    }
    for (k, (nr, cols)) in [(3usize, 7usize), (8, 64), (5, 192), (2, 768)].into_iter().enumerate() {
        let x = values(nr * cols, r, 100_000 + 10_000 * k as u64, 3.0);
        let w: Vec<f32> = values(cols, r, 200_000 + 1000 * k as u64, 1.0)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let b = values(cols, r, 300_000 + 1000 * k as u64, 1.0);
        let g = values(nr * cols, r, 400_000 + 10_000 * k as u64, 1.0);
        let (y, mean, rstd) = launch::layer_norm_forward(dev, &x, &w, &b, cols, 1e-5)?;
        let (want, stats) = layer_norm::forward(&x, &w, &b, cols, 1e-5);
        push("layer_norm_forward", format!("{nr}×{cols}"), rel(&y, &want));
        let (dx, dw, db) = launch::layer_norm_backward(dev, &g, &x, &w, &mean, &rstd, cols)?;
        let (wx, ww, wb) = layer_norm::backward(&g, &x, &w, &stats, cols);
        push("layer_norm_backward", format!("{nr}×{cols} dx"), rel(&dx, &wx));
        push(
            "layer_norm_backward",
            format!("{nr}×{cols} dw, db"),
            rel(&dw, &ww).max(rel(&db, &wb)),
        );
    }
    let cases = [
        ("spatial", SeqLayout::spatial(2, 3, 5), 2, 12, None),
        ("depth", SeqLayout::depth(2, 4, 6), 3, 8, Some(0.1)),
        ("patch-embedding", SeqLayout::contiguous(5, 12), 2, 6, Some(0.1)),
        ("spatial dh 96", SeqLayout::spatial(1, 2, 9), 1, 96, None),
    ];
    for (k, (name, layout, heads, dh, p)) in cases.into_iter().enumerate() {
        let e = heads * dh;
        let n = layout.num_rows();
        let qkv = values(n * 3 * e, r, 1_000_000 + 100_000 * k as u64, 1.5);
        let dout = values(n * e, r, 2_000_000 + 100_000 * k as u64, 1.0);
        let drop = p.map(|p| (p, r));
        let (out, lse) = launch::attention_forward(dev, &qkv, layout, heads, e, drop)?;
        let dq = launch::attention_backward(dev, &qkv, &out, &dout, &lse, layout, heads, e, drop)?;
        let tape = Tape::new();
        let x = tape.input(Tensor::from_vec(qkv, [n, 3 * e])?, true);
        let opts = AttentionOptions {
            layout,
            heads,
            dropout: p.map(|p| AttnDropout { p, rng: r }),
        };
        let y = tape.attention(&x, &opts)?;
        let want_out = y.value().to_vec::<f32>()?;
        let mut store = ParamStore::new();
        let grads = tape.backward_with(&y, Tensor::from_vec(dout, [n, e])?, &mut store)?;
        let want_dq = grads
            .get(&x)
            .map(|t| t.to_vec::<f32>())
            .transpose()?
            .unwrap_or_default();
        let case = format!("{name}, {} seqs × {} rows, {heads}×{dh}", layout.num_seqs(), layout.len);
        push("attention_forward", case.clone(), rel(&out, &want_out));
        push("attention_backward", case, rel(&dq, &want_dq));
    }
    for (k, (b, n, p)) in [(1usize, 7usize, 5usize), (2, 64, 512)].into_iter().enumerate() {
        let pred = values(b * n * p, r, 7_000_000 + 100_000 * k as u64, 1.0);
        let target = values(b * n * p, r, 8_000_000 + 100_000 * k as u64, 1.0);
        let mask: Vec<f32> = values(b * n, r, 9_000_000 + 1000 * k as u64, 1.0)
            .iter()
            .map(|v| f32::from(*v > 0.0))
            .collect();
        let (loss, sse, grad) = launch::masked_mse(dev, &pred, &target, &mask, p, 1.0)?;
        let tape = Tape::new();
        let pv = tape.input(Tensor::from_vec(pred.clone(), [b, n, p])?, true);
        let tv = tape.constant(Tensor::from_vec(target.clone(), [b, n, p])?);
        let l = tape.masked_mse(&pv, &tv, &Tensor::from_vec(mask, [b, n])?)?;
        let want = l.value().scalar_value()?;
        let mut store = ParamStore::new();
        let grads = tape.backward(&l, &mut store)?;
        let want_grad = grads
            .get(&pv)
            .map(|t| t.to_vec::<f32>())
            .transpose()?
            .unwrap_or_default();
        let psnr = -10.0 * (sse / (b * n * p) as f64 + 1e-8).log10();
        let want_psnr = crate::ops::psnr(
            &Tensor::from_vec(pred, [b, n, p])?,
            &Tensor::from_vec(target, [b, n, p])?,
        )?;
        let case = format!("{b}×{n} tokens of {p}");
        push(
            "token_errors (loss)",
            case.clone(),
            ((loss - want) / want).abs().max(((psnr - want_psnr) / want_psnr).abs()),
        );
        push("masked_mse_backward", case, rel(&grad, &want_grad));
        let x = values(b * n * 24, r, 9_500_000 + 1000 * k as u64, 1.0);
        let tape = Tape::inference();
        let m = tape.mean(&tape.constant(Tensor::from_vec(x.clone(), [b, n, 24])?), 1)?;
        push(
            "mean_axis",
            format!("{b}×{n}×24"),
            rel(&launch::mean_axis(dev, &x, b, n, 24)?, m.value().cpu_slice::<f32>()?),
        );
    }
    let odd = ModelConfig {
        superpatch_size: [6, 10, 12],
        patch_size: [2, 5, 3],
        ..ModelConfig::tiny()
    };
    for c in [ModelConfig::tiny(), odd] {
        let b = 2;
        let hu: Vec<i16> = values(b * c.voxels(), r, 5_000_000, 1.0)
            .iter()
            .map(|v| (v * 900.0) as i16)
            .collect();
        let mask = DualMask::sample(&c, b, r);
        let got = launch::superpatch_input(dev, &hu, b, c.superpatch_size, c.patch_size, mask.ids_keep(), 0.03, r)?;
        let [d, h, w] = c.superpatch_size;
        let x = Tensor::from_vec(
            hu.iter().map(|&v| hu_window(v as f32)).collect::<Vec<_>>(),
            [b, 1, d, h, w],
        )?;
        let tape = Tape::inference();
        let p = tape.constant(patchify(&c, &add_noise(&x, 0.03, r)?)?);
        let want = tape.gather_rows(&p, mask.ids_keep())?;
        push(
            "superpatch_input",
            format!("{d}×{h}×{w}, patch {:?}", c.patch_size),
            rel(&got, want.value().cpu_slice::<f32>()?),
        );
    }
    Ok(rows)
}
