//! Reading NIfTI-1 CT volumes (.nii, .nii.gz, .hdr/.img) into Hounsfield
//! units in the orientation of MODEL.md §2.

use std::path::{Path, PathBuf};

use std::fs::File;
use std::io::{BufReader, Read};

use flate2::read::GzDecoder;
use nifti::{Endianness, NiftiHeader};

use crate::error::{Error, Result};

/// Where the orientation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffineSource {
    Sform,
    Qform,
    /// Neither code set: the identity (the third stored axis is D).
    Identity,
    /// A DICOM series: from ImageOrientationPatient, ImagePositionPatient
    /// and PixelSpacing (data/dicom.rs).
    Dicom,
}

/// What a volume's header says, and how it was oriented.
#[derive(Clone, Debug)]
pub struct VolumeInfo {
    pub path: PathBuf,
    /// Dimensions as stored (3 or 4 of them).
    pub stored_shape: Vec<usize>,
    pub datatype: &'static str,
    pub big_endian: bool,
    /// `(slope, inter)` when scaling applies (slope neither 0 nor non-finite).
    pub scaling: Option<(f64, f64)>,
    pub affine_source: AffineSource,
    /// The voxel-to-world affine's top three rows.
    pub affine: [[f64; 4]; 3],
    /// The stored axis that became D (closest to superior–inferior).
    pub si_axis: usize,
    /// The stored axes that became (D, H, W).
    pub axis_order: [usize; 3],
    /// Problems that did not stop the read (a 4-D file, say).
    pub warnings: Vec<String>,
}

/// A CT volume in HU, `D × H × W` row-major (W fastest), after orientation.
#[derive(Clone, Debug)]
pub struct Volume {
    pub shape: [usize; 3],
    /// Voxel spacing in mm along (D, H, W).
    pub spacing: [f32; 3],
    pub hu: Vec<f32>,
    pub info: VolumeInfo,
}

fn datatype_name(t: i16) -> Option<(&'static str, usize)> {
    Some(match t {
        2 => ("uint8", 1),
        4 => ("int16", 2),
        8 => ("int32", 4),
        16 => ("float32", 4),
        64 => ("float64", 8),
        256 => ("int8", 1),
        512 => ("uint16", 2),
        768 => ("uint32", 4),
        _ => return None,
    })
}

/// The quaternion affine of NIfTI-1 (`qform`), from b, c, d, the offsets,
/// pixdim and qfac.
fn qform_affine(h: &NiftiHeader) -> [[f64; 4]; 3] {
    let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
    let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let s = [h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64 * qfac];
    let off = [h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64];
    let mut m = [[0.0; 4]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = r[i][j] * s[j];
        }
        m[i][3] = off[i];
    }
    m
}

fn affine_of(h: &NiftiHeader) -> (AffineSource, [[f64; 4]; 3]) {
    if h.sform_code > 0 {
        let rows = [h.srow_x, h.srow_y, h.srow_z];
        (AffineSource::Sform, rows.map(|r| r.map(|v| v as f64)))
    } else if h.qform_code > 0 {
        (AffineSource::Qform, qform_affine(h))
    } else {
        let mut m = [[0.0; 4]; 3];
        (0..3).for_each(|i| m[i][i] = 1.0);
        (AffineSource::Identity, m)
    }
}

