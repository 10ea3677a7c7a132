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

/// The picture of item 0 of a batch: `clean`, `noisy` (the encoder's input)
/// and `rec` are `B × 1 × D × H × W`.
pub fn reconstruction_png(
    path: &Path,
    c: &ModelConfig,
    clean: &Tensor,
    noisy: &Tensor,
    rec: &Tensor,
    mask: &DualMask,
) -> Result<()> {
    let [d, h, w] = c.superpatch_size;
    let [pd, ph, pw] = c.patch_size;
    let [_, hp, wp] = c.grid();
    let z = d / 2;
    let slice = |t: &Tensor| -> Result<Vec<f32>> {
        let v = t.cpu_slice::<f32>()?;
        Ok(v[z * h * w..(z + 1) * h * w].to_vec())
    };
    let (x, xn, r) = (slice(clean)?, slice(noisy)?, slice(rec)?);
    let masked = mask.mask_u8();
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
    let err_max = err.iter().cloned().fold(0.05f32, f32::max);
    let kept = 100.0 * mask.visible() as f64 / c.num_tokens() as f64;
    let panels = [
        Panel::new(format!("input z={z}"), w, h, x, (0.0, 1.0)),
        Panel::new(format!("visible {kept:.0}%"), w, h, visible_input, (0.0, 1.0)),
        Panel::new("reconstruction + visible", w, h, r, (0.0, 1.0)),
        Panel::new(format!("|error| 0-{err_max:.2}"), w, h, err, (0.0, err_max)).with_colormap(Colormap::Heat),
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
