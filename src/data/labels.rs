//! Label maps beside their images: read and checked against the image
//! (same grid, same orientation, every value in the dataset's table), and
//! written back in an image's own stored voxel order and affine, so a
//! predicted map overlays the scan it came from in any viewer.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::nifti::{Volume, VolumeInfo};
use super::volume::read_volume;
use crate::error::{Error, Result};
use crate::io::write_atomic;

/// Reads the label map at `label_path` for `image` (read from
/// `image_path`): it must lie on the image's grid and orientation, and
/// every value must be one of `allowed`. Returns the values, `D × H × W`
/// in the image's oriented order.
pub fn read_label_map(image_path: &Path, image: &Volume, label_path: &Path, allowed: &[u8]) -> Result<Vec<u8>> {
    let label = read_volume(label_path)?;
    check_same_grid(image_path, image, label_path, &label)?;
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
    Ok(codes)
}

/// A label map must share its image's shape and orientation (affines
/// equal to 1e-3 relative).
pub fn check_same_grid(image_path: &Path, image: &Volume, label_path: &Path, label: &Volume) -> Result<()> {
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

/// Writes `labels` (`D × H × W` in the oriented order of an image read
/// with `info`) as a NIfTI-1 uint8 volume (.nii, or .nii.gz by the name)
/// in that image's stored voxel order, with its affine as the sform (and
/// qform left unset), so it lies exactly on the image.
pub fn write_label_map_like(path: &Path, labels: &[u8], shape: [usize; 3], info: &VolumeInfo) -> Result<()> {
    let n: usize = shape.iter().product();
    if labels.len() != n || info.stored_shape.len() < 3 {
        return Err(Error::invalid(
            "write_label_map_like",
            format!("{} labels for a volume of {shape:?}", labels.len()),
        ));
    }
    let stored = [info.stored_shape[0], info.stored_shape[1], info.stored_shape[2]];
    if info.axis_order.map(|a| stored[a]) != shape || stored.iter().any(|&s| s > i16::MAX as usize) {
        return Err(Error::invalid(
            "write_label_map_like",
            format!(
                "a label map of {shape:?} does not fit the stored shape {:?} with axes {:?}",
                info.stored_shape, info.axis_order
            ),
        ));
    }
    // Oriented voxel (d, r, c) sits at stored coordinate axis_order[0] = d,
    // axis_order[1] = r, axis_order[2] = c (first stored axis fastest).
    let strides = [1, stored[0], stored[0] * stored[1]];
    let [s0, s1, s2] = info.axis_order.map(|a| strides[a]);
    let mut data = vec![0u8; n];
    let mut k = 0;
    for d in 0..shape[0] {
        for r in 0..shape[1] {
            for c in 0..shape[2] {
                data[d * s0 + r * s1 + c * s2] = labels[k];
                k += 1;
            }
        }
    }
    let mut hdr = vec![0u8; 352];
    let put_i16 = |hdr: &mut Vec<u8>, off: usize, v: i16| hdr[off..off + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 = |hdr: &mut Vec<u8>, off: usize, v: f32| hdr[off..off + 4].copy_from_slice(&v.to_le_bytes());
    hdr[0..4].copy_from_slice(&348i32.to_le_bytes());
    hdr[38] = b'r';
    let dims = [3i16, stored[0] as i16, stored[1] as i16, stored[2] as i16, 1, 1, 1, 1];
    for (k, v) in dims.iter().enumerate() {
        put_i16(&mut hdr, 40 + 2 * k, *v);
    }
    put_i16(&mut hdr, 70, 2); // uint8
    put_i16(&mut hdr, 72, 8);
    let a = &info.affine;
    let col = |j: usize| ((0..3).map(|i| a[i][j] * a[i][j]).sum::<f64>()).sqrt() as f32;
    let pix = [1.0f32, col(0), col(1), col(2), 1.0, 1.0, 1.0, 1.0];
    for (k, v) in pix.iter().enumerate() {
        put_f32(&mut hdr, 76 + 4 * k, *v);
    }
    put_f32(&mut hdr, 108, 352.0); // vox_offset
    put_f32(&mut hdr, 112, 1.0); // scl_slope
    hdr[123] = 2; // millimetres
    put_i16(&mut hdr, 252, 0); // qform_code
    put_i16(&mut hdr, 254, 1); // sform_code
    for (r, row) in a.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            put_f32(&mut hdr, 280 + 16 * r + 4 * c, *v as f32);
        }
    }
    hdr[344..348].copy_from_slice(b"n+1\0");
    hdr.extend_from_slice(&data);
    let out = if path.to_string_lossy().to_ascii_lowercase().ends_with(".gz") {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(&hdr)
            .and_then(|_| enc.finish())
            .map_err(|e| Error::io(path, e))?
    } else {
        hdr
    };
    write_atomic(path, &out)
}
