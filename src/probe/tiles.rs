//! Labelled tiles (MODEL.md §12): a volume cut into non-overlapping superpatch
//! tiles (the tiling of `nemesis encode`), and per tile the presence of each
//! of the eight organs (more than 100 voxels of its label).

use crate::data::{hu_window, read_label_map, read_volume, tile, tile_grid, Entry};
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
    let codes = read_label_map(&entry.image, &image, label_path, allowed)?;
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
