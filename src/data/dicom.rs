//! DICOM CT series (a folder of slice files) read into the same `Volume` a
//! NIfTI file gives, by SPEC §2's DICOM paragraph: slices sorted by their
//! position along the slice normal (`IPP · (r × c)`), never by
//! InstanceNumber or file name; the spacing from those positions; HU =
//! stored · RescaleSlope + RescaleIntercept; voxels in the order a NIfTI
//! file of the series would have (i = column, j = row, k = sorted slice)
//! with the affine from IOP, IPP and PixelSpacing (LPS, turned to RAS);
//! then the orientation rule of NIfTI volumes, unchanged.
//!
//! The files are read by the dicom-rs crates (dicom-object, dicom-pixeldata)
//! with the transfer syntaxes of real CT: implicit and explicit VR little
//! endian, deflate, RLE, JPEG lossless; JPEG 2000 with the `jpeg2000`
//! feature. Two series in one folder are never merged; localizers and
//! objects without pixels are left out, said.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{open_file, DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};

use super::nifti::{check_values, orient};
use super::{AffineSource, Volume, VolumeInfo};
use crate::error::{Error, Result};

/// Two slices closer than this along the normal are the same position.
const SAME_POSITION_MM: f64 = 1e-3;
/// Gaps between slices may differ by this fraction of the median gap.
const SPACING_TOLERANCE: f64 = 0.05;

/// What a series is, for `inspect` and messages.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesInfo {
    pub uid: String,
    pub description: String,
    pub transfer_syntax: String,
    pub slices: usize,
    /// The distance between neighbouring slices along the normal, in mm.
    pub slice_spacing: f64,
    /// Files left out, and why (localizers, objects without pixels).
    pub skipped: Vec<String>,
}

/// Whether `dir` holds DICOM files (a file with the `DICM` preamble), so a
/// folder can be told apart from one of NIfTI volumes.
pub fn is_dicom_folder(dir: &Path) -> bool {
    files_of(dir)
        .map(|f| f.iter().any(|p| has_preamble(p)))
        .unwrap_or(false)
}

fn has_preamble(p: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|_| &head[128..] == b"DICM")
        .unwrap_or(false)
}

fn files_of(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    Ok(files)
}

/// One slice's header: a file, or a frame of a multi-frame file.
struct Slice {
    path: PathBuf,
    /// The frame within the file (0 for a single-frame file).
    frame: u32,
    rows: usize,
    cols: usize,
    iop: [f64; 6],
    ipp: [f64; 3],
    spacing: [f64; 2],
    slope: f64,
    inter: f64,
    signed: bool,
    bits: u16,
}

type Item = dicom_object::InMemDicomObject;

