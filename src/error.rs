//! The one error type of the engine. Every fallible path returns it; nothing
//! that a user can influence (shapes, files, flags) panics.

use std::fmt::Display;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two operands whose shapes do not fit together.
    #[error("{op}: shape mismatch: {lhs} and {rhs}: {why}")]
    ShapeMismatch {
        op: &'static str,
        lhs: String,
        rhs: String,
        why: String,
    },
    /// One operand whose shape is wrong on its own.
    #[error("{op}: bad shape {shape}: {why}")]
    BadShape {
        op: &'static str,
        shape: String,
        why: String,
    },
    #[error("{op}: dtype mismatch: {lhs} and {rhs}")]
    DTypeMismatch { op: &'static str, lhs: String, rhs: String },
    #[error("{op}: {why}")]
    InvalidArgument { op: &'static str, why: String },
    /// A device call that failed: the driver, a library, a kernel launch, a
    /// rule of the device broken (the emulator's checks).
    #[error("{device}: {call}: {why}")]
    Device { device: String, call: String, why: String },
    /// A device allocation that did not fit.
    #[error("{device}: out of memory: {asked} bytes asked for{}", free.map(|f| format!(", {f} free")).unwrap_or_default())]
    OutOfMemory {
        device: String,
        asked: usize,
        free: Option<usize>,
    },
    /// Work refused before allocating: its memory estimate exceeds what the
    /// host or the device has available.
    #[error("{0}")]
    WontFit(Box<WontFit>),
    #[error("autograd: {0}")]
    Autograd(String),
    /// A file that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file whose contents are not what they must be (format, names, shapes, dtypes).
    #[error("{path}: {why}")]
    Format { path: String, why: String },
    /// A model configuration that cannot work.
    #[error("config: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape_mismatch(op: &'static str, lhs: &impl Display, rhs: &impl Display, why: impl Into<String>) -> Self {
        Error::ShapeMismatch {
            op,
            lhs: lhs.to_string(),
            rhs: rhs.to_string(),
            why: why.into(),
        }
    }

    pub fn bad_shape(op: &'static str, shape: &impl Display, why: impl Into<String>) -> Self {
        Error::BadShape {
            op,
            shape: shape.to_string(),
            why: why.into(),
        }
    }

    pub fn dtype_mismatch(op: &'static str, lhs: impl std::fmt::Debug, rhs: impl std::fmt::Debug) -> Self {
        Error::DTypeMismatch {
            op,
            lhs: format!("{lhs:?}"),
            rhs: format!("{rhs:?}"),
        }
    }

    /// A failed device call: which device, which call, why.
    pub fn device(device: impl Into<String>, call: impl Into<String>, why: impl Display) -> Self {
        Error::Device {
            device: device.into(),
            call: call.into(),
            why: why.to_string(),
        }
    }

    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub fn format(path: &std::path::Path, why: impl Into<String>) -> Self {
        Error::Format {
            path: path.display().to_string(),
            why: why.into(),
        }
    }

    pub fn invalid(op: &'static str, why: impl Into<String>) -> Self {
        Error::InvalidArgument { op, why: why.into() }
    }
}

impl From<crate::picture::PictureError> for Error {
    fn from(e: crate::picture::PictureError) -> Self {
        match e {
            crate::picture::PictureError::Io { path, source } => Error::Io {
                path: path.display().to_string(),
                source,
            },
            crate::picture::PictureError::Invalid(why) => Error::invalid("picture", why),
        }
    }
}

/// What a refusal for memory says (boxed in [`Error::WontFit`] to keep
/// `Result` small).
#[derive(Debug)]
pub struct WontFit {
    pub place: String,
    pub what: String,
    pub needs: String,
    pub breakdown: String,
    pub available: String,
    pub hint: String,
}

impl std::fmt::Display for WontFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not enough memory on the {}: {} needs about {} ({}), {} available; {}",
            self.place, self.what, self.needs, self.breakdown, self.available, self.hint
        )
    }
}
