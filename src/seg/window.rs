//! Sliding-window prediction over a whole scan (SPEC §14, as MONAI's
//! `sliding_window_inference` with its defaults): windows of the
//! superpatch size, overlap 0.5, each window's logits weighted by a
//! Gaussian (σ = 1/8 of the window, centred at its middle voxel) and the
//! weighted sums divided by the summed weights, then the argmax.

use super::model::{Mode, RunningStats, SegModel};
use crate::autograd::{ParamStore, Tape};
use crate::error::Result;
use crate::progress::Progress;
use crate::tensor::Tensor;

/// The window starts along one axis of `n` voxels: a stride of
/// `⌊w·(1 − overlap)⌋` (at least 1), the last window flush with the end.
pub fn window_starts(n: usize, w: usize, overlap: f64) -> Vec<usize> {
    if n <= w {
        return vec![0];
    }
    let stride = ((w as f64 * (1.0 - overlap)) as usize).max(1);
    let count = (n - w).div_ceil(stride) + 1;
    (0..count).map(|i| (i * stride).min(n - w)).collect()
}

/// The separable Gaussian importance of each voxel of a window, largest 1;
/// the smallest weight is kept above zero so every voxel counts.
pub fn gaussian_importance(window: [usize; 3]) -> Vec<f32> {
    let axis = |w: usize| -> Vec<f64> {
        let sigma = 0.125 * w as f64;
        let c = (w / 2) as f64;
        (0..w)
            .map(|i| (-0.5 * ((i as f64 - c) / sigma).powi(2)).exp())
            .collect()
    };
    let [a, b, c] = window.map(axis);
    let mut out = Vec::with_capacity(a.len() * b.len() * c.len());
    for &x in &a {
        for &y in &b {
            for &z in &c {
                out.push((x * y * z) as f32);
            }
        }
    }
    let min_pos = out.iter().copied().filter(|&v| v > 0.0).fold(f32::INFINITY, f32::min);
    out.iter_mut().for_each(|v| *v = v.max(min_pos.max(1e-6)));
    out
}

/// The class of every voxel of `image` (`D × H × W`, windowed to [0, 1]),
/// `batch` windows at a time, with progress under `label`.
pub fn predict_classes(
    model: &SegModel,
    store: &ParamStore,
    stats: &RunningStats,
    image: &[f32],
    shape: [usize; 3],
    batch: usize,
    label: &str,
) -> Result<Vec<u8>> {
    let c = model.config();
    let win = c.encoder.superpatch_size;
    let k = c.num_classes;
    let [d, h, w] = shape;
    let vox = d * h * w;
    let starts: Vec<[usize; 3]> = {
        let (zs, ys, xs) = (
            window_starts(d, win[0], 0.5),
            window_starts(h, win[1], 0.5),
            window_starts(w, win[2], 0.5),
        );
        let mut all = Vec::with_capacity(zs.len() * ys.len() * xs.len());
        for &z in &zs {
            for &y in &ys {
                all.extend(xs.iter().map(|&x| [z, y, x]));
            }
        }
        all
    };
    let weight = gaussian_importance(win);
    let per = weight.len();
    let mut sum = vec![0f32; k * vox];
    let mut norm = vec![0f32; vox];
    let mut progress = Progress::new(label, starts.len() as u64);
    for group in starts.chunks(batch.max(1)) {
        let mut x = Vec::with_capacity(group.len() * per);
        for o in group {
            for z in 0..win[0] {
                for y in 0..win[1] {
                    let s = ((o[0] + z) * h + o[1] + y) * w + o[2];
                    x.extend_from_slice(&image[s..s + win[2]]);
                }
            }
        }
        let x = Tensor::from_vec(x, [group.len(), 1, win[0], win[1], win[2]])?;
        let tape = Tape::inference();
        let (logits, _) = model.forward(&tape, store, stats, &x, Mode::Eval)?;
        let logits = logits.value().to_cpu()?.to_vec::<f32>()?;
        for (g, o) in group.iter().enumerate() {
            let mut i = 0;
            for z in 0..win[0] {
                for y in 0..win[1] {
                    let s = ((o[0] + z) * h + o[1] + y) * w + o[2];
                    for xx in 0..win[2] {
                        let wt = weight[i];
                        norm[s + xx] += wt;
                        for ch in 0..k {
                            sum[ch * vox + s + xx] += wt * logits[(g * k + ch) * per + i];
                        }
                        i += 1;
                    }
                }
            }
        }
        progress.add(group.len() as u64, "windows");
    }
    progress.finish();
    Ok((0..vox)
        .map(|v| {
            let mut best = 0;
            for ch in 1..k {
                // Dividing by the shared weight does not change the argmax.
                if sum[ch * vox + v] > sum[best * vox + v] {
                    best = ch;
                }
            }
            best as u8
        })
        .collect())
}
