//! Pictures for humans: reconstruction panels and training curves, written as PNG.
//!
//! Everything is drawn by hand onto an RGB8 [`Canvas`] with a built-in bitmap
//! font, so the engine needs no font files, no system libraries and no crate
//! beyond `png` to produce readable figures on a headless training machine.
//!
//! The module reports failures through its own [`PictureError`] so that it
//! stays independent of the rest of the engine; callers map it into theirs.

mod canvas;
pub mod font;
mod panels;
mod plot;

use std::fmt;
use std::path::PathBuf;

pub use canvas::{Canvas, Rgb};
pub use panels::{grayscale_panels, Colormap, Panel};
pub use plot::{line_plot, nice_ticks, Axis, PlotSpec, Series, PALETTE};

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
