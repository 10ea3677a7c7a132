//! Dataset indexes: the public release's JSON, or a directory of volumes.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::superpatch_file::is_nifti_path;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub image: PathBuf,
    pub label: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatasetIndex {
    pub training: Vec<Entry>,
    pub validation: Vec<Entry>,
}

fn entries(path: &Path, base: &Path, v: &Value, key: &str) -> Result<Vec<Entry>> {
    let Some(list) = v.as_array() else {
        return Err(Error::format(path, format!("`{key}` must be a list")));
    };
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let resolve = |s: &str| {
                let p = PathBuf::from(s);
                if p.is_absolute() {
                    p
                } else {
                    base.join(p)
                }
            };
            match item {
                Value::String(s) => Ok(Entry {
                    image: resolve(s),
                    label: None,
                }),
                Value::Object(o) => {
                    let image = o
                        .get("image")
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| Error::format(path, format!("`{key}`[{i}] has no string `image`")))?;
                    let label = match o.get("label") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) => Some(resolve(s)),
                        Some(_) => return Err(Error::format(path, format!("`{key}`[{i}].label must be a string"))),
                    };
                    Ok(Entry {
                        image: resolve(image),
                        label,
                    })
                }
                _ => Err(Error::format(path, format!("`{key}`[{i}] must be an object or a path"))),
            }
        })
        .collect()
}

impl DatasetIndex {
    /// The public release's JSON: `{"training": [{"image", "label"}], "validation": [...]}`
    /// (or `train`/`val`); entries may also be bare paths. Relative paths are
    /// taken against the index's folder.
    pub fn from_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON ({e})")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let pick = |a: &'static str, b: &'static str| v.get(a).map(|x| (a, x)).or_else(|| v.get(b).map(|x| (b, x)));
        let training = match pick("training", "train") {
            Some((k, x)) => entries(path, base, x, k)?,
            None => return Err(Error::format(path, "no `training` (or `train`) list")),
        };
        let validation = match pick("validation", "val") {
            Some((k, x)) => entries(path, base, x, k)?,
            None => Vec::new(),
        };
        Ok(DatasetIndex { training, validation })
    }

    /// The dataset a folder holds: its `dataset.json` when it has one (as
    /// `nemesis synth` writes); else every NIfTI volume in it (not
    /// recursive), sorted by name; else, for a folder of DICOM series
    /// folders, each series; else the one series the folder itself holds.
    /// All for training.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("dataset.json");
        if index.is_file() {
            return Self::from_json(&index);
        }
        let has_nifti = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .any(|p| p.is_file() && is_nifti_path(&p));
        if !has_nifti {
            let mut series: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir() && super::is_dicom_folder(p))
                .collect();
            series.sort();
            if series.is_empty() && super::is_dicom_folder(dir) {
                series.push(dir.to_path_buf());
            }
            if !series.is_empty() {
                return Ok(DatasetIndex {
                    training: series.into_iter().map(|image| Entry { image, label: None }).collect(),
                    validation: Vec::new(),
                });
            }
        }
        let mut images: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_nifti_path(p) && !p.to_string_lossy().to_ascii_lowercase().ends_with(".img"))
            .collect();
        images.sort();
        if images.is_empty() {
            return Err(Error::format(
                dir,
                "holds no .nii, .nii.gz or .hdr volumes, no DICOM series (in it or in its subfolders) and no \
                 dataset.json (NIfTI volumes in subfolders are found through a dataset JSON)",
            ));
        }
        Ok(DatasetIndex {
            training: images.into_iter().map(|image| Entry { image, label: None }).collect(),
            validation: Vec::new(),
        })
    }
}
