//! The C ABI (version in ICHSEG_ABI_VERSION): the `extern "C"` surface of libichseg and nothing else.
//!
//! `include/ichseg.h` is generated from these files by cbindgen (config in `cbindgen.toml`);
//! `tests/c_abi.rs` fails when the committed header is stale and rewrites it when run with
//! `ICHSEG_UPDATE_HEADER=1`. The doc comments here are the header's comments, so they are
//! written for C programmers.
//!
//! How the files divide the work:
//! - `boundary.rs`: the one panic boundary every exported function runs inside, the
//!   thread-local last-error message, and the helpers that check pointer arguments and read
//!   caller structs that start with `struct_size`;
//! - `status.rs`: `IchsegStatus` and the one mapping from [`crate::Error`] to it;
//! - `engine.rs`, `model.rs`, `segment.rs`, `result.rs`, `pseudo.rs`: one opaque handle (or one
//!   call) each; `segment.rs` also holds the volume description and buffer checks both calls use.
//!
//! Rules kept throughout: every exported function body sits inside `boundary::boundary`;
//! every failure sets the last-error message; arguments are all validated before any caller
//! buffer is written; handle out-parameters are set to NULL on failure; no `unwrap`/`expect`.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![deny(unsafe_op_in_unsafe_fn)]

mod boundary;
#[cfg(feature = "dicom")]
mod dicom;
mod engine;
mod model;
mod pseudo;
mod result;
mod segment;
mod status;

pub use boundary::ichseg_last_error_message;
#[cfg(feature = "dicom")]
pub use dicom::*;
pub use engine::*;
pub use model::*;
pub use pseudo::*;
pub use result::*;
pub use segment::*;
pub use status::*;

use std::ffi::c_char;

/// Version of the C ABI described by this header. `ichseg_abi_version()` returns the
/// version of the library actually loaded; compare the two at start-up. Version 2: init
/// functions take the caller's struct size (the ichseg_*_init() macros pass it); the options
/// structs gained min_lesion_ml (and IchsegPseudoOptions the bone cut). Version 3:
/// ICHSEG_STATUS_OUT_OF_MEMORY and IchsegEngineOptions.memory_limit_mb; an operator without a
/// gradient rule is ICHSEG_STATUS_INVALID_MODEL (was UNSUPPORTED); option ranges are the
/// library's (pseudo threshold [0, 1], batch 1..=256; channels other than 0, 1, 3 are
/// INVALID_ARGUMENT); voxel spacing must be 0.001..=1000 mm. Version 4: DICOM (in builds with
/// it): IchsegSeries, ichseg_series_read() and its accessors, ichseg_seg_write(),
/// ichseg_seg_encode() and ichseg_bytes_free(); clinical findings of the lesions:
/// IchsegLesionFindings (ABC/2, HU density, side, flags) via ichseg_result_lesion_findings(),
/// IchsegMidline via ichseg_result_midline(), ichseg_result_total_abc2_ml() and
/// ichseg_result_summary(); IchsegVolumeDesc.affine is RAS+, and NULL means the side is unknown.
/// Version 5: IchsegPseudoOptions v4 leaves the threshold, the bone cut and the small-lesion
/// filter to the classifiers' tuned ichseg.pseudo.* metadata by default (threshold and
/// min_lesion_ml NaN, use_max_hu -1) and adds use_intracranial_mask, intracranial_margin_mm and
/// preset (IchsegPreset); IchsegSegmentOptions v3 adds use_intracranial_mask and
/// intracranial_margin_mm. Version 6: IchsegEngineOptions v4 adds low_memory. Version 7:
/// IchsegPseudoOptions v5 adds crf_confidence and crf_bilateral_compat, left to the
/// classifiers' ichseg.pseudo.* metadata by default (NaN). Version 8: IchsegSegmentOptions'
/// min_lesion_ml defaults to NaN, the model's tuned ichseg.segment.min_lesion_ml (else 0).
/// Version 9: IchsegPseudoOptions v6 adds use_min_hu and min_hu (the blood-density cut), left
/// to the classifiers' ichseg.pseudo.min_hu by default (-1).
pub const ICHSEG_ABI_VERSION: u32 = 9;

/// The C ABI version of the loaded library (9 for this header; see ICHSEG_ABI_VERSION).
///
/// Thread-safe; never fails.
#[no_mangle]
pub extern "C" fn ichseg_abi_version() -> u32 {
    boundary::boundary("ichseg_abi_version", || ICHSEG_ABI_VERSION)
}

/// The library version ("0.1.0"-style), as a NUL-terminated string.
///
/// The string is static: never free it. Thread-safe; never fails.
#[no_mangle]
pub extern "C" fn ichseg_version_string() -> *const c_char {
    boundary::boundary("ichseg_version_string", || VERSION.as_ptr())
}

static VERSION: &std::ffi::CStr =
    match std::ffi::CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => panic!("the crate version contains a NUL byte"),
    };

// Threading promises of the header, checked at compile time: engines and models may be used
// from several threads at once, results may be read from several threads at once.
const fn assert_send_sync<T: Send + Sync>() {}
const _: () = assert_send_sync::<std::sync::Arc<crate::Segmenter>>();
const _: () = assert_send_sync::<crate::Engine>();
const _: () = assert_send_sync::<IchsegEngine>();
const _: () = assert_send_sync::<IchsegModel>();
const _: () = assert_send_sync::<IchsegResult>();
#[cfg(feature = "dicom")]
const _: () = assert_send_sync::<IchsegSeries>();