/// MODEL.md §2: the stored axis whose direction is closest to superior–inferior
/// (world axis 2) becomes D; the other two keep their order as H, W.
fn orientation(affine: &[[f64; 4]; 3]) -> [usize; 3] {
    let si = |j: usize| {
        let norm = (0..3).map(|i| affine[i][j].powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 {
            affine[2][j].abs() / norm
        } else {
            0.0
        }
    };
    // Ties go to the later axis, so an all-equal affine keeps the usual
    // (x, y, z) reading with z as D.
    let d = (0..3).fold(0, |best, j| if si(j) >= si(best) { j } else { best });
    let rest: Vec<usize> = (0..3).filter(|&j| j != d).collect();
    [d, rest[0], rest[1]]
}

fn decode(raw: &[u8], datatype: i16, big: bool, n: usize) -> Vec<f64> {
    macro_rules! read {
        ($t:ty, $size:expr) => {
            raw.chunks_exact($size)
                .take(n)
                .map(|c| {
                    let mut b = [0u8; $size];
                    b.copy_from_slice(c);
                    (if big {
                        <$t>::from_be_bytes(b)
                    } else {
                        <$t>::from_le_bytes(b)
                    }) as f64
                })
                .collect()
        };
    }
    match datatype {
        2 => raw.iter().take(n).map(|&v| v as f64).collect(),
        256 => raw.iter().take(n).map(|&v| v as i8 as f64).collect(),
        4 => read!(i16, 2),
        512 => read!(u16, 2),
        8 => read!(i32, 4),
        768 => read!(u32, 4),
        16 => read!(f32, 4),
        _ => read!(f64, 8),
    }
}

/// Reads the header only and checks what the data read would trip over, so
/// each problem gets its own message.
fn checked_header(path: &Path) -> Result<NiftiHeader> {
    let h = NiftiHeader::from_file(path).map_err(|e| {
        Error::format(
            path,
            match e {
                nifti::NiftiError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                    "the file ends inside the 348-byte NIfTI-1 header".to_string()
                }
                nifti::NiftiError::Io(io) => format!("cannot read the header ({io})"),
                other => format!("not a NIfTI-1 file ({other})"),
            },
        )
    })?;
    let rank = h.dim[0] as i16;
    if !(1..=7).contains(&rank) {
        return Err(Error::format(
            path,
            format!("dim[0] = {rank}: the number of dimensions must be 1 to 7"),
        ));
    }
    for i in 1..=rank as usize {
        let v = h.dim[i] as i16;
        if v <= 0 {
            return Err(Error::format(
                path,
                format!("dimension {i} is {v}; every dimension must be positive"),
            ));
        }
    }
    if rank < 3 {
        return Err(Error::format(
            path,
            format!("a {rank}-D image; a CT volume needs 3 dimensions"),
        ));
    }
    if datatype_name(h.datatype).is_none() {
        return Err(Error::format(
            path,
            format!(
                "datatype code {} is not supported (uint8, int8, int16, uint16, int32, uint32, float32, float64 are)",
                h.datatype
            ),
        ));
    }
    Ok(h)
}

/// The largest |HU| a voxel may have for training and encoding. CT spans
/// about −1024 to +3071 HU, and extended scales for metal reach some
/// 30 000; beyond this the scaling or the data is wrong, and the volume is
/// rejected (never clipped: a volume of garbage would still train).
pub const HU_LIMIT: f32 = 1e5;

/// Rejects a volume with non-finite voxels after scaling, or voxels that
/// no f32 holds, counting them and naming the first (stored `x, y, z`).
pub(super) fn check_values(path: &Path, values: &[f64], [x, y]: [usize; 2]) -> Result<()> {
    let at = |k: usize| (k % x, (k / x) % y, k / (x * y));
    let bad = |v: &f64| !(v.is_finite() && v.abs() <= f32::MAX as f64);
    let count = values.iter().filter(|v| bad(v)).count();
    if count > 0 {
        let k = values.iter().position(bad).unwrap_or(0);
        return Err(Error::format(
            path,
            format!(
                "{count} voxel(s) are NaN, Inf or beyond f32 after scaling (the first, {:e}, at {:?}); \
                 such voxels are not CT",
                values[k],
                at(k)
            ),
        ));
    }
    Ok(())
}

impl Volume {
    /// Rejects a volume with voxels beyond ±[`HU_LIMIT`] HU, counting them:
    /// the rule for what is prepared for training or encoded.
    pub fn check_ct_range(&self) -> Result<()> {
        let out = |v: &f32| v.abs() > HU_LIMIT;
        let count = self.hu.iter().filter(|v| out(v)).count();
        if count == 0 {
            return Ok(());
        }
        let k = self.hu.iter().position(out).unwrap_or(0);
        let [_, h, w] = self.shape;
        Err(Error::format(
            &self.info.path,
            format!(
                "{count} voxel(s) lie beyond ±{HU_LIMIT} HU (the first, {:e}, at D, H, W = {:?}): the scaling \
                 (scl_slope, scl_inter) or the data is wrong; volumes with such values are rejected",
                self.hu[k],
                (k / (h * w), (k / w) % h, k % w)
            ),
        ))
    }
}

