//! The superpatch cache: one memory-mappable file per volume, written once by
//! `nemesis prepare`, read by the sampler without decompressing anything.
//!
//! Layout: `NMSCACHE` (8 bytes), format version (u32 LE), header length
//! (u32 LE), a JSON header, zero padding up to `data_offset` (a multiple of
//! 64), the HU volume as i16 LE (`D × H × W`, after MODEL.md §2's orientation), then
//! the label map as u8 when there is one.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::nifti::Volume;
use crate::error::{Error, Result};
use crate::io::write_atomic;

const MAGIC: &[u8; 8] = b"NMSCACHE";
const VERSION: u32 = 1;
const ALIGN: usize = 64;

#[cfg(not(target_endian = "little"))]
compile_error!("the cache stores i16 little-endian and maps it in place");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheHeader {
    pub shape: [usize; 3],
    pub spacing: [f32; 3],
    pub source: String,
    pub label_source: Option<String>,
    /// Size and modification time (seconds) of the source files when the
    /// cache was written: a changed source is prepared again.
    #[serde(default)]
    pub source_stamp: Vec<(u64, u64)>,
    pub has_label: bool,
    pub data_offset: usize,
    /// CRC-32 of the voxel bytes (HU, then labels).
    pub checksum: u32,
    pub hu_min: i16,
    pub hu_max: i16,
}

impl CacheHeader {
    fn voxels(&self) -> usize {
        self.shape.iter().product()
    }

    fn file_len(&self) -> usize {
        self.data_offset + self.voxels() * (2 + usize::from(self.has_label))
    }
}

/// `(size, mtime in seconds)` of a file, or zeros when unreadable.
pub fn file_stamp(path: &Path) -> (u64, u64) {
    // A DICOM series: its files' total size and latest change.
    if path.is_dir() {
        let files = std::fs::read_dir(path).into_iter().flatten().flatten();
        return files.fold((0, 0), |(size, time), e| {
            let (s, t) = file_stamp(&e.path());
            (size + s, time.max(t))
        });
    }
    std::fs::metadata(path)
        .map(|m| {
            let t = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            (m.len(), t)
        })
        .unwrap_or((0, 0))
}

/// Rounds HU to i16, saturating: CT values live well inside its range.
fn to_i16(v: f32) -> i16 {
    v.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

/// Writes `volume` (and its label map, which must have the same oriented
/// shape and hold whole numbers 0–255) to `path` atomically.
pub fn write_cache(path: &Path, volume: &Volume, label: Option<&Volume>) -> Result<CacheHeader> {
    let n = volume.hu.len();
    let hu: Vec<i16> = volume.hu.iter().map(|&v| to_i16(v)).collect();
    let labels = match label {
        None => None,
        Some(l) => {
            if l.shape != volume.shape {
                return Err(Error::format(
                    &l.info.path,
                    format!(
                        "label map has shape {:?} (D, H, W), its image {} has {:?}",
                        l.shape,
                        volume.info.path.display(),
                        volume.shape
                    ),
                ));
            }
            if let Some(k) =
                l.hu.iter()
                    .position(|&v| !(0.0..=255.0).contains(&v) || v.fract() != 0.0)
            {
                return Err(Error::format(
                    &l.info.path,
                    format!("label value {} at voxel {k} is not a whole number 0–255", l.hu[k]),
                ));
            }
            Some(l.hu.iter().map(|&v| v as u8).collect::<Vec<u8>>())
        }
    };
    let mut body: Vec<u8> = Vec::with_capacity(n * 3);
    body.extend(hu.iter().flat_map(|v| v.to_le_bytes()));
    if let Some(l) = &labels {
        body.extend_from_slice(l);
    }
    let mut header = CacheHeader {
        shape: volume.shape,
        spacing: volume.spacing,
        source: volume.info.path.display().to_string(),
        label_source: label.map(|l| l.info.path.display().to_string()),
        source_stamp: std::iter::once(volume.info.path.as_path())
            .chain(label.map(|l| l.info.path.as_path()))
            .map(file_stamp)
            .collect(),
        has_label: labels.is_some(),
        data_offset: 0,
        checksum: crc32fast::hash(&body),
        hu_min: hu.iter().copied().min().unwrap_or(0),
        hu_max: hu.iter().copied().max().unwrap_or(0),
    };
    // The offset depends on the header's own length; two passes settle it.
    for _ in 0..2 {
        let json_len = serde_json::to_vec(&header)
            .map_err(|e| Error::format(path, e.to_string()))?
            .len();
        header.data_offset = (16 + json_len).div_ceil(ALIGN) * ALIGN;
    }
    let json = serde_json::to_vec(&header).map_err(|e| Error::format(path, e.to_string()))?;
    let mut out = Vec::with_capacity(header.data_offset + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.resize(header.data_offset, 0);
    out.extend_from_slice(&body);
    write_atomic(path, &out)?;
    Ok(header)
}

/// A cached volume, memory-mapped.
pub struct CachedVolume {
    path: PathBuf,
    header: CacheHeader,
    map: Mmap,
}

impl CachedVolume {
    /// Opens and checks the layout (magic, version, header, size); the
    /// checksum is checked by `verify`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: cache files are written once, atomically, and never
        // modified in place; a concurrent writer would use a new file.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |why: &str| Error::format(path, format!("not a valid nemesis cache file: {why}"));
        if map.len() < 16 || &map[..8] != MAGIC {
            return Err(bad("wrong magic bytes"));
        }
        let version = u32::from_le_bytes([map[8], map[9], map[10], map[11]]);
        if version != VERSION {
            return Err(bad(&format!(
                "format version {version}, this build reads {VERSION}; run prepare again"
            )));
        }
        let len = u32::from_le_bytes([map[12], map[13], map[14], map[15]]) as usize;
        let json = map.get(16..16 + len).ok_or_else(|| bad("header runs past the end"))?;
        let header: CacheHeader = serde_json::from_slice(json).map_err(|e| bad(&format!("header ({e})")))?;
        if !header.data_offset.is_multiple_of(ALIGN) || header.data_offset < 16 + len {
            return Err(bad("misplaced voxel data"));
        }
        if map.len() != header.file_len() {
            return Err(bad(&format!(
                "{} bytes, the header needs {} (truncated?)",
                map.len(),
                header.file_len()
            )));
        }
        Ok(CachedVolume {
            path: path.to_path_buf(),
            header,
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &CacheHeader {
        &self.header
    }

    pub fn shape(&self) -> [usize; 3] {
        self.header.shape
    }

    /// HU voxels, `D × H × W`.
    pub fn hu(&self) -> &[i16] {
        let (o, n) = (self.header.data_offset, self.header.voxels());
        // The offset is a multiple of 64 from a page-aligned map, and the
        // length was checked on open, so the cast cannot fail.
        bytemuck::try_cast_slice(&self.map[o..o + 2 * n]).unwrap_or(&[])
    }

    pub fn labels(&self) -> Option<&[u8]> {
        let (o, n) = (self.header.data_offset, self.header.voxels());
        self.header.has_label.then(|| &self.map[o + 2 * n..o + 3 * n])
    }

    /// Recomputes the checksum of the voxel bytes.
    pub fn verify(&self) -> Result<()> {
        let got = crc32fast::hash(&self.map[self.header.data_offset..]);
        if got != self.header.checksum {
            return Err(Error::format(
                &self.path,
                format!(
                    "checksum {got:08x} differs from the header's {:08x}: the file is damaged",
                    self.header.checksum
                ),
            ));
        }
        Ok(())
    }
}
