//! Writing a volume as a DICOM CT series (explicit VR little endian, one
//! file a slice): the synthetic phantoms as a scanner would export them
//! (`nemesis synth --format dicom`). The geometry is chosen so that
//! data/dicom.rs reads back exactly the volume `write_volume` stores as
//! NIfTI: columns run along H, rows along W, slices along D, with the
//! NIfTI file's diagonal affine (in LPS: column direction −x, row
//! direction −y, slices up +z from the origin).

use std::path::Path;

use dicom_core::{dicom_value, DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use crate::error::{Error, Result};

/// A deterministic UID (the `2.25.` form, from a 128-bit value) for the
/// same seed and phantom, so writing twice gives the same files.
fn uid(parts: &[u64]) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for &p in parts {
        h ^= u128::from(p);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    format!("2.25.{}", h >> 1)
}

fn ds(v: f64) -> String {
    // Decimal strings hold at most 16 characters.
    let s = format!("{v}");
    if s.len() <= 16 {
        s
    } else {
        format!("{v:.9e}")
    }
}

/// Writes the `D × H × W` HU volume `hu` (W fastest) with `spacing` (mm,
/// D, H, W) as a series of `D` files in the new folder `dir` (made in a
/// temporary folder beside it and renamed, so a series is there whole or
/// not at all). `key` makes the UIDs (seed, phantom index).
pub fn write_series(
    dir: &Path,
    shape: [usize; 3],
    spacing: [f32; 3],
    hu: &[i16],
    key: [u64; 2],
    description: &str,
) -> Result<()> {
    let [d, h, w] = shape;
    if hu.len() != d * h * w || h > u16::MAX as usize || w > u16::MAX as usize || d == 0 {
        return Err(Error::invalid(
            "write_series",
            format!("{} values for a {shape:?} volume", hu.len()),
        ));
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let study = uid(&[key[0], key[1], 1]);
    let series = uid(&[key[0], key[1], 2]);
    let frame = uid(&[key[0], key[1], 3]);
    for k in 0..d {
        let mut obj = InMemDicomObject::new_empty();
        let mut put = |tag, vr, v: PrimitiveValue| {
            obj.put(DataElement::new(tag, vr, v));
        };
        let sop = uid(&[key[0], key[1], 4, k as u64]);
        put(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::CT_IMAGE_STORAGE),
        );
        put(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop.as_str()));
        put(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from(study.as_str()));
        put(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from(series.as_str()));
        put(
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            PrimitiveValue::from(frame.as_str()),
        );
        put(tags::MODALITY, VR::CS, PrimitiveValue::from("CT"));
        put(
            tags::IMAGE_TYPE,
            VR::CS,
            dicom_value!(Strs, ["ORIGINAL", "PRIMARY", "AXIAL"]),
        );
        put(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from("Phantom"));
        put(
            tags::PATIENT_ID,
            VR::LO,
            PrimitiveValue::from(format!("phantom-{}", key[1])),
        );
        put(tags::SERIES_DESCRIPTION, VR::LO, PrimitiveValue::from(description));
        put(tags::SERIES_NUMBER, VR::IS, PrimitiveValue::from("1"));
        put(tags::INSTANCE_NUMBER, VR::IS, PrimitiveValue::from((k + 1).to_string()));
        put(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            dicom_value!(Strs, ["-1", "0", "0", "0", "-1", "0"]),
        );
        let z = ds(k as f64 * f64::from(spacing[0]));
        put(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            dicom_value!(Strs, ["0", "0", z.as_str()]),
        );
        // Rows run along W (row spacing), columns along H (column spacing).
        let (sw, sh) = (ds(f64::from(spacing[2])), ds(f64::from(spacing[1])));
        put(
            tags::PIXEL_SPACING,
            VR::DS,
            dicom_value!(Strs, [sw.as_str(), sh.as_str()]),
        );
        put(
            tags::SLICE_THICKNESS,
            VR::DS,
            PrimitiveValue::from(ds(f64::from(spacing[0]))),
        );
        put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
        put(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from("MONOCHROME2"),
        );
        put(tags::ROWS, VR::US, PrimitiveValue::from(w as u16));
        put(tags::COLUMNS, VR::US, PrimitiveValue::from(h as u16));
        put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
        put(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16));
        put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16));
        put(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(1u16));
        put(tags::RESCALE_INTERCEPT, VR::DS, PrimitiveValue::from("0"));
        put(tags::RESCALE_SLOPE, VR::DS, PrimitiveValue::from("1"));
        put(tags::RESCALE_TYPE, VR::LO, PrimitiveValue::from("HU"));
        // Row r (along W), column c (along H) of slice k.
        let mut pixels = Vec::with_capacity(h * w * 2);
        for r in 0..w {
            for c in 0..h {
                pixels.extend_from_slice(&hu[(k * h + c) * w + r].to_le_bytes());
            }
        }
        put(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(pixels));
        let file = obj
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .map_err(|e| Error::invalid("write_series", e.to_string()))?;
        let path = tmp.join(format!("slice_{k:04}.dcm"));
        file.write_to_file(&path)
            .map_err(|e| Error::format(&path, format!("cannot write ({e})")))?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
}
