//! `IchsegModel`: a loaded U-Net, ready to segment volumes.

use super::boundary::{arg, boundary, field, handle_out, init_sized, struct_size, FfiError, FfiResult};
use super::engine::IchsegEngine;
use super::status::IchsegStatus;
use crate::model::{ModelMetadata, OnnxModel};
use crate::pipeline::options::ModelOverrides;
use crate::pipeline::segment::{Segmenter, SegmenterOptions};
use crate::volume::Window;
use std::ffi::{c_char, CStr};
use std::path::PathBuf;
use std::ptr::addr_of;
use std::sync::Arc;

/// A segmentation model (an ONNX U-Net) bound to an engine, with its settings resolved.
///
/// Create with ichseg_model_load() or ichseg_model_load_from_memory(), free with
/// ichseg_model_free(). Thread-safe: any number of threads may call ichseg_segment() with the
/// same model at once (the calls run concurrently on the engine's worker threads).
pub struct IchsegModel {
    pub(crate) segmenter: Arc<Segmenter>,
}

/// Options for loading a segmentation model. Fill with ichseg_segment_options_init() first,
/// then change what you need; the "from model" defaults use the model's ichseg.* metadata,
/// then the library defaults (window level 50 / width 130 HU, input 384x384, 1 channel).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IchsegSegmentOptions {
    /// sizeof(IchsegSegmentOptions) as the caller was compiled; set by
    /// ichseg_segment_options_init(). Smaller than the v1 struct: ICHSEG_STATUS_INVALID_ARGUMENT.
    pub struct_size: usize,
    /// Bleed probability at or above which a voxel is hemorrhage, in [0, 1]; default 0.5.
    pub threshold: f32,
    /// Slices per network run, 1..=256; default 1 (fastest per slice on the CPU). Models whose
    /// batch dimension is fixed use that instead.
    pub batch: u32,
    /// Window level in HU; NaN (the default) = from the model.
    pub window_level: f32,
    /// Window width in HU, > 0; NaN (the default) = from the model.
    pub window_width: f32,
    /// Network input rows; 0 (the default) = from the model. Set both rows and cols or
    /// neither; at most 8192. Must agree with a model whose input size is fixed.
    pub input_rows: u32,
    /// Network input columns; 0 (the default) = from the model. See input_rows.
    pub input_cols: u32,
    /// Input channels, 1 or 3 (the slice repeated); 0 (the default) = from the model.
    pub channels: u32,
    /// (v2) Lesions (3D components) smaller than this many millilitres leave the mask before
    /// the lesion list; finite and >= 0 (0 keeps every lesion). Not in the paper. Default NaN
    /// (since ABI 8; a v1 struct reads as NaN): the model's tuned ichseg.segment.min_lesion_ml,
    /// else 0.
    pub min_lesion_ml: f64,
    /// (v3) Nonzero: the intracranial mask, not in the paper (docs/INTRACRANIAL.md): the
    /// probability and the mask are zeroed outside the skull's inside found in the CT, eroded
    /// by intracranial_margin_mm. Default 0 (off); v1 and v2 structs read as 0.
    pub use_intracranial_mask: i32,
    /// (v3) The intracranial mask's margin in mm, finite and >= 0; default 2.
    pub intracranial_margin_mm: f64,
}

/// The struct before `min_lesion_ml`: callers compiled against it still work.
const SEGMENT_OPTIONS_V1: usize = std::mem::offset_of!(IchsegSegmentOptions, min_lesion_ml);
const SEGMENT_OPTIONS_V3: usize = std::mem::size_of::<IchsegSegmentOptions>();

impl Default for IchsegSegmentOptions {
    fn default() -> Self {
        let d = SegmenterOptions::default();
        IchsegSegmentOptions {
            struct_size: SEGMENT_OPTIONS_V3,
            threshold: d.threshold,
            batch: u32::try_from(d.batch).unwrap_or(1),
            window_level: f32::NAN,
            window_width: f32::NAN,
            input_rows: 0,
            input_cols: 0,
            channels: 0,
            min_lesion_ml: f64::NAN,
            use_intracranial_mask: i32::from(d.intracranial_margin_mm.is_some()),
            intracranial_margin_mm: crate::skull::intracranial::DEFAULT_MARGIN_MM,
        }
    }
}

