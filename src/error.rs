//! One error type for the whole library; the C ABI maps each variant to a status code.

use std::path::PathBuf;

/// Everything that can go wrong in libichseg.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller-supplied value is out of range or inconsistent (dimensions, options, lengths).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Reading or writing a file failed at the operating-system level.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A medical image file is malformed or uses a feature we do not read.
    #[error("{}: {reason}", path.display())]
    InvalidImage { path: PathBuf, reason: String },
    /// Voxel data contains NaN or infinity; we reject rather than guess a replacement.
    #[error("volume has {count} non-finite voxel(s) (NaN or Inf), first at voxel (x={}, y={}, z={}); fix or mask the input before segmenting", first[0], first[1], first[2])]
    NonFiniteVoxels { count: usize, first: [usize; 3] },
    /// The ONNX file cannot be parsed or does not have the shape libichseg needs.
    #[error("model: {0}")]
    InvalidModel(String),
    /// The network failed while running.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The GPU had no room for a network run: a smaller slice batch may fit. Segmentation and
    /// pseudo-labelling retry with half the batch by themselves before reporting this. The C
    /// ABI reports it as `ICHSEG_STATUS_INFERENCE`.
    #[error("out of GPU memory: {0}")]
    DeviceMemory(String),
    /// A buffer sized by the input could not be allocated, or would exceed the caller's
    /// memory limit ([`crate::alloc::MemoryLimit`]); nothing was written.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// A requested feature is not available in this build or on this machine.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The caller's progress callback asked to stop.
    #[error("cancelled by the caller")]
    Cancelled,
}

/// Shorthand used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O failure on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    /// A malformed image file.
    pub fn image(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::InvalidImage { path: path.into(), reason: reason.into() }
    }
    /// An invalid caller argument.
    pub fn arg(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}
