//! Superpatches given as a safetensors file: tensor `image`, f32,
//! `B × C × D × H × W`, values already in [0, 1].

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::{ArrayData, TensorFile};
use crate::model::ModelConfig;
use crate::tensor::Tensor;

pub fn is_nifti_path(path: &Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".nii") || name.ends_with(".nii.gz") || name.ends_with(".hdr") || name.ends_with(".img")
}

/// Reads tensor `image` and checks it against the model's superpatch size.
pub fn read_superpatches(path: &Path, config: &ModelConfig) -> Result<Tensor> {
    if is_nifti_path(path) {
        return Err(Error::NotYet {
            what: "NIfTI input (HU volumes tiled into superpatches)",
            tracking: "it arrives with the CT data pipeline (issue 4); for now pass a safetensors file \
                       with tensor `image` (f32, B×1×D×H×W in [0, 1])",
        });
    }
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
    Tensor::from_vec(values.clone(), a.shape.clone())
}