fn text(obj: &Item, tag: dicom_object::Tag) -> Option<String> {
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// Where an attribute of frame `frame` is looked for: the data set itself,
/// then (for a multi-frame object) that frame's functional group, then the
/// shared functional groups, each in the item of sequence `group`.
fn find(
    obj: &Item,
    frame: u32,
    group: dicom_object::Tag,
    tag: dicom_object::Tag,
) -> Option<&dicom_object::mem::InMemElement> {
    if let Ok(e) = obj.element(tag) {
        return Some(e);
    }
    let in_group = |seq: dicom_object::Tag, index: usize| {
        obj.element(seq)
            .ok()
            .and_then(|e| e.items())
            .and_then(|items| items.get(index))
            .and_then(|g| g.element(group).ok())
            .and_then(|e| e.items())
            .and_then(|items| items.first())
            .and_then(|item| item.element(tag).ok())
    };
    in_group(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, frame as usize)
        .or_else(|| in_group(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, 0))
}

fn floats(
    obj: &Item,
    frame: u32,
    (group, tag): (dicom_object::Tag, dicom_object::Tag),
    name: &str,
    n: usize,
    path: &Path,
) -> Result<Vec<f64>> {
    let v = find(obj, frame, group, tag)
        .ok_or_else(|| Error::format(path, format!("no {name}: not a slice of a CT volume")))?
        .to_multi_float64()
        .map_err(|e| Error::format(path, format!("{name} is not numbers ({e})")))?;
    if v.len() != n || v.iter().any(|x| !x.is_finite()) {
        return Err(Error::format(
            path,
            format!("{name} holds {v:?}; {n} finite numbers expected"),
        ));
    }
    Ok(v)
}

/// Reads the series in `dir`: the one there, or `series` (a
/// SeriesInstanceUID) when there are several.
pub fn read_series(dir: &Path, series: Option<&str>) -> Result<(Volume, SeriesInfo)> {
    let files = files_of(dir)?;
    if files.is_empty() {
        return Err(Error::format(dir, "an empty folder: no DICOM series"));
    }
    // Every file's header (the pixel data not yet read).
    let mut groups: BTreeMap<String, Vec<(PathBuf, DefaultDicomObject)>> = BTreeMap::new();
    let mut described: BTreeMap<String, String> = BTreeMap::new();
    let mut skipped = Vec::new();
    for f in &files {
        let obj = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(f)
            .map_err(|e| Error::format(f, format!("not a readable DICOM file ({e})")))?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if obj.element(tags::ROWS).is_err() {
            skipped.push(format!(
                "{name}: no image (SOP class {})",
                text(&obj, tags::SOP_CLASS_UID).unwrap_or_default()
            ));
            continue;
        }
        let kind = text(&obj, tags::IMAGE_TYPE).unwrap_or_default().to_ascii_uppercase();
        if kind.contains("LOCALIZER") {
            skipped.push(format!("{name}: a localizer"));
            continue;
        }
        let uid = text(&obj, tags::SERIES_INSTANCE_UID).unwrap_or_default();
        described
            .entry(uid.clone())
            .or_insert_with(|| text(&obj, tags::SERIES_DESCRIPTION).unwrap_or_default());
        groups.entry(uid).or_default().push((f.clone(), obj));
    }
    let (uid, members) = match series {
        Some(want) => groups.remove_entry(want).ok_or_else(|| {
            Error::format(
                dir,
                format!("no series {want} here; it holds {}", listing(&groups, &described)),
            )
        })?,
        None if groups.len() > 1 => {
            return Err(Error::format(
                dir,
                format!(
                    "holds {} series, which are never merged: {}; choose one with --series UID (or give each its \
                     own folder)",
                    groups.len(),
                    listing(&groups, &described)
                ),
            ))
        }
        None => groups
            .pop_first()
            .ok_or_else(|| Error::format(dir, format!("no image slices ({})", skipped.join("; "))))?,
    };
    let transfer_syntax = members
        .first()
        .map(|(_, o)| ts_name(o.meta().transfer_syntax()))
        .unwrap_or_default();
    let mut slices = Vec::with_capacity(members.len());
    for (path, obj) in &members {
        slices.extend(headers(path, obj)?);
    }
    let first = &slices[0];
    for s in &slices[1..] {
        if (s.rows, s.cols) != (first.rows, first.cols) {
            return Err(Error::format(
                &s.path,
                format!(
                    "{}×{} pixels where the series' first slice has {}×{}",
                    s.rows, s.cols, first.rows, first.cols
                ),
            ));
        }
        if s.iop.iter().zip(&first.iop).any(|(a, b)| (a - b).abs() > 1e-4) {
            return Err(Error::format(
                &s.path,
                "another ImageOrientationPatient than the series' first slice",
            ));
        }
        if s.spacing.iter().zip(&first.spacing).any(|(a, b)| (a - b).abs() > 1e-4) {
            return Err(Error::format(
                &s.path,
                "another PixelSpacing than the series' first slice",
            ));
        }
    }
    let r = [first.iop[0], first.iop[1], first.iop[2]];
    let c = [first.iop[3], first.iop[4], first.iop[5]];
    let n = cross(r, c);
    if !(0.9..1.1).contains(&dot(n, n).sqrt()) {
        return Err(Error::format(
            &first.path,
            "ImageOrientationPatient's two directions are not orthonormal",
        ));
    }
    // Sorted by position along the normal.
    let mut order: Vec<(f64, usize)> = slices.iter().enumerate().map(|(k, s)| (dot(s.ipp, n), k)).collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let gaps: Vec<f64> = order.windows(2).map(|w| w[1].0 - w[0].0).collect();
    if let Some(k) = gaps.iter().position(|&g| g < SAME_POSITION_MM) {
        return Err(Error::format(
            dir,
            format!(
                "{} and {} lie at the same position ({:.3} mm along the normal): two slices of one place",
                name(&slices[order[k].1].path),
                name(&slices[order[k + 1].1].path),
                order[k].0
            ),
        ));
    }
    let slice_spacing = if gaps.is_empty() {
        1.0
    } else {
        let mut sorted = gaps.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        if let Some(k) = gaps
            .iter()
            .position(|&g| (g - median).abs() > SPACING_TOLERANCE * median)
        {
            let at: Vec<String> = order.iter().map(|(p, _)| format!("{p:.2}")).collect();
            return Err(Error::format(
                dir,
                format!(
                    "uneven slice spacing: {:.3} mm between {} and {} where the series' gaps are {median:.3} mm \
                     (positions along the normal: {}); a missing slice? Resample the series first",
                    gaps[k],
                    name(&slices[order[k].1].path),
                    name(&slices[order[k + 1].1].path),
                    at.join(", ")
                ),
            ));
        }
        (order.last().map_or(0.0, |l| l.0) - order[0].0) / gaps.len() as f64
    };
    // The voxels: i = column (fastest), j = row, k = sorted slice.
    let (x, y, z) = (first.cols, first.rows, slices.len());
    let mut values = vec![0.0f64; x * y * z];
    let raw = ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
    // Each file decoded once, its frames placed at their sorted positions.
    let mut place: BTreeMap<&Path, Vec<(usize, usize)>> = BTreeMap::new();
    for (k, &(_, idx)) in order.iter().enumerate() {
        place.entry(slices[idx].path.as_path()).or_default().push((idx, k));
    }
    for (path, frames) in &place {
        let obj = open_file(path).map_err(|e| Error::format(path, format!("not a readable DICOM file ({e})")))?;
        let decoded = obj.decode_pixel_data().map_err(|e| {
            Error::format(
                path,
                format!(
                    "its pixel data ({}) cannot be decoded: {e}{}",
                    transfer_syntax,
                    hint(&transfer_syntax)
                ),
            )
        })?;
        for &(idx, k) in frames {
            let s = &slices[idx];
            let px: Vec<f64> = decoded
                .to_vec_frame_with_options(s.frame, &raw)
                .map_err(|e| Error::format(path, format!("its pixel data cannot be read ({e})")))?;
            if px.len() != x * y {
                return Err(Error::format(path, format!("{} pixels for a {y}×{x} slice", px.len())));
            }
            let plane = &mut values[k * x * y..(k + 1) * x * y];
            for row in 0..y {
                for col in 0..x {
                    plane[col + x * row] = px[row * x + col] * s.slope + s.inter;
                }
            }
        }
    }
    check_values(dir, &values, [x, y])?;
    // The affine (LPS), turned to RAS: x and y change sign.
    let origin = slices[order[0].1].ipp;
    let step = if z > 1 {
        let last = slices[order[z - 1].1].ipp;
        [0, 1, 2].map(|a| (last[a] - origin[a]) / (z - 1) as f64)
    } else {
        n.map(|v| v * slice_spacing)
    };
    let cols = [r.map(|v| v * first.spacing[1]), c.map(|v| v * first.spacing[0]), step];
    let mut affine = [[0.0; 4]; 3];
    for a in 0..3 {
        let sign = if a < 2 { -1.0 } else { 1.0 };
        for (j, col) in cols.iter().enumerate() {
            affine[a][j] = sign * col[a];
        }
        affine[a][3] = sign * origin[a];
    }
    let (shape, spacing, hu, axes) = orient(dir, &values, [x, y, z], &affine, None, "DICOM")?;
    let description = described.get(&uid).cloned().unwrap_or_default();
    let info = SeriesInfo {
        uid,
        description,
        transfer_syntax,
        slices: z,
        slice_spacing,
        skipped,
    };
    let datatype = match (first.bits, first.signed) {
        (8, false) => "uint8",
        (8, true) => "int8",
        (16, false) => "uint16",
        (16, true) => "int16",
        (32, false) => "uint32",
        _ => "int32",
    };
    let warnings = info.skipped.iter().map(|s| format!("left out {s}")).collect();
    let volume = Volume {
        shape,
        spacing,
        hu,
        info: VolumeInfo {
            path: dir.to_path_buf(),
            stored_shape: vec![x, y, z],
            datatype,
            big_endian: false,
            scaling: Some((first.slope, first.inter)),
            affine_source: AffineSource::Dicom,
            affine,
            si_axis: axes[0],
            axis_order: axes,
            warnings,
        },
    };
    Ok((volume, info))
}

/// The slices of one file: itself, or each frame of a multi-frame
/// (enhanced) CT object, its geometry from the functional groups.
fn headers(path: &Path, obj: &Item) -> Result<Vec<Slice>> {
    let int = |tag, what: &str| -> Result<u32> {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_int::<u32>().ok())
            .ok_or_else(|| Error::format(path, format!("no {what}")))
    };
    let samples = int(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel").unwrap_or(1);
    if samples != 1 {
        return Err(Error::format(
            path,
            format!("{samples} samples per pixel: not a CT slice"),
        ));
    }
    let frames = int(tags::NUMBER_OF_FRAMES, "NumberOfFrames").unwrap_or(1).max(1);
    let (rows, cols) = (
        int(tags::ROWS, "Rows")? as usize,
        int(tags::COLUMNS, "Columns")? as usize,
    );
    let bits = int(tags::BITS_ALLOCATED, "BitsAllocated")? as u16;
    let signed = int(tags::PIXEL_REPRESENTATION, "PixelRepresentation").unwrap_or(0) == 1;
    let mut out = Vec::with_capacity(frames as usize);
    for frame in 0..frames {
        let orientation = (tags::PLANE_ORIENTATION_SEQUENCE, tags::IMAGE_ORIENTATION_PATIENT);
        let iop = floats(obj, frame, orientation, "ImageOrientationPatient", 6, path)?;
        let position = (tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT);
        let ipp = floats(obj, frame, position, "ImagePositionPatient", 3, path)?;
        let measures = (tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING);
        let spacing = floats(obj, frame, measures, "PixelSpacing", 2, path)?;
        if spacing.iter().any(|&s| s <= 0.0) {
            return Err(Error::format(path, format!("PixelSpacing {spacing:?} is not positive")));
        }
        let opt = |tag, default: f64| -> Result<f64> {
            match find(obj, frame, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, tag) {
                None => Ok(default),
                Some(e) => e
                    .to_float64()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| Error::format(path, "RescaleSlope or RescaleIntercept is not a number")),
            }
        };
        out.push(Slice {
            path: path.to_path_buf(),
            frame,
            rows,
            cols,
            iop: [iop[0], iop[1], iop[2], iop[3], iop[4], iop[5]],
            ipp: [ipp[0], ipp[1], ipp[2]],
            spacing: [spacing[0], spacing[1]],
            slope: opt(tags::RESCALE_SLOPE, 1.0)?,
            inter: opt(tags::RESCALE_INTERCEPT, 0.0)?,
            signed,
            bits,
        });
    }
    Ok(out)
}

fn ts_name(uid: &str) -> String {
    use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
    let uid = uid.trim_end_matches('\0').trim();
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) => format!("{} ({uid})", ts.name()),
        None => format!("an unknown transfer syntax ({uid})"),
    }
}

/// What to do about pixel data that could not be decoded.
fn hint(ts: &str) -> &'static str {
    if ts.contains("1.2.840.10008.1.2.4.9") && !cfg!(feature = "jpeg2000") {
        "; JPEG 2000 is read by a build with the jpeg2000 feature: cargo build --release --features jpeg2000"
    } else {
        ""
    }
}

fn listing(
    groups: &BTreeMap<String, Vec<(PathBuf, DefaultDicomObject)>>,
    described: &BTreeMap<String, String>,
) -> String {
    groups
        .iter()
        .map(|(uid, m)| {
            let d = described.get(uid).map(String::as_str).unwrap_or("");
            format!(
                "{uid} ({}{} slices)",
                if d.is_empty() { String::new() } else { format!("{d}, ") },
                m.len()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a.iter().zip(&b).map(|(x, y)| x * y).sum()
}
