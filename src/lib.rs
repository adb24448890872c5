//! # libichseg
//!
//! Weakly supervised intracerebral-hemorrhage (ICH) segmentation for C/C++ medical software.
//! See the README for the overview and `include/ichseg.h` for the C ABI.

pub mod error;
pub mod io;
pub mod volume;

pub use error::{Error, Result};
pub use volume::{Volume, Window};
pub mod lesions;
pub mod metrics;
