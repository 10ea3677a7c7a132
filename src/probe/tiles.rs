//! Labelled tiles (MODEL.md §12): a volume cut into non-overlapping superpatch
//! tiles (the tiling of `nemesis encode`), and per tile the presence of each
//! of the eight organs (more than 100 voxels of its label).

use std::path::Path;

use crate::data::{hu_window, read_volume, tile, tile_grid, Entry};
use crate::error::{Error, Result};

/// The eight organs in the paper's order, with their BTCV label values.
pub const ORGANS: [(&str, u8); 8] = [
    ("aorta", 8),
    ("gallbladder", 4),
    ("spleen", 1),
    ("left kidney", 3),
    ("right kidney", 2),
    ("liver", 6),
    ("stomach", 7),
    ("pancreas", 11),
];

/// An organ is present in a tile with more than this many of its voxels.
pub const PRESENT_VOXELS: usize = 100;

/// BTCV's label values: background and its thirteen organs.
pub const BTCV_LABELS: std::ops::RangeInclusive<u8> = 0..=13;

/// One volume's tiles: windowed values (`count × D·H·W`) and labels
/// (`count × 8`, 1 = present).
pub struct VolumeTiles {
    pub count: usize,
    pub values: Vec<f32>,
    pub labels: Vec<u8>,
}

/// Reads an image and its label map, checks that they match (shape and
/// orientation) and that every label value is in `allowed`, and cuts both
/// into tiles of `size`.
pub fn labelled_tiles(entry: &Entry, size: [usize; 3], allowed: &[u8]) -> Result<VolumeTiles> {
    let label_path = entry.label.as_deref().ok_or_else(|| {
        Error::format(
            &entry.image,
            "has no label map in the index; the probe needs one per volume",
        )
    })?;
    let image = read_volume(&entry.image)?;
    image.check_ct_range()?;
    let label = read_volume(label_path)?;
    check_same_grid(&entry.image, &image, label_path, &label)?;
    let mut codes = Vec::with_capacity(label.hu.len());
    for (i, &v) in label.hu.iter().enumerate() {
        let code = v.round();
        if (v - code).abs() > 1e-3 || !(0.0..=255.0).contains(&code) || !allowed.contains(&(code as u8)) {
            return Err(Error::format(
                label_path,
                format!(
                    "label value {v} at voxel {i} is outside the label table {allowed:?}; \
                     check that this is a label map of this dataset"
                ),
            ));
        }
        codes.push(code as u8);
    }
    let values = tile(&image.hu, image.shape, size, 0.0f32, hu_window)?;
    let label_tiles = tile(&codes, image.shape, size, 0u8, |c| c)?;
    let count = tile_grid(image.shape, size).iter().product::<usize>();
    let per = size.iter().product::<usize>();
    let mut labels = vec![0u8; count * ORGANS.len()];
    for (t, lt) in label_tiles.chunks(per).enumerate() {
        for (o, &(_, code)) in ORGANS.iter().enumerate() {
            let n = lt.iter().filter(|&&c| c == code).count();
            labels[t * ORGANS.len() + o] = u8::from(n > PRESENT_VOXELS);
        }
    }
    Ok(VolumeTiles { count, values, labels })
}

fn check_same_grid(
    image_path: &Path,
    image: &crate::data::Volume,
    label_path: &Path,
    label: &crate::data::Volume,
) -> Result<()> {
    if image.shape != label.shape {
        return Err(Error::format(
            label_path,
            format!(
                "label map of shape {:?} (D, H, W) for image {} of shape {:?}",
                label.shape,
                image_path.display(),
                image.shape
            ),
        ));
    }
    let same_axes = image.info.axis_order == label.info.axis_order;
    let close = image
        .info
        .affine
        .iter()
        .flatten()
        .zip(label.info.affine.iter().flatten())
        .all(|(a, b)| (a - b).abs() <= 1e-3 * (1.0 + a.abs()));
    if !same_axes || !close {
        return Err(Error::format(
            label_path,
            format!(
                "label map is oriented differently from image {} (affines {:?} and {:?})",
                image_path.display(),
                label.info.affine,
                image.info.affine
            ),
        ));
    }
    Ok(())
}
