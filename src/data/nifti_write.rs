//! Writing NIfTI-1 single files (.nii, or .nii.gz when the name says so):
//! the synthetic phantoms and their label maps.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::error::{Error, Result};
use crate::io::write_atomic;

/// Voxel values a NIfTI file can hold here.
pub enum VoxelData<'a> {
    I16(&'a [i16]),
    U8(&'a [u8]),
}

/// Writes a `D × H × W` volume (row-major, W fastest) stored the usual CT way:
/// stored axes (H, W, D), so the third stored axis is superior–inferior and
/// reading it back with MODEL.md §2's rule gives the same `D × H × W` array. The
/// sform is diagonal with the spacing (mm, given in D, H, W order).
pub fn write_volume(path: &Path, shape: [usize; 3], spacing: [f32; 3], data: VoxelData) -> Result<()> {
    let [d, h, w] = shape;
    let n = d * h * w;
    let (datatype, bitpix, bytes): (i16, i16, Vec<u8>) = match data {
        VoxelData::I16(v) if v.len() == n => (4, 16, fortran_order(shape, |i| v[i].to_le_bytes().to_vec())),
        VoxelData::U8(v) if v.len() == n => (2, 8, fortran_order(shape, |i| vec![v[i]])),
        _ => {
            return Err(Error::invalid(
                "write_volume",
                format!("data length does not match {d}×{h}×{w}"),
            ))
        }
    };
    if [d, h, w].iter().any(|&s| s == 0 || s > i16::MAX as usize) {
        return Err(Error::invalid(
            "write_volume",
            format!("shape {shape:?} cannot be stored in NIfTI-1"),
        ));
    }
    let mut hdr = vec![0u8; 352];
    let put_i16 = |hdr: &mut Vec<u8>, off: usize, v: i16| hdr[off..off + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 = |hdr: &mut Vec<u8>, off: usize, v: f32| hdr[off..off + 4].copy_from_slice(&v.to_le_bytes());
    hdr[0..4].copy_from_slice(&348i32.to_le_bytes());
    hdr[38] = b'r'; // "regular", as the NIfTI-1 reference writes it
    let dims = [3i16, h as i16, w as i16, d as i16, 1, 1, 1, 1];
    for (k, v) in dims.iter().enumerate() {
        put_i16(&mut hdr, 40 + 2 * k, *v);
    }
    put_i16(&mut hdr, 70, datatype);
    put_i16(&mut hdr, 72, bitpix);
    let pix = [1.0f32, spacing[1], spacing[2], spacing[0], 1.0, 1.0, 1.0, 1.0];
    for (k, v) in pix.iter().enumerate() {
        put_f32(&mut hdr, 76 + 4 * k, *v);
    }
    put_f32(&mut hdr, 108, 352.0); // vox_offset
    put_f32(&mut hdr, 112, 1.0); // scl_slope
    hdr[123] = 2; // xyzt_units: millimetres
    put_i16(&mut hdr, 252, 0); // qform_code
    put_i16(&mut hdr, 254, 1); // sform_code: scanner
    let rows = [
        [spacing[1], 0.0, 0.0, 0.0],
        [0.0, spacing[2], 0.0, 0.0],
        [0.0, 0.0, spacing[0], 0.0],
    ];
    for (r, row) in rows.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            put_f32(&mut hdr, 280 + 16 * r + 4 * c, *v);
        }
    }
    hdr[344..348].copy_from_slice(b"n+1\0");
    hdr.extend_from_slice(&bytes);
    let gz = path.to_string_lossy().to_ascii_lowercase().ends_with(".gz");
    let out = if gz {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(&hdr)
            .and_then(|_| enc.finish())
            .map_err(|e| Error::io(path, e))?
    } else {
        hdr
    };
    write_atomic(path, &out)
}

/// Bytes in NIfTI order (first stored axis fastest) for stored axes (H, W, D).
fn fortran_order(shape: [usize; 3], elem: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let [d, h, w] = shape;
    let mut out = Vec::with_capacity(d * h * w * 2);
    for k in 0..d {
        for j in 0..w {
            for i in 0..h {
                out.extend(elem((k * h + i) * w + j));
            }
        }
    }
    out
}
