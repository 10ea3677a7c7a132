//! A CT volume from whatever a user points at: a NIfTI file (either half of
//! an Analyze-style pair, data/nifti.rs) or a folder holding one DICOM
//! series (data/dicom.rs). Both readers give the same `Volume`.

use std::path::Path;

use super::dicom::read_series;
use super::nifti::{read_nifti, Volume};
use crate::error::{Error, Result};

/// The volume at `path`: a DICOM series when it is a folder, else NIfTI.
pub fn read_volume(path: &Path) -> Result<Volume> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    if path.is_dir() {
        return read_series(path, None).map(|(v, _)| v);
    }
    read_nifti(path)
}