/// Reads the caller's options (NULL = defaults) and resolves them against the model's metadata.
///
/// # Safety
/// A non-NULL `opts` must point to at least `opts->struct_size` readable bytes.
unsafe fn segmenter_options(opts: *const IchsegSegmentOptions) -> FfiResult<CallerOptions> {
    let d = IchsegSegmentOptions::default();
    if opts.is_null() {
        return Ok(CallerOptions(d));
    }
    // SAFETY: non-NULL; struct_size() checks it covers v1 and field() checks every field.
    unsafe {
        let size = struct_size(opts, SEGMENT_OPTIONS_V1, "IchsegSegmentOptions", "ichseg_segment_options_init")?;
        Ok(CallerOptions(IchsegSegmentOptions {
            struct_size: size,
            threshold: field(opts, size, addr_of!((*opts).threshold)).unwrap_or(d.threshold),
            batch: field(opts, size, addr_of!((*opts).batch)).unwrap_or(d.batch),
            window_level: field(opts, size, addr_of!((*opts).window_level)).unwrap_or(d.window_level),
            window_width: field(opts, size, addr_of!((*opts).window_width)).unwrap_or(d.window_width),
            input_rows: field(opts, size, addr_of!((*opts).input_rows)).unwrap_or(d.input_rows),
            input_cols: field(opts, size, addr_of!((*opts).input_cols)).unwrap_or(d.input_cols),
            channels: field(opts, size, addr_of!((*opts).channels)).unwrap_or(d.channels),
            min_lesion_ml: field(opts, size, addr_of!((*opts).min_lesion_ml)).unwrap_or(d.min_lesion_ml),
            use_intracranial_mask: field(opts, size, addr_of!((*opts).use_intracranial_mask))
                .unwrap_or(d.use_intracranial_mask),
            intracranial_margin_mm: field(opts, size, addr_of!((*opts).intracranial_margin_mm))
                .unwrap_or(d.intracranial_margin_mm),
        }))
    }
}

/// The caller's options, read and copied (private so cbindgen does not export it).
struct CallerOptions(IchsegSegmentOptions);

impl CallerOptions {
    /// The library's options; the model's metadata fills a window half left as NaN.
    fn resolve(&self, metadata: &ModelMetadata) -> FfiResult<SegmenterOptions> {
        let o = &self.0;
        let window = match (o.window_level.is_nan(), o.window_width.is_nan()) {
            (true, true) => None,
            (level_nan, width_nan) => {
                let base = metadata.window.unwrap_or_default();
                Some(Window {
                    level: if level_nan { base.level } else { o.window_level },
                    width: if width_nan { base.width } else { o.window_width },
                })
            }
        };
        let input_size = match (o.input_rows, o.input_cols) {
            (0, 0) => None,
            (r, c) if r == 0 || c == 0 => {
                return Err(FfiError::invalid(format!(
                    "IchsegSegmentOptions.input_rows and input_cols must be set together (both 0 = from the model), \
                     got {r} and {c}"
                )))
            }
            (r, c) => Some((r as usize, c as usize)),
        };
        Ok(SegmenterOptions {
            threshold: o.threshold,
            batch: o.batch as usize,
            model: ModelOverrides {
                window,
                input_size,
                channels: (o.channels != 0).then_some(o.channels as usize),
                // not in the C options: from the model's metadata
                ..ModelOverrides::default()
            },
            min_lesion_ml: (!o.min_lesion_ml.is_nan()).then_some(o.min_lesion_ml),
            intracranial_margin_mm: (o.use_intracranial_mask != 0).then_some(o.intracranial_margin_mm),
        })
    }
}

/// Fills `opts` with the defaults (threshold 0.5, batch 1, window NaN/NaN, input 0x0 and
/// channels 0, i.e. from the model; min_lesion_ml NaN, i.e. the model's, else 0; intracranial mask off, margin 2 mm). Call it through the macro
/// ichseg_segment_options_init(opts), which passes `size` = sizeof(IchsegSegmentOptions) of the
/// caller's header; see ichseg_engine_options_init_sized(). Does nothing when `opts` is NULL.
///
/// # Safety
/// A non-NULL `opts` must point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ichseg_segment_options_init_sized(opts: *mut IchsegSegmentOptions, size: usize) {
    // SAFETY: caller's promise.
    boundary("ichseg_segment_options_init", || unsafe {
        init_sized(opts, size, SEGMENT_OPTIONS_V1, IchsegSegmentOptions::default())
    })
}

