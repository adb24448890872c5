//! DICOM through the C ABI (ABI v4, builds with the `dicom` feature): a CT series read into a
//! library-owned handle that describes its volume for ichseg_segment() / ichseg_pseudo_label(),
//! and a DICOM Segmentation of a mask or probabilities written to a file or to memory.

use super::boundary::{arg, boundary, field, handle_out, init_sized, out_param, struct_size, FfiError, FfiResult};
use super::engine::c_string;
use super::model::path_from_c;
use super::segment::{check_len, IchsegVolumeDesc, IchsegVoxelType};
use super::status::IchsegStatus;
use crate::alloc::MemoryLimit;
use crate::io::dicom::{self, seg, SeriesSummary};
use ndarray::Array3;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;
use std::ptr::addr_of;

/// A CT series read by ichseg_series_read(): its voxels in HU on the series' grid, its
/// geometry, the series found beside it, and what a DICOM Segmentation of it references.
/// Freed with ichseg_series_free(). Immutable: any number of threads may read it at once.
pub struct IchsegSeries {
    series: dicom::DicomSeries,
    affine: [f64; 16],
    chosen: SeriesText,
    found: Vec<SeriesText>,
}

/// A series summary with its strings ready for C.
struct SeriesText {
    uid: CString,
    description: CString,
    modality: CString,
    slices: usize,
    rows: usize,
    columns: usize,
}

impl From<&SeriesSummary> for SeriesText {
    fn from(s: &SeriesSummary) -> Self {
        SeriesText {
            uid: c_string(&s.uid),
            description: c_string(&s.description),
            modality: c_string(&s.modality),
            slices: s.slices,
            rows: s.rows,
            columns: s.columns,
        }
    }
}

/// Options for ichseg_series_read(). Fill with ichseg_series_read_options_init() first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IchsegSeriesReadOptions {
    /// sizeof(IchsegSeriesReadOptions) as the caller was compiled; set by the init macro.
    pub struct_size: usize,
    /// NUL-terminated SeriesInstanceUID to read, or NULL (the default) for the CT series with
    /// the most slices. An unknown UID fails with ICHSEG_STATUS_INVALID_ARGUMENT and a message
    /// listing the series found.
    pub series_uid: *const c_char,
    /// Nonzero: read a series whose Modality is not CT (its values must be HU). Default 0.
    pub allow_non_ct: i32,
    /// Cap in MiB on the decoded voxels (4 bytes each); 0 (the default) = none.
    pub memory_limit_mb: u64,
}

impl Default for IchsegSeriesReadOptions {
    fn default() -> Self {
        IchsegSeriesReadOptions {
            struct_size: std::mem::size_of::<Self>(),
            series_uid: std::ptr::null(),
            allow_non_ct: 0,
            memory_limit_mb: 0,
        }
    }
}
const SERIES_READ_OPTIONS_V1: usize = std::mem::size_of::<IchsegSeriesReadOptions>();

/// One series: strings owned by the IchsegSeries they came from (valid until it is freed).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IchsegSeriesInfo {
    /// SeriesInstanceUID.
    pub uid: *const c_char,
    /// SeriesDescription, "" when absent.
    pub description: *const c_char,
    /// Modality, "" when absent.
    pub modality: *const c_char,
    /// Image files (slices) in the series.
    pub slices: usize,
    /// Rows and columns of its first slice.
    pub rows: usize,
    pub columns: usize,
}

/// Options for ichseg_seg_write() and ichseg_seg_encode(). Fill with ichseg_seg_options_init().
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IchsegSegOptions {
    /// sizeof(IchsegSegOptions) as the caller was compiled; set by the init macro.
    pub struct_size: usize,
    /// NUL-terminated name of the model that made the mask (in SegmentAlgorithmName), or NULL
    /// for "unet".
    pub algorithm_name: *const c_char,
    /// NUL-terminated description of the model's training data (its ichseg.trained_on), or NULL.
    pub trained_on: *const c_char,
}

impl Default for IchsegSegOptions {
    fn default() -> Self {
        IchsegSegOptions {
            struct_size: std::mem::size_of::<Self>(),
            algorithm_name: std::ptr::null(),
            trained_on: std::ptr::null(),
        }
    }
}
const SEG_OPTIONS_V1: usize = std::mem::size_of::<IchsegSegOptions>();

