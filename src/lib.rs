//! # libichseg
//!
//! Weakly supervised intracerebral-hemorrhage (ICH) segmentation for C/C++ medical software.
//! See the README for the overview and `include/ichseg.h` for the C ABI.

pub mod capi;
pub mod error;
pub mod io;
pub mod volume;

pub use error::{Error, Result};
pub use volume::{Volume, Window};
pub mod lesions;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod segment;

pub use lesions::Lesion;
pub use model::runtime::{Device, Engine, EngineOptions};
pub use model::{ModelKind, ModelMetadata, OnnxModel};
pub use segment::{Progress, Segmentation, Segmenter, SegmenterOptions};
