//! `IchsegResult`: the lesions found by one ichseg_segment() call.

use super::boundary::{arg, boundary, get, init_sized, out_param, FfiError, FfiResult, MAX_STRUCT_SIZE};
use super::engine::c_string;
use super::status::IchsegStatus;
use crate::clinical::{Findings, LesionFindings, Side};
use crate::lesions::Lesion;
use std::ffi::{c_char, CString};

/// The lesions of one segmentation (the mask and probabilities went to the caller's buffers).
///
/// Made by ichseg_segment(), freed with ichseg_result_free(). Immutable: any number of threads
/// may read one result at once, but none may use it while (or after) it is being freed.
pub struct IchsegResult {
    pub(crate) lesions: Vec<Lesion>,
    pub(crate) total_volume_ml: f64,
    pub(crate) findings: Findings,
    summary: CString,
    /// Why no midline was found; None when one was.
    midline_reason: Option<CString>,
}

impl IchsegResult {
    pub(crate) fn new(lesions: Vec<Lesion>, total_volume_ml: f64, findings: Findings) -> Self {
        let summary = c_string(&findings.summary);
        let midline_reason = findings.midline.reason.as_deref().map(c_string);
        IchsegResult { lesions, total_volume_ml, findings, summary, midline_reason }
    }
}

/// Side of a lesion relative to the midsagittal plane estimated from the skull's symmetry.
/// Left and right are the patient's, and need the volume's affine in RAS+
/// (IchsegVolumeDesc.affine); without one the side is ICHSEG_SIDE_UNKNOWN.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IchsegSide {
    /// No midline was found (ichseg_result_midline() says why) or the orientation is unknown.
    Unknown = 0,
    Left = 1,
    Right = 2,
    /// At least 10 % of the lesion's voxels lie on each side.
    Crossing = 3,
}

impl From<Side> for IchsegSide {
    fn from(s: Side) -> Self {
        match s {
            Side::Unknown => IchsegSide::Unknown,
            Side::Left => IchsegSide::Left,
            Side::Right => IchsegSide::Right,
            Side::Crossing => IchsegSide::Crossing,
        }
    }
}

/// IchsegLesionFindings.flags bit: the voxel-counted volume is >= 30 mL.
pub const ICHSEG_FINDING_GE_30_ML: u32 = 1;
/// IchsegLesionFindings.flags bit: the lesion lies within 1.5 mm (and at least one voxel) of
/// the skull, a hint that it may be extra-axial.
pub const ICHSEG_FINDING_TOUCHES_INNER_TABLE: u32 = 2;

/// The clinical findings of one lesion (docs/FINDINGS.md). A versioned struct: set
/// struct_size to sizeof(IchsegLesionFindings) before calling ichseg_result_lesion_findings();
/// fields may be appended in later versions, and a library fills no more than struct_size
/// bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IchsegLesionFindings {
    /// sizeof(IchsegLesionFindings) as the caller was compiled; set by the caller.
    pub struct_size: usize,
    /// ABC/2 volume estimate in mL: A x B x C / 2.
    pub abc2_ml: f64,
    /// A: largest diameter (mm) on the axial slice with the most lesion voxels.
    pub abc2_a_mm: f64,
    /// B: largest extent (mm) perpendicular to A on that slice.
    pub abc2_b_mm: f64,
    /// C: number of slices with the lesion times the slice spacing (mm).
    pub abc2_c_mm: f64,
    /// Mean HU over the lesion's voxels (from the input volume).
    pub mean_hu: f64,
    /// Median HU over the lesion's voxels.
    pub median_hu: f64,
    /// Largest HU over the lesion's voxels.
    pub max_hu: f64,
    /// Side relative to the midline.
    pub side: IchsegSide,
    /// ICHSEG_FINDING_* bits.
    pub flags: u32,
}

const LESION_FINDINGS_V1: usize = std::mem::size_of::<IchsegLesionFindings>();

impl From<&LesionFindings> for IchsegLesionFindings {
    fn from(f: &LesionFindings) -> Self {
        let mut flags = 0;
        if f.flags.ge_30_ml {
            flags |= ICHSEG_FINDING_GE_30_ML;
        }
        if f.flags.touches_inner_table {
            flags |= ICHSEG_FINDING_TOUCHES_INNER_TABLE;
        }
        IchsegLesionFindings {
            struct_size: LESION_FINDINGS_V1,
            abc2_ml: f.abc2_ml,
            abc2_a_mm: f.abc2.a_mm,
            abc2_b_mm: f.abc2.b_mm,
            abc2_c_mm: f.abc2.c_mm,
            mean_hu: f.density.mean_hu,
            median_hu: f.density.median_hu,
            max_hu: f.density.max_hu,
            side: f.side.into(),
            flags,
        }
    }
}

