//! `ichseg_segment`: a caller's voxel buffer in, mask, probabilities and lesions out.

use super::boundary::{boundary, field, handle_out, struct_size, FfiError, FfiResult};
use super::model::IchsegModel;
use super::result::IchsegResult;
use super::status::IchsegStatus;
use crate::alloc::{try_with_capacity, MemoryLimit};
use crate::pipeline::options::Progress;
use crate::volume::{check_spacing, checked_voxel_count, Volume};
use ndarray::Array3;
use std::ffi::c_void;
use std::ptr::{addr_of, addr_of_mut};

/// The element type of a caller's voxel buffer (native byte order). Values start at 1 so that
/// a zero-filled IchsegVolumeDesc is refused instead of silently read as bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IchsegVoxelType {
    /// uint8_t
    U8 = 1,
    /// int16_t (the usual CT pixel type)
    I16 = 2,
    /// uint16_t
    U16 = 3,
    /// int32_t
    I32 = 4,
    /// float
    F32 = 5,
    /// double
    F64 = 6,
}

const _: () = assert!(std::mem::size_of::<IchsegVoxelType>() == std::mem::size_of::<u32>());

/// A CT volume in the caller's memory, described for ichseg_segment(). Fill with
/// ichseg_volume_desc_init() first, then set every field but the rescale pair (which defaults
/// to slope 1, intercept 0). The library only reads the voxels, during the call.
///
/// Voxel (x, y, z) is element `x + dims[0] * (y + dims[1] * z)` of `data`: x varies fastest,
/// z is the axial slice, as in NIfTI and in a stack of row-major axial images.
/// Hounsfield units are computed as value * rescale_slope + rescale_intercept (the DICOM
/// RescaleSlope / RescaleIntercept, or NIfTI scl_slope / scl_inter).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IchsegVolumeDesc {
    /// sizeof(IchsegVolumeDesc) as the caller was compiled; set by ichseg_volume_desc_init().
    pub struct_size: usize,
    /// The element type of `data`.
    pub voxel_type: IchsegVoxelType,
    /// `dims[0] * dims[1] * dims[2]` elements of voxel_type, x fastest. Any alignment.
    pub data: *const c_void,
    /// Voxels along x, y, z; each > 0, product at most 2^31.
    pub dims: [usize; 3],
    /// Voxel size along x, y, z in mm; finite and > 0. Lesion volumes use it.
    pub spacing: [f64; 3],
    /// NULL, or 16 doubles: the row-major 4x4 matrix mapping voxel (x, y, z, 1) to world mm in
    /// RAS+ (+x towards the patient's right, +y anterior, +z superior: the NIfTI sform/qform, or
    /// DICOM position and orientation with x and y negated). Used for the lesion centroids in
    /// world mm and for the lesions' sides. NULL means a scaling by the spacing and an unknown
    /// orientation: every side is then ICHSEG_SIDE_UNKNOWN.
    pub affine: *const f64,
    /// HU = value * rescale_slope + rescale_intercept; 0 is taken as 1. Must be finite.
    pub rescale_slope: f64,
    /// See rescale_slope. Must be finite.
    pub rescale_intercept: f64,
}

const VOLUME_DESC_V1: usize = std::mem::size_of::<IchsegVolumeDesc>();

/// Progress of ichseg_segment(): `done` of `total` axial slices are finished. Called on the
/// thread that called ichseg_segment(), after each batch of slices, with `done` increasing up
/// to `total`. Return nonzero to continue, 0 to cancel: the call then ends with
/// ICHSEG_STATUS_CANCELLED and writes nothing. `user_data` is passed through untouched.
/// The callback may call other ichseg_* functions, but must not free the model in use.
pub type IchsegProgressFn = Option<unsafe extern "C" fn(done: u32, total: u32, user_data: *mut c_void) -> i32>;

/// Fills `desc` for a new volume: every field zero or NULL except struct_size and
/// rescale_slope = 1. voxel_type, data, dims and spacing must then be set. Call it through the
/// macro ichseg_volume_desc_init(desc), which passes `size` = sizeof(IchsegVolumeDesc) of the
/// caller's header; see ichseg_engine_options_init_sized(). Does nothing when `desc` is NULL.
///
/// # Safety
/// A non-NULL `desc` must point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ichseg_volume_desc_init_sized(desc: *mut IchsegVolumeDesc, size: usize) {
    boundary("ichseg_volume_desc_init", || {
        if desc.is_null() || size < VOLUME_DESC_V1 {
            return;
        }
        let n = size.min(VOLUME_DESC_V1);
        // SAFETY: caller's promise for `size` >= `n` bytes. Raw writes only: voxel_type is left
        // as the integer 0, which Rust never reads as an IchsegVoxelType.
        unsafe {
            desc.cast::<u8>().write_bytes(0, n);
            addr_of_mut!((*desc).struct_size).write_unaligned(n);
            addr_of_mut!((*desc).rescale_slope).write_unaligned(1.0);
        }
    })
}

