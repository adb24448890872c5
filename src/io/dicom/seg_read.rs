//! Reading a DICOM Segmentation back onto a volume's grid (for `ichseg eval --pred seg.dcm`):
//! each frame is placed by its ImagePositionPatient and must fall exactly on one slice.

use super::series::{numbers, text, unsigned};
use crate::affine::WorldToVoxel;
use crate::error::{Error, Result};
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use ndarray::Array3;
use std::path::Path;

/// Largest distance, in voxels, between where a frame's pixels fall and the grid's voxels.
const GRID_TOLERANCE_VOXELS: f64 = 1e-3;

fn only_item(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<&InMemDicomObject> {
    obj.element_opt(tag).ok()??.items()?.first()
}

/// The SEG's first segment as a 0/1 mask on the grid `dims` (`[nx, ny, nz]`) with voxel-to-RAS
/// `affine`. FRACTIONAL values count as foreground from half the maximum up.
pub fn read_mask_on(path: &Path, dims: [usize; 3], affine: &[[f64; 4]; 4]) -> Result<Array3<u8>> {
    let file = OpenFileOptions::new()
        .open_file(path)
        .map_err(|e| Error::image(path, format!("unreadable DICOM file: {e}")))?;
    if text(&file, tags::SOP_CLASS_UID).as_deref() != Some(super::seg::SEGMENTATION_STORAGE) {
        return Err(Error::image(path, "not a DICOM Segmentation (SOP class 1.2.840.10008.5.1.4.1.1.66.4)"));
    }
    let rows = unsigned(&file, tags::ROWS, path, "Rows")?.ok_or_else(|| Error::image(path, "Rows is missing"))?;
    let cols =
        unsigned(&file, tags::COLUMNS, path, "Columns")?.ok_or_else(|| Error::image(path, "Columns is missing"))?;
    let frames = unsigned(&file, tags::NUMBER_OF_FRAMES, path, "NumberOfFrames")?.unwrap_or(1);
    let binary = text(&file, tags::SEGMENTATION_TYPE).as_deref() == Some("BINARY");
    let max_fraction = unsigned(&file, tags::MAXIMUM_FRACTIONAL_VALUE, path, "MaximumFractionalValue")?.unwrap_or(255);
    let [nx, ny, nz] = dims;
    if (cols, rows) != (nx, ny) {
        return Err(Error::image(path, format!("{cols}x{rows} frames, the grid's slices are {nx}x{ny}")));
    }
    let shared = only_item(&file, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let orientation = shared
        .and_then(|s| only_item(s, tags::PLANE_ORIENTATION_SEQUENCE))
        .and_then(|o| o.element_opt(tags::IMAGE_ORIENTATION_PATIENT).ok().flatten())
        .and_then(|e| e.to_multi_float64().ok())
        .ok_or_else(|| Error::image(path, "no shared PlaneOrientationSequence"))?;
    let spacing = shared
        .and_then(|s| only_item(s, tags::PIXEL_MEASURES_SEQUENCE))
        .and_then(|o| o.element_opt(tags::PIXEL_SPACING).ok().flatten())
        .and_then(|e| e.to_multi_float64().ok())
        .ok_or_else(|| Error::image(path, "no shared PixelMeasuresSequence"))?;
    if orientation.len() != 6 || spacing.len() != 2 {
        return Err(Error::image(path, "malformed ImageOrientationPatient or PixelSpacing"));
    }
    let per_frame = file
        .element_opt(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .ok_or_else(|| Error::image(path, "no PerFrameFunctionalGroupsSequence"))?;
    if per_frame.len() != frames {
        return Err(Error::image(path, format!("{} per-frame groups for {frames} frames", per_frame.len())));
    }
    let pixels = file
        .element(tags::PIXEL_DATA)
        .map_err(|_| Error::image(path, "no PixelData"))?
        .to_bytes()
        .map_err(|e| Error::image(path, format!("PixelData: {e}")))?;
    let per_frame_px = rows * cols;
    let needed = if binary { (per_frame_px * frames).div_ceil(8) } else { per_frame_px * frames };
    if pixels.len() < needed {
        return Err(Error::image(
            path,
            format!("PixelData holds {} bytes, {frames} frames need {needed}", pixels.len()),
        ));
    }
    let to_voxel = WorldToVoxel::of(affine).ok_or_else(|| Error::arg("the grid's affine is singular"))?;
    let mut mask = crate::alloc::try_array3((nz, ny, nx), 0u8, "the SEG's mask")?;
    for (f, group) in per_frame.iter().enumerate() {
        let position = only_item(group, tags::PLANE_POSITION_SEQUENCE)
            .map(|p| numbers::<3>(p, tags::IMAGE_POSITION_PATIENT, path, "ImagePositionPatient"))
            .transpose()?
            .flatten()
            .ok_or_else(|| Error::image(path, format!("frame {} has no ImagePositionPatient", f + 1)))?;
        // LPS world of pixel (column c, row r), then RAS, then the grid's voxel.
        let world = |c: f64, r: f64| {
            let lps: [f64; 3] = std::array::from_fn(|a| {
                position[a] + c * spacing[1] * orientation[a] + r * spacing[0] * orientation[3 + a]
            });
            to_voxel.apply([-lps[0], -lps[1], lps[2]])
        };
        let (o, x, y) = (world(0.0, 0.0), world(1.0, 0.0), world(0.0, 1.0));
        let k = o[2].round();
        let off_grid = [o, [x[0] - 1.0, x[1], x[2]], [y[0], y[1] - 1.0, y[2]]].iter().any(|v| {
            v[0].abs() > GRID_TOLERANCE_VOXELS
                || v[1].abs() > GRID_TOLERANCE_VOXELS
                || (v[2] - k).abs() > GRID_TOLERANCE_VOXELS
        });
        if off_grid || k < 0.0 || k >= nz as f64 {
            return Err(Error::image(
                path,
                format!("frame {} does not lie on a slice of the grid (it maps to voxel {o:?})", f + 1),
            ));
        }
        let k = k as usize;
        for i in 0..per_frame_px {
            let on = if binary {
                let bit = f * per_frame_px + i;
                pixels[bit / 8] >> (bit % 8) & 1 == 1
            } else {
                usize::from(pixels[f * per_frame_px + i]) * 2 >= max_fraction.max(1)
            };
            if on {
                mask[[k, i / cols, i % cols]] = 1;
            }
        }
    }
    Ok(mask)
}
