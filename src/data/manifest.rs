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

impl ManifestEntry {
    /// A shape of positive sides and a finite, positive spacing.
    pub fn is_sound(&self) -> bool {
        self.shape.iter().all(|&s| s > 0) && self.spacing.iter().all(|s| s.is_finite() && *s > 0.0)
    }
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
    /// Entries of the file that could not be read (never written back):
    /// the others are still served, and `prepare` again rebuilds them.
    #[serde(skip)]
    pub damaged: Vec<String>,
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
        let not_manifest = |why: String| {
            Error::format(
                &path,
                format!("not a cache manifest ({why}); run `nemesis prepare` again to rebuild it"),
            )
        };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| not_manifest(e.to_string()))?;
        let list = |key: &str| -> Result<Vec<serde_json::Value>> {
            match v.get(key) {
                Some(serde_json::Value::Array(a)) => Ok(a.clone()),
                None => Ok(Vec::new()),
                Some(_) => Err(not_manifest(format!("`{key}` is not a list"))),
            }
        };
        let (entries, failures) = (list("entries")?, list("failures")?);
        if v.get("entries").is_none() {
            return Err(not_manifest("no `entries`".into()));
        }
        let mut m = CacheManifest::default();
        for (i, e) in entries.into_iter().enumerate() {
            let image = e.get("image").and_then(|s| s.as_str()).unwrap_or("?").to_string();
            match serde_json::from_value::<ManifestEntry>(e) {
                Ok(entry) if entry.is_sound() => m.entries.push(entry),
                Ok(_) => m
                    .damaged
                    .push(format!("entry {i} ({image}): impossible shape or spacing")),
                Err(err) => m.damaged.push(format!("entry {i} ({image}): {err}")),
            }
        }
        m.failures = failures
            .into_iter()
            .filter_map(|f| serde_json::from_value(f).ok())
            .collect();
        Ok(m)
    }

    /// Writes the manifest atomically, after checking that what is written
    /// reads back as written (a value JSON cannot hold, such as NaN, would
    /// otherwise become `null` and spoil the whole cache).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST);
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::format(&path, e.to_string()))?;
        let back: std::result::Result<CacheManifest, _> = serde_json::from_str(&text);
        if back.as_ref().ok() != Some(self) || self.entries.iter().any(|e| !e.is_sound()) {
            let bad: Vec<&str> = self
                .entries
                .iter()
                .filter(|e| !e.is_sound())
                .map(|e| e.image.as_str())
                .collect();
            return Err(Error::format(
                &path,
                format!(
                    "refusing to write a manifest that would not read back (entries: {})",
                    bad.join(", ")
                ),
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(image: &str, spacing: f32) -> ManifestEntry {
        ManifestEntry {
            split: Split::Training,
            image: image.into(),
            label: None,
            file: format!("volumes/{image}.nmc"),
            shape: [4, 5, 6],
            spacing: [1.0, spacing, 1.0],
            warnings: vec![],
        }
    }

    #[test]
    fn a_damaged_entry_spoils_only_itself_and_nan_is_never_written() {
        let dir = std::env::temp_dir().join(format!("nemesis-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = CacheManifest {
            entries: vec![entry("a", 1.0), entry("b", 2.0)],
            ..Default::default()
        };
        m.save(&dir).unwrap();
        assert_eq!(CacheManifest::load(&dir).unwrap(), m);
        // One entry's spacing made `null`, as a NaN would have been written.
        let text = std::fs::read_to_string(dir.join(MANIFEST))
            .unwrap()
            .replacen("2.0", "null", 1);
        std::fs::write(dir.join(MANIFEST), text).unwrap();
        let back = CacheManifest::load(&dir).unwrap();
        assert_eq!(back.entries, vec![entry("a", 1.0)]);
        assert_eq!(back.damaged.len(), 1, "{:?}", back.damaged);
        assert!(back.damaged[0].contains("(b)"), "{:?}", back.damaged);
        let poisoned = CacheManifest {
            entries: vec![entry("a", 1.0), entry("c", f32::NAN)],
            ..Default::default()
        };
        let e = poisoned.save(&dir).unwrap_err().to_string();
        assert!(e.contains("would not read back") && e.contains('c'), "{e}");
        assert_eq!(
            CacheManifest::load(&dir).unwrap().entries.len(),
            1,
            "the file on disk is unchanged"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