/// Segments a CT volume with `model`.
///
/// Inputs: `model` (not NULL), `volume` (not NULL; see IchsegVolumeDesc), `progress` (NULL for
/// none) and `user_data` (passed to it). Outputs, all written only on success:
/// - `mask`: `mask_len` bytes, required, mask_len == the number of voxels; 1 = hemorrhage,
///   0 = background, in the volume's x-fastest order;
/// - `probabilities`: NULL, or `probabilities_len` floats (== the number of voxels; pass 0 with
///   NULL) receiving the bleed probability in [0, 1] per voxel;
/// - `result`: NULL, or where a new IchsegResult (lesions, total volume) is stored; the caller
///   owns it and frees it with ichseg_result_free(). Set to NULL on failure.
///
/// Everything is checked before any work or any write: NULL pointers, struct_size, voxel type,
/// zero or overflowing dims (more than 2^31 voxels), buffer lengths (ICHSEG_STATUS_BUFFER_SIZE,
/// the message gives expected and actual), spacing, affine and rescale values that are not
/// finite, and voxels that are NaN or infinite after rescaling (ICHSEG_STATUS_NON_FINITE, the
/// message names the first). On any failure, cancellation included, `mask` and `probabilities`
/// are left exactly as they were: results are computed into library memory and copied at the end.
///
/// Threading: any number of threads may segment with the same model at once, each with its
/// own buffers. The call blocks until done; run it off a UI thread.
///
/// # Safety
/// Pointers must be NULL or valid: `model` a live model, `volume` readable for
/// `volume->struct_size` bytes, `volume->data` readable for the voxel count times the element
/// size, `volume->affine` NULL or 16 readable doubles, `mask` writable for `mask_len` bytes,
/// `probabilities` NULL or writable for `probabilities_len` floats, `result` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_segment(
    model: *const IchsegModel,
    volume: *const IchsegVolumeDesc,
    mask: *mut u8,
    mask_len: usize,
    probabilities: *mut f32,
    probabilities_len: usize,
    progress: IchsegProgressFn,
    user_data: *mut c_void,
    result: *mut *mut IchsegResult,
) -> IchsegStatus {
    boundary("ichseg_segment", || -> FfiResult {
        // SAFETY (all blocks): the caller's promises above.
        let result = if result.is_null() { None } else { Some(unsafe { handle_out(result, "result") }?) };
        let model = unsafe { model.as_ref() }.ok_or_else(|| FfiError::null("model"))?;
        if volume.is_null() {
            return Err(FfiError::null("volume"));
        }
        if mask.is_null() {
            return Err(FfiError::null("mask"));
        }
        let desc = unsafe { read_desc(volume) }?;
        let n = desc.voxels;
        check_len("mask", mask_len, n, desc.dims, "one byte per voxel")?;
        check_optional_len(
            "probabilities",
            probabilities.is_null(),
            probabilities_len,
            n,
            desc.dims,
            "one float per voxel",
        )?;
        let (segmenter, what) = (&model.segmenter, "segmenting this volume");
        let volume =
            unsafe { desc.volume_within(segmenter.engine().memory_limit(), segmenter.buffer_bytes(desc.dims), what) }?;
        let mut report = progress_adapter(progress, user_data);
        let seg = model.segmenter.segment_with_progress(&volume, &mut report)?;

        // Everything succeeded: only now write the caller's memory.
        let mask_values = seg.mask.as_standard_layout();
        let prob_values = seg.probability.as_standard_layout();
        let (Some(mask_values), Some(prob_values)) = (mask_values.as_slice(), prob_values.as_slice()) else {
            return Err(FfiError::new(IchsegStatus::Panic, "internal error: segmentation arrays are not contiguous"));
        };
        if mask_values.len() != n || prob_values.len() != n {
            return Err(FfiError::new(
                IchsegStatus::Panic,
                "internal error: segmentation has the wrong number of voxels",
            ));
        }
        let handle = IchsegResult::new(seg.lesions, seg.total_volume_ml, seg.findings);
        unsafe {
            std::ptr::copy_nonoverlapping(mask_values.as_ptr(), mask, n);
            if !probabilities.is_null() {
                // Byte copy: the caller's float buffer need not be aligned.
                std::ptr::copy_nonoverlapping(prob_values.as_ptr().cast::<u8>(), probabilities.cast::<u8>(), n * 4);
            }
            if let Some(result) = result {
                result.write(Box::into_raw(Box::new(handle)));
            }
        }
        Ok(())
    })
}