/// The midsagittal plane the sides refer to: the world points p (mm, RAS+) with
/// dot(normal, p) = offset_mm. A versioned struct like IchsegLesionFindings.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IchsegMidline {
    /// sizeof(IchsegMidline) as the caller was compiled; set by the caller.
    pub struct_size: usize,
    /// 1 when a plane was found; 0 when not (then every side is ICHSEG_SIDE_UNKNOWN and the
    /// geometry fields are 0).
    pub found: u32,
    /// Unit normal towards the patient's right.
    pub normal: [f64; 3],
    pub offset_mm: f64,
    /// The point of the plane nearest the world origin.
    pub point: [f64; 3],
    /// Fraction of the skull that the plane mirrors onto skull (0..1).
    pub score: f64,
    /// Why no plane was found (NUL-terminated, owned by the result, valid until it is freed);
    /// NULL when found.
    pub reason: *const c_char,
}

const MIDLINE_V1: usize = std::mem::size_of::<IchsegMidline>();

/// One lesion: a 3D connected component (26-connectivity) of the mask. Indices are voxel
/// indices (x, y, z) of the caller's volume, x fastest; bounding boxes are inclusive.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IchsegLesion {
    /// Number of voxels.
    pub voxels: u64,
    /// voxels times the voxel volume (spacing x * y * z in mm^3), in millilitres.
    pub volume_ml: f64,
    /// Smallest voxel index along x, y, z.
    pub bbox_min: [u64; 3],
    /// Largest voxel index along x, y, z (inclusive).
    pub bbox_max: [u64; 3],
    /// Mean voxel index (x, y, z).
    pub centroid_voxel: [f64; 3],
    /// centroid_voxel mapped through the volume's affine, in mm.
    pub centroid_world_mm: [f64; 3],
    /// First axial slice (z index) the lesion is on; equals `bbox_min[2]`.
    pub first_slice: u32,
    /// Last axial slice (z index) the lesion is on; equals `bbox_max[2]`.
    pub last_slice: u32,
}

impl From<&Lesion> for IchsegLesion {
    fn from(l: &Lesion) -> Self {
        let u = |v: usize| v as u64;
        IchsegLesion {
            voxels: u(l.voxels),
            volume_ml: l.volume_ml,
            bbox_min: l.bbox_min.map(u),
            bbox_max: l.bbox_max.map(u),
            centroid_voxel: l.centroid_voxel,
            centroid_world_mm: l.centroid_world_mm,
            // Slices fit: a volume holds at most 2^31 voxels.
            first_slice: u32::try_from(l.first_slice).unwrap_or(u32::MAX),
            last_slice: u32::try_from(l.last_slice).unwrap_or(u32::MAX),
        }
    }
}

/// The number of lesions in `*out` (0 when the mask is empty). Lesions are ordered largest
/// first (ties: by first voxel in x-fastest order). Thread-safe.
///
/// # Safety
/// `result` must be NULL or a live result; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_result_lesion_count(result: *const IchsegResult, out: *mut usize) -> IchsegStatus {
    // SAFETY: the caller's promises above.
    unsafe { get("ichseg_result_lesion_count", result, "result", out, |result| result.lesions.len()) }
}

/// The total volume of all lesions, in millilitres, in `*out`. Thread-safe.
///
/// # Safety
/// `result` must be NULL or a live result; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_result_total_volume_ml(result: *const IchsegResult, out: *mut f64) -> IchsegStatus {
    // SAFETY: the caller's promises above.
    unsafe { get("ichseg_result_total_volume_ml", result, "result", out, |result| result.total_volume_ml) }
}

/// Copies lesion number `index` (0-based, below ichseg_result_lesion_count()) into `*out`.
/// An index out of range gives ICHSEG_STATUS_INVALID_ARGUMENT and leaves `*out` untouched.
/// Thread-safe.
///
/// # Safety
/// `result` must be NULL or a live result; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_result_lesion(
    result: *const IchsegResult,
    index: usize,
    out: *mut IchsegLesion,
) -> IchsegStatus {
    boundary("ichseg_result_lesion", || -> FfiResult {
        let out = out_param(out, "out")?;
        // SAFETY (both blocks): the caller's promises above.
        let result = unsafe { arg(result, "result") }?;
        let lesion = result.lesions.get(index).ok_or_else(|| {
            FfiError::invalid(format!(
                "lesion index {index} is out of range: the result has {} lesion(s)",
                result.lesions.len()
            ))
        })?;
        unsafe { out.write(IchsegLesion::from(lesion)) };
        Ok(())
    })
}

