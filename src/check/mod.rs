//! `nemesis check`: every GPU kernel against the CPU reference on fresh
//! random inputs (odd and even sizes), with the tolerances of
//! ENGINEERING.md, through any `DeviceApi`: the emulator on every machine,
//! the CUDA device on a GPU.

use crate::autograd::{ParamStore, Tape};
use crate::backend::cpu::{elementwise, layer_norm};
use crate::backend::gpu;
use crate::backend::launch;
use crate::data::hu_window;
use crate::device::{DeviceApi, DeviceVec, SharedDevice};
use crate::error::Result;
use crate::model::{add_noise, patchify, DualMask, ModelConfig};
use crate::ops::{AttentionOptions, AttnDropout};
use crate::rng::RngStream;
use crate::tensor::{Readers, SeqLayout, Tensor};

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
pub fn run(shared: &SharedDevice, seed: u64) -> Result<Vec<CheckRow>> {
    let dev: &dyn DeviceApi = &**shared;
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
    // The last case masks nothing: the loss is then the mean over all tokens.
    for (k, (b, n, p)) in [(1usize, 7usize, 5usize), (2, 64, 512), (1, 300, 3)]
        .into_iter()
        .enumerate()
    {
        let pred = values(b * n * p, r, 7_000_000 + 100_000 * k as u64, 1.0);
        let target = values(b * n * p, r, 8_000_000 + 100_000 * k as u64, 1.0);
        let mask: Vec<f32> = values(b * n, r, 9_000_000 + 1000 * k as u64, 1.0)
            .iter()
            .map(|v| f32::from(*v > 0.0 && k < 2))
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
            "masked_mse_reduce",
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
    tensor_kernels(shared, r, &mut push)?;
    mma_probes(dev, r, &mut push)?;
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

/// The tensor-core fragment layout (mma.sync m16n8k16, bf16), as the PTX
/// ISA gives it for lane (g, t) = (lane / 4, lane % 4): A element i at row
/// g (+8 for i = 2, 3, 6, 7), column 2t + (i & 1) (+8 for i ≥ 4); B element
/// i at row 2t + (i & 1) (+8 for i ≥ 2), column g; C element i at row g
/// (+8 for i ≥ 2), column 2t + (i & 1). (tests/mma_layout.rs holds its own
/// copy of these tables and checks this one against the emulator.)
fn mma_a(lane: usize, i: usize) -> (usize, usize) {
    (lane / 4 + 8 * ((i >> 1) & 1), 2 * (lane % 4) + (i & 1) + 8 * (i >> 2))
}

fn mma_b(lane: usize, i: usize) -> (usize, usize) {
    (2 * (lane % 4) + (i & 1) + 8 * (i >> 1), lane / 4)
}

fn mma_c(lane: usize, i: usize) -> (usize, usize) {
    (lane / 4 + 8 * (i >> 1), 2 * (lane % 4) + (i & 1))
}

/// Row-major `a (rows × inner) · b (inner × cols)`.
fn plain_product(a: &[f32], b: &[f32], rows: usize, inner: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|at| {
            (0..inner)
                .map(|k| a[at / cols * inner + k] * b[k * cols + at % cols])
                .sum()
        })
        .collect()
}

/// The tensor cores against the fragment tables (`mma_fragment_probe`), and
/// the flash kernels' three products with their own packing
/// (`flash_mma_probe_*`), on small integers: every value is exact, so any
/// error at all is a layout error.
fn mma_probes(dev: &dyn DeviceApi, r: RngStream, push: &mut impl FnMut(&'static str, String, f64)) -> Result<()> {
    let ints = |n: usize, at: u64, k: f32| -> Vec<f32> {
        values(n, r, at, 1.0)
            .iter()
            .map(|v| ((v + 1.0) * (k + 0.5)).floor() - k)
            .collect()
    };
    let bits = |v: f32| half::bf16::from_f32(v).to_bits() as u32;
    let (a, b) = (ints(256, 900_000, 3.0), ints(128, 901_000, 3.0));
    let mut ar = vec![0u32; 128];
    let mut br = vec![0u32; 64];
    for lane in 0..32 {
        for reg in 0..4 {
            let (lo, hi) = (mma_a(lane, 2 * reg), mma_a(lane, 2 * reg + 1));
            ar[4 * lane + reg] = bits(a[lo.0 * 16 + lo.1]) | bits(a[hi.0 * 16 + hi.1]) << 16;
        }
        for reg in 0..2 {
            let (lo, hi) = (mma_b(lane, 2 * reg), mma_b(lane, 2 * reg + 1));
            br[2 * lane + reg] = bits(b[lo.0 * 8 + lo.1]) | bits(b[hi.0 * 8 + hi.1]) << 16;
        }
    }
    let (da, db, dc) = (
        DeviceVec::from_slice(dev, &ar)?,
        DeviceVec::from_slice(dev, &br)?,
        DeviceVec::poisoned_f32(dev, 128)?,
    );
    dev.launch(
        "mma_fragment_probe",
        &crate::device::Launch::linear(1, 32, 0),
        &[da.arg(), db.arg(), dc.arg()],
    )?;
    let got = dc.to_vec::<f32>()?;
    let ab = plain_product(&a, &b, 16, 16, 8);
    let want: Vec<f32> = (0..128)
        .map(|x| {
            let (row, col) = mma_c(x / 4, x % 4);
            ab[row * 8 + col]
        })
        .collect();
    push(
        "mma_fragment_probe",
        "m16n8k16 bf16, PTX ISA tables".into(),
        rel(&got, &want),
    );

    let (x, y) = (ints(256, 902_000, 2.0), ints(256, 903_000, 2.0));
    let yt: Vec<f32> = (0..256).map(|i| y[(i % 16) * 16 + i / 16]).collect();
    let xyt = plain_product(&x, &yt, 16, 16, 16);
    let products = [
        ("Q·Kᵀ", xyt.clone()),
        ("P·V", plain_product(&x, &y, 16, 16, 16)),
        ("scores written back, then Pᵀ·dO", plain_product(&xyt, &y, 16, 16, 16)),
    ];
    for kernel in ["flash_mma_probe_f32", "flash_mma_probe_bf16"] {
        for (usage, (name, full)) in products.iter().enumerate() {
            let (dx, dy, dc) = (
                DeviceVec::from_slice(dev, &x)?,
                DeviceVec::from_slice(dev, &y)?,
                DeviceVec::poisoned_f32(dev, 256)?,
            );
            dev.launch(
                kernel,
                &crate::device::Launch::linear(1, 32, 3 * 256 * 4),
                &[dx.arg(), dy.arg(), dc.arg(), crate::device::Arg::I32(usage as i32)],
            )?;
            let got = dc.to_vec::<f32>()?;
            let want: Vec<f32> = (0..256)
                .map(|at| {
                    let (lane, tile, i) = (at / 8, at / 4 % 2, at % 4);
                    let (row, col) = mma_c(lane, i);
                    full[row * 16 + tile * 8 + col]
                })
                .collect();
            push(kernel, (*name).to_string(), rel(&got, &want));
        }
    }
    Ok(())
}

/// The kernels the tensor backend adds (backend/gpu.rs), each through its
/// host function against the CPU reference.
fn tensor_kernels(dev: &SharedDevice, r: RngStream, push: &mut impl FnMut(&'static str, String, f64)) -> Result<()> {
    let up = |v: &[f32], shape: Vec<usize>| Tensor::from_vec(v.to_vec(), shape)?.to_device(dev);
    let host = |t: Tensor| -> Result<Vec<f32>> { t.to_cpu()?.to_vec() };
    // GELU + dropout in one kernel against the two ops on the host.
    for (k, p) in [0.0f64, 0.1].into_iter().enumerate() {
        let n = 5000;
        let at = 29_000_000 + 100_000 * k as u64;
        let (x, g) = (values(n, r, at, 3.0), values(n, r, at + 30_000, 1.0));
        let drop = RngStream::new(11, 12 + k as u64);
        let tape = Tape::new();
        let xv = tape.input(Tensor::from_vec(x.clone(), [n])?, true);
        let y = tape.gelu(&xv)?;
        let y = if p > 0.0 { tape.dropout(&y, p, drop)? } else { y };
        let want_y = y.value().to_vec::<f32>()?;
        let grads = tape.backward_with(&y, Tensor::from_vec(g.clone(), [n])?, &mut ParamStore::new())?;
        let want_dx = grads
            .get(&xv)
            .map(|t| t.to_vec::<f32>())
            .transpose()?
            .unwrap_or_default();
        let (tx, tg) = (up(&x, vec![n])?, up(&g, vec![n])?);
        let case = format!("n={n}, p={p}");
        push(
            "gelu_dropout_forward",
            case.clone(),
            rel(&host(gpu::gelu_dropout(&tx, p, drop, Readers::Any)?)?, &want_y),
        );
        push(
            "gelu_dropout_backward",
            case,
            rel(
                &host(gpu::gelu_dropout_backward(&tg, &tx, p, drop, Readers::Any)?)?,
                &want_dx,
            ),
        );
    }
    // Column reductions over enough rows to split into chunks (two
    // fixed-order passes), and the fused residual + layer norm.
    for (k, (rows, cols)) in [(300usize, 24usize), (1000, 192)].into_iter().enumerate() {
        let at = 30_000_000 + 100_000 * k as u64;
        let (x, a, g) = (
            values(rows * cols, r, at, 2.0),
            values(rows * cols, r, at + 30_000, 2.0),
            values(rows * cols, r, at + 60_000, 1.0),
        );
        let w: Vec<f32> = values(cols, r, at + 90_000, 1.0).iter().map(|v| v + 1.0).collect();
        let b = values(cols, r, at + 95_000, 1.0);
        let case = format!("{rows}×{cols}, in chunks");
        let (tx, ta, tg) = (
            up(&x, vec![rows, cols])?,
            up(&a, vec![rows, cols])?,
            up(&g, vec![rows, cols])?,
        );
        let (tw, tb) = (up(&w, vec![cols])?, up(&b, vec![cols])?);
        push(
            "column_partials",
            case.clone(),
            rel(
                &host(gpu::column_sums(&tg, cols)?)?,
                &elementwise::reduce_broadcast(&g, cols),
            ),
        );
        let (sum, y, mean, rstd) = gpu::add_layer_norm(&tx, &ta, 0.5, &tw, &tb, 1e-6, Readers::Any)?;
        let want_sum: Vec<f32> = x.iter().zip(&a).map(|(x, a)| x + 0.5 * a).collect();
        let (want_y, stats) = layer_norm::forward(&want_sum, &w, &b, cols, 1e-6);
        push(
            "add_layer_norm_forward",
            format!("{case}, x + ½a"),
            rel(&host(sum)?, &want_sum).max(rel(&host(y)?, &want_y)),
        );
        let ts = up(&want_sum, vec![rows, cols])?;
        let (_, dw, db) = gpu::layer_norm_backward(&tg, &ts, &tw, &mean, &rstd)?;
        let (_, ww, wb) = layer_norm::backward(&g, &want_sum, &w, &stats, cols);
        push(
            "layer_norm_dwdb_partials",
            case,
            rel(&host(dw)?, &ww).max(rel(&host(db)?, &wb)),
        );
    }
    for (k, (rows, cols)) in [(1usize, 1usize), (7, 13), (33, 64)].into_iter().enumerate() {
        let n = rows * cols;
        let at = 20_000_000 + 100_000 * k as u64;
        let (x, y, g) = (
            values(n, r, at, 2.0),
            values(n, r, at + 30_000, 2.0),
            values(n, r, at + 60_000, 1.0),
        );
        let b = values(cols, r, at + 90_000, 1.0);
        let case = format!("{rows}×{cols}");
        let (tx, ty, tg) = (
            up(&x, vec![rows, cols])?,
            up(&y, vec![rows, cols])?,
            up(&g, vec![rows, cols])?,
        );
        let s = elementwise::sigmoid(&x);
        push(
            "sigmoid_backward",
            case.clone(),
            rel(
                &host(gpu::sigmoid_backward(&tg, &up(&s, vec![rows, cols])?)?)?,
                &elementwise::sigmoid_backward(&g, &s),
            ),
        );
        push(
            "scale_forward",
            case.clone(),
            rel(&host(gpu::scale(&tx, -0.75)?)?, &elementwise::scale(&x, -0.75f32)),
        );
        push(
            "mul_broadcast",
            case.clone(),
            rel(&host(gpu::mul(&tx, &up(&b, vec![cols])?)?)?, &elementwise::mul(&x, &b)),
        );
        let a = 0.3f32;
        let (dx, dy, da) = gpu::gate_mix_backward(&tg, &tx, &ty, &up(&[a], vec![1])?)?;
        let want_da = elementwise::gate_mix_grad_a(&g, &x, &y);
        push(
            "gate_mix_backward",
            case.clone(),
            rel(&host(dx)?, &elementwise::scale(&g, 1.0 - a))
                .max(rel(&host(dy)?, &elementwise::scale(&g, a)))
                .max(rel(&host(da)?, &[want_da])),
        );
        let want_sum: f64 = x.iter().map(|&v| v as f64).sum();
        push(
            "block_sums",
            format!("n={n}"),
            rel(&host(gpu::sum(&tx)?)?, &[want_sum as f32]),
        );
        // bf16 rounding (nearest even) against the half crate, including
        // halfway cases, infinities and NaN.
        let mut v = x.clone();
        v.extend_from_slice(&[
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::INFINITY,
            -0.0,
            f32::MAX,
            f32::NAN,
        ]);
        let (dv, out) = (
            DeviceVec::from_slice(dev.as_ref(), &v)?,
            DeviceVec::from_slice(dev.as_ref(), &vec![0u16; v.len()])?,
        );
        dev.launch(
            "f32_to_bf16",
            &gpu::grid_stride(v.len()),
            &[dv.arg(), out.arg(), crate::device::Arg::U64(v.len() as u64)],
        )?;
        let got: Vec<u16> = out.to_vec()?;
        let wrong = got
            .iter()
            .zip(&v)
            .filter(|(g, w)| {
                let want = half::bf16::from_f32(**w);
                if w.is_nan() {
                    !half::bf16::from_bits(**g).is_nan()
                } else {
                    **g != want.to_bits()
                }
            })
            .count();
        push(
            "f32_to_bf16",
            format!("n={} (wrong: {wrong})", v.len()),
            if wrong == 0 { 0.0 } else { 1.0 },
        );
    }
    // The multi-tensor optimizer kernels against the CPU AdamW (step 5, a
    // clip factor, moments already warm) and the f64 sum of squares.
    {
        use crate::train::{AdamW, AdamWConfig};
        let sizes = [1usize, 7, 300];
        let cfg = AdamWConfig {
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.05,
        };
        let mut store = ParamStore::new();
        let mut grads = Vec::new();
        for (k, &n) in sizes.iter().enumerate() {
            let at = 40_000_000 + 100_000 * k as u64;
            let id = store.add(format!("p{k}"), Tensor::from_vec(values(n, r, at, 1.0), [n])?)?;
            grads.push(Tensor::from_vec(values(n, r, at + 10_000, 0.1), [n])?);
            store.accumulate_grad(id, grads[k].clone())?;
        }
        let mut opt = AdamW::new(cfg, &store);
        opt.step = 4;
        for (k, &n) in sizes.iter().enumerate() {
            let at = 41_000_000 + 100_000 * k as u64;
            opt.m[k] = values(n, r, at, 0.05);
            opt.v[k] = values(n, r, at + 10_000, 0.01).iter().map(|v| v.abs()).collect();
        }
        let on_dev: Vec<[Tensor; 4]> = store
            .iter()
            .enumerate()
            .map(|(k, (_, p))| -> Result<[Tensor; 4]> {
                let n = sizes[k];
                Ok([
                    p.value.to_device(dev)?,
                    grads[k].to_device(dev)?,
                    up(&opt.m[k], vec![n])?,
                    up(&opt.v[k], vec![n])?,
                ])
            })
            .collect::<Result<_>>()?;
        let want_sq: f64 = grads
            .iter()
            .map(|g| Ok(g.to_f64_vec()?.iter().map(|v| v * v).sum::<f64>()))
            .sum::<Result<f64>>()?;
        let got_sq = gpu::sum_of_squares_multi(&on_dev.iter().map(|t| &t[1]).collect::<Vec<_>>())?;
        push(
            "grad_sq_multi",
            format!("{} tensors", sizes.len()),
            ((got_sq - want_sq) / want_sq).abs(),
        );
        // The norm and clip factor on the device, for a maximum that clips to ~0.7.
        let norm = want_sq.sqrt();
        let max_norm = 0.7 * (norm + 1e-6);
        let clip = crate::train::clip_factor(norm, max_norm);
        let grads_dev: Vec<&Tensor> = on_dev.iter().map(|t| &t[1]).collect();
        let clip_dev = gpu::clip_norm(&grads_dev, max_norm)?;
        let got = clip_dev.to_f64_vec()?;
        push("clip_factor", "global norm".into(), ((got[0] - norm) / norm).abs());
        push(
            "clip_factor",
            format!("factor {clip:.3}"),
            ((got[1] - clip) / clip).abs(),
        );
        let s = gpu::AdamWStep {
            lr: 1e-3,
            betas: cfg.betas,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            t: 5,
        };
        let rows: Vec<[&Tensor; 4]> = on_dev.iter().map(|t| [&t[0], &t[1], &t[2], &t[3]]).collect();
        // A NaN factor (a norm that is not finite) must leave everything alone.
        let before: Vec<Vec<f32>> = on_dev.iter().map(|t| host(t[0].clone())).collect::<Result<_>>()?;
        gpu::adamw_multi(&rows, &s, &gpu::clip_values(dev, f64::NAN, f64::NAN)?)?;
        let mut moved = 0.0f64;
        for (k, b) in before.iter().enumerate() {
            moved = moved.max(rel(&host(on_dev[k][0].clone())?, b));
        }
        push("adamw_multi", "NaN clip factor: no change".into(), moved);
        opt.update_clipped(&mut store, 1e-3, clip)?;
        // The largest weight keeps a bf16 copy (as a mixed-precision GEMM
        // leaves it); the update must rewrite it from the new values.
        let last = sizes.len() - 1;
        gpu::bf16_bits(&on_dev[last][0])?;
        gpu::adamw_multi(&rows, &s, &clip_dev)?;
        let new_w = host(on_dev[last][0].clone())?;
        let stale = gpu::bf16_bits(&on_dev[last][0])?
            .iter()
            .zip(&new_w)
            .filter(|(b, w)| **b != half::bf16::from_f32(**w).to_bits())
            .count();
        push(
            "adamw_multi",
            format!("bf16 copy rewritten ({stale} of {} stale)", new_w.len()),
            if stale == 0 { 0.0 } else { 1.0 },
        );
        let mut worst = 0.0f64;
        for (k, (_, p)) in store.iter().enumerate() {
            worst = worst
                .max(rel(&host(on_dev[k][0].clone())?, &p.value.to_vec::<f32>()?))
                .max(rel(&host(on_dev[k][2].clone())?, &opt.m[k]))
                .max(rel(&host(on_dev[k][3].clone())?, &opt.v[k]));
        }
        push("adamw_multi", format!("{} tensors, clip {clip}", sizes.len()), worst);
    }
    // Token movement and pooling against the tape's CPU ops.
    for (k, (b, n_dst, per, e)) in [(1usize, 5usize, 2usize, 3usize), (2, 16, 7, 12)]
        .into_iter()
        .enumerate()
    {
        let at = 30_000_000 + 100_000 * k as u64;
        let x = values(b * per * e, r, at, 1.0);
        let fill = values(e, r, at + 40_000, 1.0);
        let g = values(b * n_dst * e, r, at + 50_000, 1.0);
        let mut idx = Vec::new();
        for item in 0..b {
            // A fixed permutation per item: every third row, wrapping.
            let mut used = vec![false; n_dst];
            let mut i = item;
            while idx.len() < (item + 1) * per {
                i = (i + 3) % n_dst;
                if !std::mem::replace(&mut used[i], true) {
                    idx.push(i);
                } else {
                    i += 1;
                }
            }
        }
        let tape = Tape::new();
        let xv = tape.input(Tensor::from_vec(x.clone(), [b, per, e])?, true);
        let fv = tape.input(Tensor::from_vec(fill.clone(), [e])?, true);
        let y = tape.scatter_rows(&xv, &idx, n_dst, &fv)?;
        let mut store = ParamStore::new();
        let grads = tape.backward_with(&y, Tensor::from_vec(g.clone(), [b, n_dst, e])?, &mut store)?;
        let want_dx = grads
            .get(&xv)
            .map(|t| t.to_vec::<f32>())
            .transpose()?
            .unwrap_or_default();
        let want_df = grads
            .get(&fv)
            .map(|t| t.to_vec::<f32>())
            .transpose()?
            .unwrap_or_default();
        let case = format!("{b}×{per} rows into {n_dst}, E={e}");
        let got = gpu::scatter_rows(&up(&x, vec![b, per, e])?, &idx, &up(&fill, vec![e])?, b, n_dst)?;
        push(
            "scatter_rows",
            case.clone(),
            rel(&host(got)?, y.value().cpu_slice::<f32>()?),
        );
        let (dx, df) = gpu::scatter_rows_backward(&up(&g, vec![b, n_dst, e])?, &idx, b, n_dst, e)?;
        push(
            "unselected_row_sums",
            case.clone(),
            rel(&host(dx)?, &want_dx).max(rel(&host(df)?, &want_df)),
        );
        let tape = Tape::new();
        let xv = tape.input(Tensor::from_vec(g.clone(), [b, n_dst, e])?, true);
        let m = tape.mean(&xv, 1)?;
        let gm = values(b * e, r, at + 60_000, 1.0);
        let mut store = ParamStore::new();
        let grads = tape.backward_with(&m, Tensor::from_vec(gm.clone(), [b, e])?, &mut store)?;
        let want = grads
            .get(&xv)
            .map(|t| t.to_vec::<f32>())
            .transpose()?
            .unwrap_or_default();
        let got = gpu::mean_axis_backward(&up(&gm, vec![b, e])?, b, n_dst, e, vec![b, n_dst, e].into())?;
        push(
            "mean_axis_backward",
            format!("{b}×{n_dst}×{e}"),
            rel(&host(got)?, &want),
        );
    }
    Ok(())
}

/// bf16 against the CPU reference (ENGINEERING.md, "Numerics").
pub const BF16_LIMIT: f64 = 2e-2;

/// One whole training step (forward, masked loss, backward with dropout)
/// of `config` on `dev` against the CPU backend from the same weights and
/// inputs: the loss, the PSNR and the gradient of every parameter, each a
/// row. The limit follows the device's precision.
pub fn training_step(
    dev: &crate::device::SharedDevice,
    preset: &str,
    batch: usize,
    seed: u64,
) -> Result<Vec<CheckRow>> {
    use crate::model::{init_params, Dropout, Nemesis};
    let c = ModelConfig::preset(preset)?;
    let limit = if dev.mixed_precision() { BF16_LIMIT } else { FP32_LIMIT };
    let r = RngStream::new(seed, 0x57E9);
    let store = init_params(&c, seed, crate::tensor::DType::F32)?;
    // Move every weight off its initial value (zero biases, unit norms) so
    // each gradient path carries signal.
    let mut store = {
        let mut s = store.clone();
        for (k, (id, p)) in store.iter().enumerate() {
            let v: Vec<f32> = p
                .value
                .to_vec::<f32>()?
                .iter()
                .zip(values(p.value.numel(), r, 1_000_000 * k as u64, 0.02))
                .map(|(w, j)| w + j)
                .collect();
            s.set_value(id, Tensor::from_vec(v, p.value.shape().clone())?)?;
        }
        s
    };
    let [d, h, w] = c.superpatch_size;
    let clean = Tensor::from_vec(
        values(batch * d * h * w, r, 7, 0.5)
            .iter()
            .map(|v| v + 0.5)
            .collect::<Vec<_>>(),
        [batch, 1, d, h, w],
    )?;
    let noisy = add_noise(&clean, 0.05, r)?;
    let mask = DualMask::sample(&c, batch, r);
    let model = Nemesis::new(c.clone())?;
    let step = |s: &mut crate::autograd::ParamStore| -> Result<(f64, f64)> {
        let tape = Tape::new();
        let drop = Dropout::new(c.dropout, seed, 3);
        let out = model.forward_train(&tape, s, &noisy, &clean, &mask, Some(&drop))?;
        let loss = out.loss.value().scalar_value()?;
        tape.backward(&out.loss, s)?;
        Ok((loss, out.psnr()?))
    };
    let (want_loss, want_psnr) = step(&mut store)?;
    let mut on_dev = store.to_device(dev)?;
    on_dev.zero_grad();
    let (loss, psnr) = step(&mut on_dev)?;
    let on_dev = on_dev.to_cpu()?;
    let case = |what: String| format!("{preset} b={batch} {what}");
    let mut rows = vec![
        CheckRow {
            kernel: "training step",
            case: case("loss".into()),
            rel_err: ((loss - want_loss) / want_loss).abs(),
            limit,
        },
        CheckRow {
            kernel: "training step",
            case: case("psnr".into()),
            rel_err: ((psnr - want_psnr) / want_psnr).abs(),
            limit,
        },
    ];
    let (mut all_got, mut all_want) = (Vec::new(), Vec::new());
    for ((_, want), (_, got)) in store.iter().zip(on_dev.iter()) {
        let err = match (&want.grad, &got.grad) {
            (Some(a), Some(b)) => {
                let (a, b) = (a.to_vec::<f32>()?, b.to_vec::<f32>()?);
                all_want.extend_from_slice(&a);
                all_got.extend_from_slice(&b);
                rel(&b, &a)
            }
            _ => f64::INFINITY,
        };
        // In bf16 a one-element gradient (pe_scale, the gate's alpha) is a
        // single sum over every token with heavy cancellation, so no relative
        // limit holds for it alone: it is shown, must be finite, and is
        // judged inside the all-gradients row.
        let scalar = want.value.numel() == 1 && dev.mixed_precision();
        rows.push(CheckRow {
            kernel: "step gradient",
            case: case(want.name.clone()),
            rel_err: err,
            limit: if scalar { f64::INFINITY } else { limit },
        });
    }
    rows.push(CheckRow {
        kernel: "step gradient",
        case: case("all gradients together".into()),
        rel_err: rel(&all_got, &all_want),
        limit,
    });
    Ok(rows)
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
    kernel: gpu::AttentionKernel,
    cases: &[AttnCase],
    seed: u64,
) -> Result<Vec<CheckRow>> {
    let r = RngStream::new(seed, 0xF1A5);
    let (label, limit) = match kernel {
        gpu::AttentionKernel::Plain => ("plain", FP32_LIMIT),
        gpu::AttentionKernel::FlashF32 => ("flash f32", FP32_LIMIT),
        gpu::AttentionKernel::FlashBf16 => ("flash bf16", BF16_LIMIT),
    };
    let mut rows = Vec::new();
    for (k, c) in cases.iter().enumerate() {
        let e = c.heads * c.head_dim;
        let n = c.layout.num_rows();
        let qkv = values(n * 3 * e, r, 100_000_000 * k as u64, 1.5);
        let dout = values(n * e, r, 100_000_000 * k as u64 + 50_000_000, 1.0);
        let drop = c.dropout.map(|p| (p, r));
        let tape = Tape::new();
        let x = tape.input(Tensor::from_vec(qkv.clone(), [n, 3 * e])?, true);
        let opts = AttentionOptions {
            layout: c.layout,
            heads: c.heads,
            dropout: c.dropout.map(|p| AttnDropout { p, rng: r }),
        };
        let y = tape.attention(&x, &opts)?;
        let want_out = y.value().to_vec::<f32>()?;
        let mut store = ParamStore::new();
        let grads = tape.backward_with(&y, Tensor::from_vec(dout.clone(), [n, e])?, &mut store)?;
        let want_dq = grads
            .get(&x)
            .map(|t| t.to_vec::<f32>())
            .transpose()?
            .unwrap_or_default();
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

/// Step graphs (backend/graph.rs) on `dev`: four training steps of the
/// `tiny` model at `batch` (dropout on, a learning rate and a batch that change every
/// step) run call by call, and the same four with the third and fourth
/// replayed from the graph recorded in the second. Rows: the losses and
/// the weights after the four steps, graphed against plain. The kernels are
/// deterministic, so anything but equality means a replay ran with a stale
/// value; a run where no step was replayed fails.
pub fn step_graphs(dev: &crate::device::SharedDevice, batch: usize, seed: u64) -> Result<Vec<CheckRow>> {
    use crate::data::{Batch, BatchData, Position};
    use crate::model::{init_params, Nemesis};
    use crate::train::{AdamW, StepGraphs, StepSpec};
    let mut c = ModelConfig::tiny();
    c.dropout = 0.1;
    let model = Nemesis::new(c.clone())?;
    let [d, h, w] = c.superpatch_size;
    let spec = StepSpec {
        model: &model,
        seed,
        noise_levels: &[0.0, 0.05, 0.1],
        clip: 0.5,
    };
    let steps = 4u64;
    let run = |graphs: bool| -> Result<(Vec<f32>, Vec<f32>, u64)> {
        let mut store = init_params(&c, seed, crate::tensor::DType::F32)?.to_device(dev)?;
        let mut opt = AdamW::new(crate::train::TrainConfig::default().adamw(), &store);
        let mut g = StepGraphs::new(graphs);
        let mut pending = Vec::new();
        for s in 0..steps {
            let hu: Vec<i16> = values(batch * d * h * w, RngStream::new(seed, 0x6A), s * 1_000_000, 600.0)
                .iter()
                .map(|v| v.round() as i16)
                .collect();
            let batch = Batch {
                position: Position::default(),
                shape: [batch, 1, d, h, w],
                data: BatchData::HuI16(hu),
                sources: Vec::new(),
            };
            let lr = 1e-3 * (s + 1) as f64 / steps as f64;
            pending.push(g.queue(&spec, &mut store, &mut opt, s, lr, vec![batch])?);
        }
        let mut losses = Vec::new();
        for p in pending {
            losses.push(p.wait()?.loss as f32);
        }
        let mut weights = Vec::new();
        for (_, p) in store.to_cpu()?.iter() {
            weights.extend(p.value.to_vec::<f32>()?);
        }
        Ok((losses, weights, g.replays()))
    };
    let (want_loss, want_w, _) = run(false)?;
    let (loss, w, replays) = run(true)?;
    let judged = |e: f64| if replays == steps - 2 { e } else { f64::INFINITY };
    Ok(vec![
        CheckRow {
            kernel: "step graph",
            case: format!("tiny b={batch}, 4 steps ({replays} replayed): losses"),
            rel_err: judged(rel(&loss, &want_loss)),
            limit: 0.0,
        },
        CheckRow {
            kernel: "step graph",
            case: format!("tiny b={batch}, 4 steps: weights after"),
            rel_err: judged(rel(&w, &want_w)),
            limit: 0.0,
        },
    ])
}