/// `len` must be `n` (the voxel count, or a multiple for several maps): else BUFFER_SIZE with
/// what was expected, e.g. "mask_len is 5 but the 4x4x1 volume has 16 voxels: the mask needs
/// one byte per voxel".
pub(crate) fn check_len(name: &str, len: usize, n: usize, dims: [usize; 3], needs: &str) -> FfiResult<()> {
    if len == n {
        return Ok(());
    }
    let [nx, ny, nz] = dims;
    let voxels = dims.iter().product::<usize>();
    Err(FfiError::new(
        IchsegStatus::BufferSize,
        format!(
            "{name}_len is {len} but the {nx}x{ny}x{nz} volume has {voxels} voxels: the {name} needs {needs}, {n} in all"
        ),
    ))
}

/// As [`check_len`] for an optional buffer: NULL with length 0, or non-NULL with the right length.
pub(crate) fn check_optional_len(
    name: &str,
    is_null: bool,
    len: usize,
    n: usize,
    dims: [usize; 3],
    needs: &str,
) -> FfiResult<()> {
    match (is_null, len) {
        (true, 0) => Ok(()),
        (true, len) => Err(FfiError::new(
            IchsegStatus::BufferSize,
            format!("{name} is NULL but {name}_len is {len}: pass 0 when you do not want {name}"),
        )),
        (false, len) => check_len(name, len, n, dims, needs),
    }
}

/// The C progress callback as the library's progress closure (no callback: never cancels).
pub(crate) fn progress_adapter(progress: IchsegProgressFn, user_data: *mut c_void) -> impl FnMut(Progress) -> bool {
    move |p: Progress| match progress {
        None => true,
        Some(callback) => {
            let clamp = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
            // SAFETY: the caller vouches for its callback and user_data for the call's duration.
            unsafe { callback(clamp(p.done), clamp(p.total), user_data) != 0 }
        }
    }
}

/// A caller's volume description, read and checked.
pub(crate) struct Desc {
    voxel_type: IchsegVoxelType,
    data: *const c_void,
    pub(crate) dims: [usize; 3],
    pub(crate) voxels: usize,
    spacing: [f64; 3],
    affine: Option<[[f64; 4]; 4]>,
    slope: f64,
    intercept: f64,
}

/// Reads and checks everything about the volume but its voxel values.
///
/// # Safety
/// `p` must be non-NULL and readable for `p->struct_size` bytes; a non-NULL `p->affine` must
/// point to 16 readable doubles.
pub(crate) unsafe fn read_desc(p: *const IchsegVolumeDesc) -> FfiResult<Desc> {
    // SAFETY: caller's promise; struct_size() checks the caller's struct covers v1 and field()
    // checks every field.
    let (size, raw_type, data, dims, spacing, affine, slope, intercept) = unsafe {
        let size = struct_size(p, VOLUME_DESC_V1, "IchsegVolumeDesc", "ichseg_volume_desc_init")?;
        (
            size,
            // Read as an integer: a C caller may store any value in an enum field.
            field(p, size, addr_of!((*p).voxel_type).cast::<u32>()),
            field(p, size, addr_of!((*p).data)),
            field(p, size, addr_of!((*p).dims)),
            field(p, size, addr_of!((*p).spacing)),
            field(p, size, addr_of!((*p).affine)),
            field(p, size, addr_of!((*p).rescale_slope)),
            field(p, size, addr_of!((*p).rescale_intercept)),
        )
    };
    let missing = || FfiError::invalid(format!("IchsegVolumeDesc.struct_size {size} is too small"));
    let voxel_type = match raw_type.ok_or_else(missing)? {
        1 => IchsegVoxelType::U8,
        2 => IchsegVoxelType::I16,
        3 => IchsegVoxelType::U16,
        4 => IchsegVoxelType::I32,
        5 => IchsegVoxelType::F32,
        6 => IchsegVoxelType::F64,
        other => {
            return Err(FfiError::invalid(format!(
                "volume->voxel_type is {other}, not one of the ICHSEG_VOXEL_TYPE_* values (U8 = 1 ... F64 = 6)"
            )))
        }
    };
    let dims = dims.ok_or_else(missing)?;
    let voxels = checked_voxel_count(dims)?;
    let data = data.ok_or_else(missing)?;
    if data.is_null() {
        return Err(FfiError::null("volume->data"));
    }
    let bytes = voxels.checked_mul(elem_size(voxel_type)).filter(|&b| b <= isize::MAX as usize);
    if bytes.is_none() {
        return Err(FfiError::invalid(format!(
            "a {}x{}x{} volume is larger than memory can hold",
            dims[0], dims[1], dims[2]
        )));
    }
    let spacing = spacing.ok_or_else(missing)?;
    check_spacing(spacing)?;
    let affine = match affine.ok_or_else(missing)? {
        a if a.is_null() => None,
        a => {
            let mut m = [[0.0; 4]; 4];
            for (i, v) in m.iter_mut().flatten().enumerate() {
                // SAFETY: a non-NULL affine points to 16 doubles (caller's promise).
                *v = unsafe { a.add(i).read_unaligned() };
                if !v.is_finite() {
                    return Err(FfiError::invalid(format!("volume->affine[{i}] is {v}: the affine must be finite")));
                }
            }
            Some(m)
        }
    };
    let slope = slope.ok_or_else(missing)?;
    let intercept = intercept.ok_or_else(missing)?;
    if !slope.is_finite() || !intercept.is_finite() {
        return Err(FfiError::invalid(format!(
            "volume->rescale_slope and rescale_intercept must be finite, got {slope} and {intercept}"
        )));
    }
    Ok(Desc {
        voxel_type,
        data,
        dims,
        voxels,
        spacing,
        affine,
        slope: if slope == 0.0 { 1.0 } else { slope },
        intercept,
    })
}

