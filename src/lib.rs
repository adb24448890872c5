//! # libichseg
//!
//! Intracerebral-hemorrhage (ICH) segmentation of head CT for C/C++ medical software: ONNX
//! U-Nets, and weakly supervised pseudo-labelling from slice classifiers ([`PseudoLabeler`]), on
//! tract's CPU engine or CUDA, behind a stable C ABI (`include/ichseg.h`, module [`capi`]).
//!
//! Data flows one way: a [`Volume`] in Hounsfield units (from [`io::nifti`] or a caller buffer)
//! is windowed and resized slice by slice ([`preprocess`]), run through a network on an
//! [`Engine`] ([`model`]), mapped back to the native grid, thresholded, and split into
//! [`Lesion`]s ([`lesions`]); [`metrics`] scores masks as the paper does.
//!
//! ```
//! use ichseg::{Engine, EngineOptions, OnnxModel, Segmenter, SegmenterOptions};
//! # fn main() -> ichseg::Result<()> {
//! let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
//! let engine = Engine::new(&EngineOptions { threads: 1, ..Default::default() })?;
//! let model = OnnxModel::load(&root.join("tests/fixtures/unet/unet_transpose.onnx"))?;
//! let segmenter = Segmenter::new(&engine, model, &SegmenterOptions::default())?;
//! let scan = ichseg::io::nifti::read(&root.join("tests/fixtures/unet/ct_small.nii.gz"))?;
//! let result = segmenter.segment(&scan.volume)?;
//! assert_eq!(result.mask.dim(), scan.volume.data().dim());
//! println!("{} lesion(s), {:.2} mL", result.lesions.len(), result.total_volume_ml);
//! # Ok(()) }
//! ```

mod affine;
pub mod alloc;
mod allocator;
pub mod cam;
pub mod capi;
pub mod clinical;
pub mod crf;
pub mod error;
#[cfg(any(feature = "gpu", test))]
mod gpu;
mod hull;
pub mod io;
pub mod lesions;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod preprocess;
pub mod sca;
pub mod skull;
pub mod volume;

/// Large blocks with transparent huge pages (src/allocator.rs): the library's Rust code only.
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

pub use cam::CamMethod;
pub use error::{Error, Result};
pub use lesions::Lesion;
pub use model::runtime::{Device, Engine, EngineOptions};
pub use model::{ModelKind, ModelMetadata, OnnxModel};
pub use pipeline::options::ModelOverrides;
pub use pipeline::options::Progress;
pub use pipeline::pseudo::{PseudoLabel, PseudoLabeler, PseudoOptions};
pub use pipeline::segment::{Segmentation, Segmenter, SegmenterOptions};
pub use pipeline::tuned::{Preset, Tuned};
pub use volume::{Volume, Window};