/// The other half of an Analyze-style pair: for a name ending in one of
/// `from`, the first existing file of the same stem ending in one of `to`
/// (else the stem, for the message); `None` for any other name.
fn partner(path: &Path, from: [&str; 2], to: [&str; 2]) -> Option<std::result::Result<PathBuf, String>> {
    let name = path.to_string_lossy().to_string();
    let lower = name.to_ascii_lowercase();
    let ext = from.iter().find(|e| lower.ends_with(*e))?;
    let stem = &name[..name.len() - ext.len()];
    Some(
        to.iter()
            .map(|t| PathBuf::from(format!("{stem}{t}")))
            .find(|p| p.exists())
            .ok_or_else(|| stem.to_string()),
    )
}

/// The header of a volume: the file itself, or the `.hdr` beside an `.img`
/// (either half of an Analyze-style pair opens the pair, as in nibabel).
fn header_file(path: &Path) -> Result<PathBuf> {
    match partner(path, [".img.gz", ".img"], [".hdr", ".hdr.gz"]) {
        None => Ok(path.to_path_buf()),
        Some(Ok(hdr)) => Ok(hdr),
        Some(Err(stem)) => Err(Error::format(
            path,
            format!("an .img holds only voxels; its header {stem}.hdr (or .hdr.gz) is not there"),
        )),
    }
}

/// A volume put in (D, H, W) order: shape, spacing (mm), HU, and the
/// stored axes that became D, H, W.
pub(super) type Oriented = ([usize; 3], [f32; 3], Vec<f32>, [usize; 3]);

/// The stored volume `values` (`dims`, first axis fastest) in HU, put in
/// (D, H, W) order by MODEL.md §2's rule from its voxel-to-world `affine`:
/// its shape, spacing (from the affine's columns, or `identity_spacing`
/// when there is no affine), voxels and the stored axes taken. `source`
/// names where the affine came from, for messages.
pub(super) fn orient(
    path: &Path,
    values: &[f64],
    dims: [usize; 3],
    affine: &[[f64; 4]; 3],
    identity_spacing: Option<[f32; 3]>,
    source: &str,
) -> Result<Oriented> {
    let order = orientation(affine);
    let col_norm = |j: usize| (0..3).map(|i| affine[i][j].powi(2)).sum::<f64>().sqrt();
    let spacing = order.map(|j| match identity_spacing {
        Some(p) => p[j],
        None => col_norm(j) as f32,
    });
    if let Some(a) = (0..3).find(|&a| !(spacing[a].is_finite() && spacing[a] > 0.0)) {
        return Err(Error::format(
            path,
            format!(
                "voxel spacing {spacing:?} ({source} affine): axis {a} is {}, not a positive size",
                spacing[a]
            ),
        ));
    }
    let [x, y, _] = dims;
    let strides = [1, x, x * y];
    let shape = order.map(|j| dims[j]);
    let mut hu = vec![0.0f32; values.len()];
    let mut k = 0;
    for d in 0..shape[0] {
        for r in 0..shape[1] {
            for c in 0..shape[2] {
                hu[k] = values[d * strides[order[0]] + r * strides[order[1]] + c * strides[order[2]]] as f32;
                k += 1;
            }
        }
    }
    Ok((shape, spacing, hu, order))
}

/// Where the voxel bytes live: the file itself, or the `.img` beside a `.hdr`.
fn data_file(path: &Path) -> Result<(PathBuf, bool)> {
    match partner(path, [".hdr.gz", ".hdr"], [".img", ".img.gz"]) {
        None => Ok((path.to_path_buf(), false)),
        Some(Ok(img)) => Ok((img, true)),
        Some(Err(stem)) => Err(Error::format(
            path,
            format!("no {stem}.img (or .img.gz) beside this header"),
        )),
    }
}

/// Reads `nbytes` of voxel data starting at `offset`, through gzip when the
/// file starts with its magic bytes.
fn read_raw(path: &Path, offset: usize, nbytes: usize) -> Result<Vec<u8>> {
    let mut file = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
    let mut magic = [0u8; 2];
    let gz = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let file = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
    let mut reader: Box<dyn Read> = if gz {
        Box::new(GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let short = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::format(
                path,
                format!("the header promises {nbytes} bytes of voxel data after byte {offset}; the file ends before (truncated?)"),
            )
        } else {
            Error::format(path, format!("cannot read the voxel data ({e})"))
        }
    };
    std::io::copy(&mut reader.by_ref().take(offset as u64), &mut std::io::sink()).map_err(short)?;
    let mut raw = Vec::new();
    raw.try_reserve_exact(nbytes)
        .map_err(|_| Error::format(path, format!("{nbytes} bytes of voxel data do not fit in memory")))?;
    raw.resize(nbytes, 0);
    reader.read_exact(&mut raw).map_err(short)?;
    Ok(raw)
}