fn elem_size(t: IchsegVoxelType) -> usize {
    match t {
        IchsegVoxelType::U8 => 1,
        IchsegVoxelType::I16 | IchsegVoxelType::U16 => 2,
        IchsegVoxelType::I32 | IchsegVoxelType::F32 => 4,
        IchsegVoxelType::F64 => 8,
    }
}

impl Desc {
    /// [`Desc::volume`], refused first (ICHSEG_STATUS_OUT_OF_MEMORY, nothing allocated) when the
    /// HU copy plus `job_bytes`, what the job will allocate for the volume, exceed `limit`.
    ///
    /// # Safety
    /// As for [`Desc::volume`].
    pub(crate) unsafe fn volume_within(
        &self,
        limit: MemoryLimit,
        job_bytes: Option<usize>,
        what: &str,
    ) -> FfiResult<Volume> {
        let hu_bytes = self.voxels.checked_mul(4);
        limit.check(job_bytes.zip(hu_bytes).and_then(|(job, hu)| job.checked_add(hu)), what)?;
        // SAFETY: passed on to the caller.
        unsafe { self.volume() }
    }

    /// The volume in HU (NaN or infinite voxels refused by [`Volume`]).
    ///
    /// # Safety
    /// As for `to_hu`.
    unsafe fn volume(&self) -> FfiResult<Volume> {
        let [nx, ny, nz] = self.dims;
        // SAFETY: passed on to the caller.
        let hu = unsafe { self.to_hu() }?;
        let data = Array3::from_shape_vec((nz, ny, nx), hu).map_err(|e| FfiError::invalid(e.to_string()))?;
        Ok(Volume::from_array(data, self.spacing, self.affine)?)
    }

    /// The voxels in HU, as float32, x fastest (fallibly allocated: a volume too big for memory
    /// is ICHSEG_STATUS_OUT_OF_MEMORY).
    ///
    /// # Safety
    /// `data` must be readable for `voxels` elements of `voxel_type`.
    unsafe fn to_hu(&self) -> crate::Result<Vec<f32>> {
        /// `value * slope + intercept` in double precision, rounded once to float.
        ///
        /// # Safety
        /// As for `to_hu`.
        unsafe fn convert<T: Copy + Into<f64>>(
            data: *const c_void,
            n: usize,
            slope: f64,
            intercept: f64,
        ) -> crate::Result<Vec<f32>> {
            let data = data.cast::<T>();
            let mut out = try_with_capacity(n, "the volume in HU")?;
            // SAFETY: i < n elements are readable; unaligned reads accept any caller buffer.
            out.extend((0..n).map(|i| (unsafe { data.add(i).read_unaligned() }.into() * slope + intercept) as f32));
            Ok(out)
        }
        let (d, n, s, i) = (self.data, self.voxels, self.slope, self.intercept);
        // SAFETY: the caller's promise, passed on.
        unsafe {
            match self.voxel_type {
                IchsegVoxelType::U8 => convert::<u8>(d, n, s, i),
                IchsegVoxelType::I16 => convert::<i16>(d, n, s, i),
                IchsegVoxelType::U16 => convert::<u16>(d, n, s, i),
                IchsegVoxelType::I32 => convert::<i32>(d, n, s, i),
                IchsegVoxelType::F32 => convert::<f32>(d, n, s, i),
                IchsegVoxelType::F64 => convert::<f64>(d, n, s, i),
            }
        }
    }
}
