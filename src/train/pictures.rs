//! Pictures of training: the reconstruction of a superpatch (middle axial
//! slice: input, visible input, reconstruction, error) and the curves.

use std::path::Path;

use crate::error::Result;
use crate::model::{DualMask, ModelConfig};
use crate::picture::{grayscale_panels, line_plot, Axis, Colormap, Panel, PlotSpec, Series, PALETTE};
use crate::tensor::Tensor;

/// Upscale so that even a 32-voxel slice is comfortably visible.
fn scale_for(size: usize) -> usize {
    (256 / size.max(1)).clamp(1, 8)
}

/// The error panel's colour scale, |reconstruction − input| from 0 to this
/// (in units of the [0, 1] window), the same in every picture, so pictures
/// of different steps and runs compare; larger errors saturate.
pub const ERROR_SCALE: f32 = 0.5;

/// The item of a batch with the most tissue (voxels above air in the
/// window): what a picture of a whole volume's tiles should show rather
/// than a corner of air. `images` is `B × 1 × D × H × W`.
pub fn most_tissue(images: &Tensor) -> Result<usize> {
    let b = images.dims()[0].max(1);
    let v = images.cpu_slice::<f32>()?;
    let per = v.len() / b;
    Ok((0..b)
        .max_by_key(|&i| {
            (
                v[i * per..(i + 1) * per].iter().filter(|&&x| x > 0.05).count(),
                usize::MAX - i,
            )
        })
        .unwrap_or(0))
}

/// The picture of `item` of a batch: `clean`, `noisy` (the encoder's input)
/// and `rec` are `B × 1 × D × H × W`.
pub fn reconstruction_png(
    path: &Path,
    c: &ModelConfig,
    (clean, noisy, rec): (&Tensor, &Tensor, &Tensor),
    mask: &DualMask,
    item: usize,
) -> Result<()> {
    let [d, h, w] = c.superpatch_size;
    let [pd, ph, pw] = c.patch_size;
    let [_, hp, wp] = c.grid();
    let n = c.num_tokens();
    let z = d / 2;
    let slice = |t: &Tensor| -> Result<Vec<f32>> {
        let v = t.cpu_slice::<f32>()?;
        let at = item * d * h * w + z * h * w;
        Ok(v[at..at + h * w].to_vec())
    };
    let (x, xn, r) = (slice(clean)?, slice(noisy)?, slice(rec)?);
    let masked = mask.mask_u8();
    let masked = &masked[item * n..(item + 1) * n];
    let is_masked = |i: usize| {
        let (y, xx) = (i / w, i % w);
        masked[((z / pd) * hp + y / ph) * wp + xx / pw] == 1
    };
    let visible_input: Vec<f32> = (0..h * w).map(|i| if is_masked(i) { 0.0 } else { xn[i] }).collect();
    // The loss covers masked tokens only, so the decoder's output on visible
    // ones is untrained noise: show the masked reconstruction with the visible
    // input pasted back, as MAE pictures do.
    let r: Vec<f32> = (0..h * w).map(|i| if is_masked(i) { r[i] } else { xn[i] }).collect();
    let err: Vec<f32> = r.iter().zip(&x).map(|(a, b)| (a - b).abs()).collect();
    let kept = 100.0 * mask.visible() as f64 / c.num_tokens() as f64;
    let panels = [
        Panel::new(format!("input z={z}"), w, h, x, (0.0, 1.0)),
        Panel::new(format!("visible {kept:.0}%"), w, h, visible_input, (0.0, 1.0)),
        Panel::new("reconstruction + visible", w, h, r, (0.0, 1.0)),
        Panel::new(format!("|error| 0-{ERROR_SCALE}"), w, h, err, (0.0, ERROR_SCALE)).with_colormap(Colormap::Heat),
    ];
    grayscale_panels(&panels, scale_for(w.max(h)))?.save_png(path)?;
    Ok(())
}

/// One curve: `(step, value)` points.
pub type Curve = Vec<(f64, f64)>;

/// `curves.png`: training and validation loss (log scale, left) and PSNR (right) against step.
pub fn curves_png(path: &Path, train_loss: Curve, val_loss: Curve, train_psnr: Curve, val_psnr: Curve) -> Result<()> {
    let spec = PlotSpec {
        title: "NEMESIS pretraining".into(),
        x_label: "step".into(),
        left_label: "masked loss (log)".into(),
        right_label: "PSNR [dB]".into(),
        series: vec![
            Series::new("train loss", PALETTE[0], Axis::Left, train_loss),
            Series::new("val loss", PALETTE[1], Axis::Left, val_loss),
            Series::new("train PSNR", PALETTE[2], Axis::Right, train_psnr),
            Series::new("val PSNR", PALETTE[3], Axis::Right, val_psnr),
        ],
        left_log: true,
        ..PlotSpec::default()
    };
    line_plot(&spec)?.save_png(path)?;
    Ok(())
}
