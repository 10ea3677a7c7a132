//! The reconstruction picture: the middle axial slice of the first
//! superpatch as input, masked input, reconstruction and error.

use std::path::Path;

use crate::error::Result;
use crate::model::{DualMask, ModelConfig};
use crate::picture::{grayscale_panels, Colormap, Panel};
use crate::tensor::Tensor;

/// Upscale so that even a 32-voxel slice is comfortably visible.
fn scale_for(size: usize) -> usize {
    (256 / size.max(1)).clamp(1, 8)
}

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
    let visible_input: Vec<f32> = (0..h * w)
        .map(|i| {
            let (y, xx) = (i / w, i % w);
            let n = ((z / pd) * hp + y / ph) * wp + xx / pw;
            if masked[n] == 1 {
                0.0
            } else {
                xn[i]
            }
        })
        .collect();
    let err: Vec<f32> = r.iter().zip(&x).map(|(a, b)| (a - b).abs()).collect();
    let err_max = err.iter().cloned().fold(0.05f32, f32::max);
    let kept = 100.0 * mask.visible() as f64 / c.num_tokens() as f64;
    let panels = [
        Panel::new(format!("input z={z}"), w, h, x, (0.0, 1.0)),
        Panel::new(format!("visible {kept:.0}%"), w, h, visible_input, (0.0, 1.0)),
        Panel::new("reconstruction", w, h, r, (0.0, 1.0)),
        Panel::new(format!("|error| 0-{err_max:.2}"), w, h, err, (0.0, err_max)).with_colormap(Colormap::Heat),
    ];
    grayscale_panels(&panels, scale_for(w.max(h)))?.save_png(path)?;
    Ok(())
}