/// Loads an ONNX segmentation model from the file `path` (NUL-terminated; on POSIX any bytes,
/// elsewhere UTF-8) and prepares it to run on `engine`. `opts` may be NULL for the defaults.
/// On success `*out` receives a new model that the caller owns and frees with
/// ichseg_model_free(); on failure `*out` is set to NULL. The engine is not consumed and
/// may be freed before the model.
///
/// Errors: ICHSEG_STATUS_NULL_POINTER, ICHSEG_STATUS_IO (file missing or unreadable),
/// ICHSEG_STATUS_INVALID_MODEL (not ONNX, not a U-Net, options that contradict the model),
/// ICHSEG_STATUS_INVALID_ARGUMENT (bad option values or struct_size).
///
/// Thread-safe; slow (parses and optimises the network): load once, segment many times.
///
/// # Safety
/// `engine` must be NULL or a live engine, `path` NULL or a NUL-terminated string, `opts` NULL
/// or valid for `opts->struct_size` bytes, `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_model_load(
    engine: *const IchsegEngine,
    path: *const c_char,
    opts: *const IchsegSegmentOptions,
    out: *mut *mut IchsegModel,
) -> IchsegStatus {
    boundary("ichseg_model_load", || -> FfiResult {
        // SAFETY (all blocks): the caller's promises above.
        let out = unsafe { handle_out(out, "out") }?;
        let engine = unsafe { arg(engine, "engine") }?;
        let path = unsafe { arg(path, "path") }?;
        let path = path_from_c(unsafe { CStr::from_ptr(path) })?;
        let options = unsafe { segmenter_options(opts) }?;
        let model = OnnxModel::load(&path)?;
        let handle = new_model(engine, model, &options)?;
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// Like ichseg_model_load(), from the `len` bytes of an ONNX file at `bytes`. The library
/// copies what it needs: the buffer may be freed as soon as the call returns.
///
/// Errors: ICHSEG_STATUS_NULL_POINTER (`bytes` NULL even when `len` is 0),
/// ICHSEG_STATUS_INVALID_MODEL (the bytes are not a usable model), and those of
/// ichseg_model_load() except ICHSEG_STATUS_IO.
///
/// # Safety
/// `bytes` must be NULL or readable for `len` bytes; other pointers as for ichseg_model_load().
#[no_mangle]
pub unsafe extern "C" fn ichseg_model_load_from_memory(
    engine: *const IchsegEngine,
    bytes: *const u8,
    len: usize,
    opts: *const IchsegSegmentOptions,
    out: *mut *mut IchsegModel,
) -> IchsegStatus {
    boundary("ichseg_model_load_from_memory", || -> FfiResult {
        // SAFETY (all blocks): the caller's promises above.
        let out = unsafe { handle_out(out, "out") }?;
        let engine = unsafe { arg(engine, "engine") }?;
        if bytes.is_null() {
            return Err(FfiError::null("bytes"));
        }
        if len > isize::MAX as usize {
            return Err(FfiError::invalid(format!("len {len} is larger than any buffer can be")));
        }
        let options = unsafe { segmenter_options(opts) }?;
        let bytes = unsafe { std::slice::from_raw_parts(bytes, len) };
        let model = OnnxModel::from_bytes(bytes, "model in memory")?;
        let handle = new_model(engine, model, &options)?;
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// Frees a model. NULL is a no-op. Results made with the model stay valid. Do not free a
/// model while another thread is in ichseg_segment() with it.
///
/// # Safety
/// `model` must be NULL or a pointer from ichseg_model_load*() not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ichseg_model_free(model: *mut IchsegModel) {
    boundary("ichseg_model_free", || {
        if !model.is_null() {
            // SAFETY: from Box::into_raw in new_model, freed once (caller's promise).
            drop(unsafe { Box::from_raw(model) });
        }
    })
}

fn new_model(engine: &IchsegEngine, model: OnnxModel, options: &CallerOptions) -> FfiResult<*mut IchsegModel> {
    let options = options.resolve(&model.metadata)?;
    let segmenter = Segmenter::new(&engine.engine, model, &options)?;
    Ok(Box::into_raw(Box::new(IchsegModel { segmenter: Arc::new(segmenter) })))
}

#[cfg(unix)]
pub(crate) fn path_from_c(path: &CStr) -> FfiResult<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    Ok(std::ffi::OsStr::from_bytes(path.to_bytes()).into())
}

#[cfg(not(unix))]
pub(crate) fn path_from_c(path: &CStr) -> FfiResult<PathBuf> {
    path.to_str().map(PathBuf::from).map_err(|e| FfiError::invalid(format!("argument `path` is not valid UTF-8 ({e})")))
}