/// Fills `opts` with the defaults (no series chosen, CT only, no memory cap). Call it through
/// the macro ichseg_series_read_options_init(opts). Does nothing when `opts` is NULL.
///
/// # Safety
/// A non-NULL `opts` must point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ichseg_series_read_options_init_sized(opts: *mut IchsegSeriesReadOptions, size: usize) {
    // SAFETY: caller's promise.
    boundary("ichseg_series_read_options_init", || unsafe {
        init_sized(opts, size, SERIES_READ_OPTIONS_V1, IchsegSeriesReadOptions::default())
    })
}

/// Fills `opts` with the defaults (algorithm "unet", no training description). Call it through
/// the macro ichseg_seg_options_init(opts). Does nothing when `opts` is NULL.
///
/// # Safety
/// A non-NULL `opts` must point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ichseg_seg_options_init_sized(opts: *mut IchsegSegOptions, size: usize) {
    // SAFETY: caller's promise.
    boundary("ichseg_seg_options_init", || unsafe {
        init_sized(opts, size, SEG_OPTIONS_V1, IchsegSegOptions::default())
    })
}

/// A NUL-terminated C string argument that may be NULL, as UTF-8.
///
/// # Safety
/// `p` must be NULL or NUL-terminated.
unsafe fn optional_text(p: *const c_char, name: &str) -> FfiResult<Option<String>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: caller's promise.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map(|s| Some(s.to_string())).map_err(|_| FfiError::invalid(format!("`{name}` is not valid UTF-8")))
}

/// Reads one CT series from `n_paths` folders (searched recursively) or files: non-DICOM files
/// and objects without pixels are skipped; the slices are sorted by position along their normal
/// and must form one regular grid (docs/DICOM.md lists what is refused). On success `*out`
/// receives a new IchsegSeries the caller frees with ichseg_series_free(); on failure NULL.
///
/// Errors: ICHSEG_STATUS_NULL_POINTER (`paths`, one of its entries, or `out`),
/// ICHSEG_STATUS_INVALID_ARGUMENT (n_paths 0, bad options, unknown series_uid, no CT series),
/// ICHSEG_STATUS_IO (a path missing or unreadable), ICHSEG_STATUS_INVALID_IMAGE (no DICOM image
/// found, a damaged file, a gap, a duplicate, tilt, mixed sizes or orientations; the message
/// names the file), ICHSEG_STATUS_UNSUPPORTED (a transfer syntax ichseg does not decode, named),
/// ICHSEG_STATUS_OUT_OF_MEMORY (over memory_limit_mb, or refused by the system).
///
/// # Safety
/// `paths` must be NULL or hold `n_paths` pointers, each NULL or NUL-terminated; `opts` NULL or
/// valid for `opts->struct_size` bytes; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_series_read(
    paths: *const *const c_char,
    n_paths: usize,
    opts: *const IchsegSeriesReadOptions,
    out: *mut *mut IchsegSeries,
) -> IchsegStatus {
    boundary("ichseg_series_read", || -> FfiResult {
        // SAFETY (all blocks): the caller's promises above.
        let out = unsafe { handle_out(out, "out") }?;
        if n_paths == 0 {
            return Err(FfiError::invalid("n_paths is 0: give at least one folder or file"));
        }
        if paths.is_null() {
            return Err(FfiError::null("paths"));
        }
        let mut inputs = Vec::new();
        for i in 0..n_paths {
            let p = unsafe { paths.add(i).read() };
            let p = unsafe { arg(p, &format!("paths[{i}]")) }?;
            inputs.push(path_from_c(unsafe { CStr::from_ptr(p) })?);
        }
        let options = unsafe { read_options(opts) }?;
        let handle = IchsegSeries::read(&inputs, &options)?;
        unsafe { out.write(Box::into_raw(Box::new(handle))) };
        Ok(())
    })
}