/// A CT volume from a NIfTI file (either half of a pair); `read_volume`
/// (data/volume.rs) is the entry point that also takes DICOM folders.
pub(super) fn read_nifti(path: &Path) -> Result<Volume> {
    let header = header_file(path)?;
    let path = header.as_path();
    let h = &checked_header(path)?;
    let (dt_name, elem) = datatype_name(h.datatype).unwrap_or(("?", 1));
    let rank = h.dim[0] as usize;
    let stored_shape: Vec<usize> = (1..=rank).map(|i| h.dim[i] as usize).collect();
    let (x, y, z) = (stored_shape[0], stored_shape[1], stored_shape[2]);
    let mut warnings = Vec::new();
    if rank > 3 && stored_shape[3..].iter().product::<usize>() > 1 {
        warnings.push(format!("{rank}-D image {stored_shape:?}: using the first volume only"));
    }
    let n = x * y * z;
    // Reading holds the raw bytes, the scaled values (f64) and the HU
    // volume (f32) at once: known before the first allocation.
    let needs = (n as u64).saturating_mul(elem as u64 + 8 + 4);
    if let Some(avail) = crate::host::available_memory().filter(|&a| needs > a) {
        return Err(Error::format(
            path,
            format!(
                "a {x}×{y}×{z} volume needs about {} to read, {} available",
                crate::host::human_bytes(needs),
                crate::host::human_bytes(avail)
            ),
        ));
    }
    let (data_path, pair) = data_file(path)?;
    // A single file's data cannot start inside its own 348-byte header and
    // 4-byte extension flag.
    let vox_offset = h.vox_offset.max(0.0) as usize;
    let offset = if pair { vox_offset } else { vox_offset.max(352) };
    let raw = read_raw(&data_path, offset, n * elem)?;
    let big = h.endianness == Endianness::Big;
    let mut values = decode(&raw, h.datatype, big, n);
    let (slope, inter) = (h.scl_slope as f64, h.scl_inter as f64);
    // Slope 0 or not finite means "no scaling", the intercept included (as
    // nibabel reads it; tests/nifti_nibabel.rs holds us to that).
    let scaling = (slope != 0.0 && slope.is_finite()).then_some((slope, inter));
    if scaling.is_some() && !inter.is_finite() {
        return Err(Error::format(
            path,
            format!("scl_inter is {inter}; with scl_slope {slope} no voxel would be finite"),
        ));
    }
    if let Some((s, i)) = scaling {
        values.iter_mut().for_each(|v| *v = *v * s + i);
    }
    check_values(path, &values, [x, y])?;
    let (affine_source, affine) = affine_of(h);
    if let Some(bad) = affine.iter().flatten().find(|v| !v.is_finite()) {
        return Err(Error::format(
            path,
            format!(
                "the {} affine holds {bad}: its geometry is not a number",
                match affine_source {
                    AffineSource::Sform => "sform",
                    _ => "qform",
                }
            ),
        ));
    }
    let pixdim = [h.pixdim[1].abs(), h.pixdim[2].abs(), h.pixdim[3].abs()];
    let identity = (affine_source == AffineSource::Identity).then_some(pixdim);
    let source = match affine_source {
        AffineSource::Sform => "sform",
        AffineSource::Qform => "qform",
        _ => "pixdim, no",
    };
    let (shape, spacing, hu, order) = orient(path, &values, [x, y, z], &affine, identity, source)?;
    Ok(Volume {
        shape,
        spacing,
        hu,
        info: VolumeInfo {
            path: path.to_path_buf(),
            stored_shape,
            datatype: dt_name,
            big_endian: big,
            scaling,
            affine_source,
            affine,
            si_axis: order[0],
            axis_order: order,
            warnings,
        },
    })
}