/// Copies the clinical findings of lesion number `index` (0-based, below
/// ichseg_result_lesion_count()) into `*out`, whose struct_size the caller has set. A
/// struct_size below the first version's size (or above 4096), or an index out of range, gives
/// ICHSEG_STATUS_INVALID_ARGUMENT and leaves `*out` untouched. Thread-safe.
///
/// # Safety
/// `result` must be NULL or a live result; `out` NULL or valid for `out->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn ichseg_result_lesion_findings(
    result: *const IchsegResult,
    index: usize,
    out: *mut IchsegLesionFindings,
) -> IchsegStatus {
    boundary("ichseg_result_lesion_findings", || -> FfiResult {
        let out = out_param(out, "out")?;
        // SAFETY (all blocks): the caller's promises above.
        let result = unsafe { arg(result, "result") }?;
        let size = unsafe { caller_size(out.as_ptr(), LESION_FINDINGS_V1, "IchsegLesionFindings") }?;
        let f = result.findings.lesions.get(index).ok_or_else(|| {
            FfiError::invalid(format!(
                "lesion index {index} is out of range: the result has {} lesion(s)",
                result.findings.lesions.len()
            ))
        })?;
        unsafe { init_sized(out.as_ptr(), size, LESION_FINDINGS_V1, IchsegLesionFindings::from(f)) };
        Ok(())
    })
}

/// The sum of the lesions' ABC/2 estimates, in mL, in `*out`. Thread-safe.
///
/// # Safety
/// `result` must be NULL or a live result; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_result_total_abc2_ml(result: *const IchsegResult, out: *mut f64) -> IchsegStatus {
    // SAFETY: the caller's promises above.
    unsafe { get("ichseg_result_total_abc2_ml", result, "result", out, |r| r.findings.total_abc2_ml) }
}

/// A one-line summary in `*out`, e.g. "2 lesions, 34.2 mL total (ABC/2 31.0 mL), largest
/// 30.1 mL left, >= 30 mL", or "no hemorrhage found". The string (UTF-8, NUL-terminated)
/// belongs to the result: valid until ichseg_result_free(), never free it. Thread-safe.
///
/// # Safety
/// `result` must be NULL or a live result; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ichseg_result_summary(result: *const IchsegResult, out: *mut *const c_char) -> IchsegStatus {
    // SAFETY: the caller's promises above.
    unsafe { get("ichseg_result_summary", result, "result", out, |r| r.summary.as_ptr()) }
}

/// The midsagittal plane (or why none was found) in `*out`, whose struct_size the caller has
/// set (as for ichseg_result_lesion_findings()). Thread-safe.
///
/// # Safety
/// `result` must be NULL or a live result; `out` NULL or valid for `out->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn ichseg_result_midline(result: *const IchsegResult, out: *mut IchsegMidline) -> IchsegStatus {
    boundary("ichseg_result_midline", || -> FfiResult {
        let out = out_param(out, "out")?;
        // SAFETY (all blocks): the caller's promises above.
        let result = unsafe { arg(result, "result") }?;
        let size = unsafe { caller_size(out.as_ptr(), MIDLINE_V1, "IchsegMidline") }?;
        let m = &result.findings.midline;
        let value = IchsegMidline {
            struct_size: MIDLINE_V1,
            found: u32::from(m.found),
            normal: m.normal,
            offset_mm: m.offset_mm,
            point: m.point,
            score: m.score,
            reason: result.midline_reason.as_ref().map_or(std::ptr::null(), |r| r.as_ptr()),
        };
        unsafe { init_sized(out.as_ptr(), size, MIDLINE_V1, value) };
        Ok(())
    })
}

/// The struct_size the caller set in an output struct `what`: at least `v1`, at most
/// MAX_STRUCT_SIZE (larger is taken for an uninitialised field).
///
/// # Safety
/// `ptr` must be non-NULL and point to at least a readable `size_t`.
unsafe fn caller_size<S>(ptr: *const S, v1: usize, what: &str) -> FfiResult<usize> {
    // SAFETY: the struct starts with `size_t struct_size` (caller's promise).
    let size = unsafe { ptr.cast::<usize>().read_unaligned() };
    if size < v1 || size > MAX_STRUCT_SIZE {
        return Err(FfiError::invalid(format!(
            "{what}.struct_size is {size}: set it to sizeof({what}) (at least {v1}, at most {MAX_STRUCT_SIZE})"
        )));
    }
    Ok(size)
}

/// Frees a result. NULL is a no-op.
///
/// # Safety
/// `result` must be NULL or a pointer from ichseg_segment() not yet freed, and no other
/// thread may be using it.
#[no_mangle]
pub unsafe extern "C" fn ichseg_result_free(result: *mut IchsegResult) {
    boundary("ichseg_result_free", || {
        if !result.is_null() {
            // SAFETY: from Box::into_raw in ichseg_segment, freed once (caller's promise).
            drop(unsafe { Box::from_raw(result) });
        }
    })
}