/// # Safety
/// `opts` NULL or valid for its struct_size bytes.
unsafe fn read_options(opts: *const IchsegSeriesReadOptions) -> FfiResult<dicom::ReadOptions> {
    if opts.is_null() {
        return Ok(dicom::ReadOptions::default());
    }
    // SAFETY (all blocks): caller's promise.
    let size = unsafe {
        struct_size(opts, SERIES_READ_OPTIONS_V1, "IchsegSeriesReadOptions", "ichseg_series_read_options_init")
    }?;
    let uid_ptr = unsafe { field(opts, size, addr_of!((*opts).series_uid)) }.unwrap_or(std::ptr::null());
    let allow_non_ct = unsafe { field(opts, size, addr_of!((*opts).allow_non_ct)) }.unwrap_or(0) != 0;
    let mib = unsafe { field(opts, size, addr_of!((*opts).memory_limit_mb)) }.unwrap_or(0);
    let memory_limit =
        MemoryLimit::from_mib(mib).ok_or_else(|| FfiError::invalid(format!("memory_limit_mb {mib} is too large")))?;
    Ok(dicom::ReadOptions { series_uid: unsafe { optional_text(uid_ptr, "series_uid") }?, allow_non_ct, memory_limit })
}

impl IchsegSeries {
    fn read(inputs: &[PathBuf], options: &dicom::ReadOptions) -> FfiResult<Self> {
        let series = dicom::read_series(inputs, options)?;
        let a = series.volume.affine();
        let affine = std::array::from_fn(|i| a[i / 4][i % 4]);
        Ok(IchsegSeries {
            chosen: SeriesText::from(&series.series),
            found: series.found.iter().map(SeriesText::from).collect(),
            affine,
            series,
        })
    }
}

/// Frees a series from ichseg_series_read(). NULL is a no-op. Volume descriptions filled from
/// it and strings read from it become invalid.
///
/// # Safety
/// `series` must be NULL or a pointer from ichseg_series_read() not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ichseg_series_free(series: *mut IchsegSeries) {
    boundary("ichseg_series_free", || {
        if !series.is_null() {
            // SAFETY: caller's promise: from Box::into_raw in ichseg_series_read.
            drop(unsafe { Box::from_raw(series) });
        }
    })
}

fn info(s: &SeriesText) -> IchsegSeriesInfo {
    IchsegSeriesInfo {
        uid: s.uid.as_ptr(),
        description: s.description.as_ptr(),
        modality: s.modality.as_ptr(),
        slices: s.slices,
        rows: s.rows,
        columns: s.columns,
    }
}

/// Describes the series' volume in `*desc` for ichseg_segment() or ichseg_pseudo_label():
/// float HU (rescale already applied: slope 1, intercept 0), dims (columns, rows, slices in
/// increasing position along the slice normal), spacing in mm and the voxel-to-RAS affine (as a
/// NIfTI of the same series has it). `desc` must have been filled by ichseg_volume_desc_init();
/// its data and affine pointers point into `series` and stay valid until it is freed.
///
/// # Safety
/// `series` NULL or live; `desc` NULL or valid for `desc->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn ichseg_series_volume(
    series: *const IchsegSeries,
    desc: *mut IchsegVolumeDesc,
) -> IchsegStatus {
    boundary("ichseg_series_volume", || -> FfiResult {
        // SAFETY (all blocks): the caller's promises above.
        let series = unsafe { arg(series, "series") }?;
        let desc = out_param(desc, "desc")?;
        let size = unsafe {
            struct_size(
                desc.as_ptr(),
                std::mem::size_of::<IchsegVolumeDesc>(),
                "IchsegVolumeDesc",
                "ichseg_volume_desc_init",
            )
        }?;
        let volume = &series.series.volume;
        // The reader builds the volume in standard (x-fastest) layout.
        let data = volume
            .data()
            .as_slice()
            .ok_or_else(|| FfiError::new(IchsegStatus::Panic, "internal error: volume not contiguous"))?;
        let filled = IchsegVolumeDesc {
            struct_size: size.min(std::mem::size_of::<IchsegVolumeDesc>()),
            voxel_type: IchsegVoxelType::F32,
            data: data.as_ptr().cast::<c_void>(),
            dims: volume.dims(),
            spacing: volume.spacing(),
            affine: series.affine.as_ptr(),
            rescale_slope: 1.0,
            rescale_intercept: 0.0,
        };
        unsafe { desc.as_ptr().write_unaligned(filled) };
        Ok(())
    })
}

