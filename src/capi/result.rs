//! `IchsegResult`: the lesions found by one ichseg_segment() call.

use super::boundary::{arg, boundary, get, out_param, FfiError, FfiResult};
use super::status::IchsegStatus;
use crate::lesions::Lesion;

/// The lesions of one segmentation (the mask and probabilities went to the caller's buffers).
///
/// Made by ichseg_segment(), freed with ichseg_result_free(). Immutable: any number of threads
/// may read one result at once, but none may use it while (or after) it is being freed.
pub struct IchsegResult {
    pub(crate) lesions: Vec<Lesion>,
    pub(crate) total_volume_ml: f64,
}

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
