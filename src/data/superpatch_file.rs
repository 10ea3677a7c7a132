//! Superpatches for `encode` and `reconstruct`: a safetensors file with
//! tensor `image` (f32, `B × C × D × H × W`, values already in [0, 1]), or a
//! NIfTI volume in HU, windowed (MODEL.md §2) and cut into tiles (MODEL.md §12).

use std::path::Path;

use super::sampler::hu_window;
use super::tiles::{tile, tile_grid};
use super::volume::read_volume;
use crate::error::{Error, Result};
use crate::io::{ArrayData, TensorFile};
use crate::model::ModelConfig;
use crate::tensor::Tensor;

pub fn is_nifti_path(path: &Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".nii") || name.ends_with(".nii.gz") || name.ends_with(".hdr") || name.ends_with(".img")
}

/// Model input read from a file, and where it came from.
pub struct Superpatches {
    /// `B × C × D × H × W`, in [0, 1].
    pub image: Tensor,
    /// For a CT volume: its oriented shape and the tile grid (z, y, x).
    pub tiling: Option<([usize; 3], [usize; 3])>,
}

/// Reads superpatches for `config` from a safetensors `image`, a NIfTI
/// volume or a folder holding a DICOM series.
pub fn read_superpatches(path: &Path, config: &ModelConfig) -> Result<Superpatches> {
    if is_nifti_path(path) || path.is_dir() {
        if config.in_channels != 1 {
            return Err(Error::format(
                path,
                "a CT volume has one channel; this model wants more",
            ));
        }
        let v = read_volume(path)?;
        v.check_ct_range()?;
        let size = config.superpatch_size;
        let grid = tile_grid(v.shape, size);
        let tiles = tile(&v.hu, v.shape, size, 0.0f32, hu_window)?;
        let b = grid.iter().product::<usize>();
        return Ok(Superpatches {
            image: Tensor::from_vec(tiles, [b, 1, size[0], size[1], size[2]])?,
            tiling: Some((v.shape, grid)),
        });
    }
    Ok(Superpatches {
        image: read_image(path, config)?,
        tiling: None,
    })
}

/// Reads tensor `image` and checks it against the model's superpatch size.
fn read_image(path: &Path, config: &ModelConfig) -> Result<Tensor> {
    let file = TensorFile::read(path)?;
    let a = file.get("image")?;
    let ArrayData::F32(values) = &a.data else {
        return Err(Error::format(
            path,
            format!("tensor `image` has dtype {}, expected F32", a.dtype_name()),
        ));
    };
    let [d, h, w] = config.superpatch_size;
    let want = [config.in_channels, d, h, w];
    if a.shape.len() != 5 || a.shape[1..] != want || a.shape[0] == 0 {
        return Err(Error::format(
            path,
            format!(
                "tensor `image` has shape {:?}; this model takes B × {} × {d} × {h} × {w} (B ≥ 1)",
                a.shape, config.in_channels
            ),
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::format(
            path,
            format!("tensor `image` holds a non-finite value at flat index {i}"),
        ));
    }
    // The model takes HU windowed to [0, 1] (MODEL.md §2); anything else
    // is a different preprocessing and would give meaningless features.
    let outside = values.iter().filter(|v| !(0.0..=1.0).contains(*v)).count();
    if outside > 0 {
        let i = values.iter().position(|v| !(0.0..=1.0).contains(v)).unwrap_or(0);
        return Err(Error::format(
            path,
            format!(
                "tensor `image` holds {outside} value(s) outside [0, 1] (the first, {}, at flat index {i}); \
                 superpatches are CT windowed to [0, 1] — give the NIfTI volume itself to have it windowed",
                values[i]
            ),
        ));
    }
    Tensor::from_vec(values.clone(), a.shape.clone())
}