/// The series read: `*out` receives its UID, description, modality, slice count and size.
///
/// # Safety
/// `series` NULL or live; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_series_info(series: *const IchsegSeries, out: *mut IchsegSeriesInfo) -> IchsegStatus {
    // SAFETY: the caller's promises.
    unsafe { super::boundary::get("ichseg_series_info", series, "series", out, |s| info(&s.chosen)) }
}

/// How many series the inputs held (the one read among them).
///
/// # Safety
/// `series` NULL or live; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_series_found_count(series: *const IchsegSeries, out: *mut usize) -> IchsegStatus {
    // SAFETY: the caller's promises.
    unsafe { super::boundary::get("ichseg_series_found_count", series, "series", out, |s| s.found.len()) }
}

/// The `index`-th series the inputs held (in UID order); ICHSEG_STATUS_INVALID_ARGUMENT when
/// `index` >= ichseg_series_found_count().
///
/// # Safety
/// `series` NULL or live; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_series_found(
    series: *const IchsegSeries,
    index: usize,
    out: *mut IchsegSeriesInfo,
) -> IchsegStatus {
    boundary("ichseg_series_found", || -> FfiResult {
        let out = out_param(out, "out")?;
        // SAFETY: the caller's promises.
        let series = unsafe { arg(series, "series") }?;
        let found = series.found.get(index).ok_or_else(|| {
            FfiError::invalid(format!("index {index} is past the {} series found", series.found.len()))
        })?;
        // SAFETY: checked non-NULL, writable by the caller's promise.
        unsafe { out.write(info(found)) };
        Ok(())
    })
}

/// The Segmentation for a mask or probabilities on the series' grid, as file bytes.
///
/// # Safety
/// As for ichseg_seg_write().
unsafe fn encode(
    series: *const IchsegSeries,
    mask: *const u8,
    probabilities: *const f32,
    len: usize,
    opts: *const IchsegSegOptions,
) -> FfiResult<Vec<u8>> {
    // SAFETY (all blocks): the caller's promises.
    let series = unsafe { arg(series, "series") }?;
    let dims = series.series.volume.dims();
    let n = series.series.volume.data().len();
    let shape = (dims[2], dims[1], dims[0]);
    let algorithm = unsafe { seg_options(opts) }?;
    let bytes = match (mask.is_null(), probabilities.is_null()) {
        (false, true) => {
            check_len("mask", len, n, dims, "one byte per voxel")?;
            let values = unsafe { std::slice::from_raw_parts(mask, n) };
            let mut copy = crate::alloc::try_with_capacity(n, "the mask")?;
            copy.extend(values.iter().map(|&v| u8::from(v != 0)));
            let mask = Array3::from_shape_vec(shape, copy).map_err(|e| FfiError::invalid(e.to_string()))?;
            seg::to_bytes(&series.series.source, seg::Content::Binary(&mask), &algorithm)?
        }
        (true, false) => {
            check_len("probabilities", len, n, dims, "one float per voxel")?;
            let values = unsafe { std::slice::from_raw_parts(probabilities, n) };
            let mut copy = crate::alloc::try_with_capacity(n, "the probabilities")?;
            copy.extend_from_slice(values);
            let prob = Array3::from_shape_vec(shape, copy).map_err(|e| FfiError::invalid(e.to_string()))?;
            seg::to_bytes(&series.series.source, seg::Content::Fractional(&prob), &algorithm)?
        }
        (true, true) => return Err(FfiError::null("mask")),
        (false, false) => return Err(FfiError::invalid("give either `mask` or `probabilities`, not both")),
    };
    Ok(bytes)
}

