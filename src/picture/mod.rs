//! Pictures for humans: reconstruction panels (ours) and line charts
//! (training curves, ROC curves, through plotters), drawn into an RGB8
//! [`Canvas`] and written as PNG atomically. Text uses the font shipped in
//! fonts/, so a headless training machine needs no system fonts.
//!
//! The module reports failures through its own [`PictureError`] so that it
//! stays independent of the rest of the engine; callers map it into theirs.

mod canvas;
mod panels;
mod plot;
pub mod text;

use std::fmt;
use std::path::PathBuf;

pub use canvas::{Canvas, Rgb};
pub use panels::{grayscale_panels, Colormap, Panel};
pub use plot::{line_plot, Axis, PlotSpec, Series, PALETTE};

/// Why a picture could not be made or written.
#[derive(Debug)]
pub enum PictureError {
    /// Reading or writing a file failed.
    Io { path: PathBuf, source: std::io::Error },
    /// The caller asked for something that cannot be drawn (empty data,
    /// mismatched sizes, a degenerate value range, an absurd image size).
    Invalid(String),
}

impl PictureError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        PictureError::Invalid(message.into())
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PictureError::Io {
            path: path.into(),
            source,
        }
    }
}

impl fmt::Display for PictureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PictureError::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            PictureError::Invalid(message) => write!(f, "picture: {message}"),
        }
    }
}

impl std::error::Error for PictureError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PictureError::Io { source, .. } => Some(source),
            PictureError::Invalid(_) => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, PictureError>;
