//! `manifest.json` of a cache folder: which volumes were prepared into which
//! files, for which split, and what failed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::write_atomic;

pub const MANIFEST: &str = "manifest.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Training,
    Validation,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub split: Split,
    pub image: String,
    pub label: Option<String>,
    /// The cache file, relative to the cache folder.
    pub file: String,
    pub shape: [usize; 3],
    pub spacing: [f32; 3],
    /// What was odd but not fatal (a 4-D file read as its first volume).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub image: String,
    pub error: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheManifest {
    pub entries: Vec<ManifestEntry>,
    pub failures: Vec<Failure>,
}

impl CacheManifest {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::io(
                &path,
                std::io::Error::new(e.kind(), format!("{e}; is this a folder made by `nemesis prepare`?")),
            )
        })?;
        serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("not a cache manifest ({e})")))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST);
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::format(&path, e.to_string()))?;
        write_atomic(&path, text.as_bytes())
    }

    /// Absolute paths of the cache files of one split.
    pub fn files(&self, dir: &Path, split: Split) -> Vec<PathBuf> {
        self.entries
            .iter()
            .filter(|e| e.split == split)
            .map(|e| dir.join(&e.file))
            .collect()
    }
}