/// # Safety
/// `opts` NULL or valid for its struct_size bytes, its strings NULL or NUL-terminated.
unsafe fn seg_options(opts: *const IchsegSegOptions) -> FfiResult<seg::Algorithm> {
    let mut algorithm = seg::Algorithm { name: "unet".into(), trained_on: None };
    if opts.is_null() {
        return Ok(algorithm);
    }
    // SAFETY (all blocks): caller's promise.
    let size = unsafe { struct_size(opts, SEG_OPTIONS_V1, "IchsegSegOptions", "ichseg_seg_options_init") }?;
    let name = unsafe { field(opts, size, addr_of!((*opts).algorithm_name)) }.unwrap_or(std::ptr::null());
    let trained = unsafe { field(opts, size, addr_of!((*opts).trained_on)) }.unwrap_or(std::ptr::null());
    if let Some(n) = unsafe { optional_text(name, "algorithm_name") }? {
        algorithm.name = n;
    }
    algorithm.trained_on = unsafe { optional_text(trained, "trained_on") }?;
    Ok(algorithm)
}

/// Writes a DICOM Segmentation of the series to `path`: a BINARY one of `mask` (`len` bytes,
/// nonzero = hemorrhage) or, with `mask` NULL, a FRACTIONAL one of `probabilities` (`len`
/// floats in [0, 1]); voxels in the order ichseg_series_volume() describes, `len` == their
/// count. One segment "Hemorrhage" (SNOMED CT), frames for the slices with foreground,
/// referencing the source instances, patient and study copied (docs/DICOM.md). The file
/// appears whole or not at all.
///
/// Errors: ICHSEG_STATUS_NULL_POINTER, ICHSEG_STATUS_BUFFER_SIZE (`len`),
/// ICHSEG_STATUS_INVALID_ARGUMENT (both buffers given, probabilities outside [0, 1], bad
/// options), ICHSEG_STATUS_IO (the file cannot be written).
///
/// # Safety
/// `series` NULL or live; `mask` NULL or readable for `len` bytes; `probabilities` NULL or
/// readable for `len` floats; `opts` NULL or valid; `path` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ichseg_seg_write(
    series: *const IchsegSeries,
    mask: *const u8,
    probabilities: *const f32,
    len: usize,
    opts: *const IchsegSegOptions,
    path: *const c_char,
) -> IchsegStatus {
    boundary("ichseg_seg_write", || -> FfiResult {
        // SAFETY (all blocks): the caller's promises above.
        let path = unsafe { arg(path, "path") }?;
        let path = path_from_c(unsafe { CStr::from_ptr(path) })?;
        let bytes = unsafe { encode(series, mask, probabilities, len, opts) }?;
        crate::io::atomic::write_atomic(&path, |w| w.write_all(&bytes).map_err(|e| crate::Error::io(&path, e)))?;
        Ok(())
    })
}

/// Like ichseg_seg_write(), into memory (what a PACS plugin stores): on success `*out` receives
/// a library-allocated buffer of `*out_len` bytes (a whole DICOM file) that the caller frees
/// with ichseg_bytes_free(*out, *out_len). On failure `*out` is NULL and `*out_len` 0.
///
/// # Safety
/// As for ichseg_seg_write(); `out` and `out_len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_seg_encode(
    series: *const IchsegSeries,
    mask: *const u8,
    probabilities: *const f32,
    len: usize,
    opts: *const IchsegSegOptions,
    out: *mut *mut u8,
    out_len: *mut usize,
) -> IchsegStatus {
    boundary("ichseg_seg_encode", || -> FfiResult {
        // SAFETY (all blocks): the caller's promises above.
        let out = unsafe { handle_out(out, "out") }?;
        let out_len = out_param(out_len, "out_len")?;
        unsafe { out_len.write(0) };
        let bytes = unsafe { encode(series, mask, probabilities, len, opts) }?.into_boxed_slice();
        let n = bytes.len();
        unsafe {
            out.write(Box::into_raw(bytes).cast::<u8>());
            out_len.write(n);
        }
        Ok(())
    })
}

/// Frees a buffer from ichseg_seg_encode(), given the length it came with. NULL is a no-op.
///
/// # Safety
/// `bytes` must be NULL or a buffer from ichseg_seg_encode() with that `len`, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ichseg_bytes_free(bytes: *mut u8, len: usize) {
    boundary("ichseg_bytes_free", || {
        if !bytes.is_null() {
            // SAFETY: caller's promise: from Box<[u8]>::into_raw of `len` bytes.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(bytes, len)) });
        }
    })
}
