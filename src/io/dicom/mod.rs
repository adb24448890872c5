//! DICOM in and out (feature `dicom`): a CT series read into the same [`Volume`] the NIfTI
//! reader makes, and a DICOM Segmentation object written for a mask on that series.
//! docs/DICOM.md says what is read, what is refused and why.

mod geometry;
mod pixels;
pub mod seg;
mod seg_read;
mod series;
mod uid;

pub use geometry::{ORIENTATION_TOLERANCE, SPACING_TOLERANCE, SPACING_TOLERANCE_MM, TILT_TOLERANCE_DEG};
pub use pixels::SUPPORTED_TRANSFER_SYNTAXES;
pub use seg_read::read_mask_on;
pub use series::SeriesSummary;

use crate::alloc::{self, MemoryLimit};
use crate::error::{Error, Result};
use crate::volume::{checked_voxel_count, Volume};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use ndarray::Array3;
use std::path::PathBuf;

/// How to read a series.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// The SeriesInstanceUID to read; `None` takes the CT series with the most slices.
    pub series_uid: Option<String>,
    /// Read a series whose modality is not CT (its values must be HU for the models to work).
    pub allow_non_ct: bool,
    /// Refuse a volume whose decoded voxels would exceed this.
    pub memory_limit: MemoryLimit,
}

/// One source image of a series, in the volume's slice order.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInstance {
    pub path: PathBuf,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// ImagePositionPatient, LPS mm.
    pub position: [f64; 3],
}

/// What a DICOM Segmentation needs of its source series: the instances it references, their
/// geometry, and the patient, study and frame-of-reference attributes it copies.
#[derive(Debug, Clone)]
pub struct SourceSeries {
    pub series_uid: String,
    /// Sorted along the slice normal: instance k is the volume's slice k.
    pub instances: Vec<SourceInstance>,
    /// Rows and columns of every slice.
    pub rows: usize,
    pub columns: usize,
    /// ImageOrientationPatient (row, then column cosines).
    pub orientation: [f64; 6],
    /// PixelSpacing (between rows, between columns), mm.
    pub pixel_spacing: [f64; 2],
    /// Distance between slice centres along the normal, mm.
    pub slice_spacing: f64,
    /// Patient, study and frame-of-reference elements of the first slice, copied into outputs.
    copied: Vec<InMemElement>,
}

/// A CT series read into a volume.
#[derive(Debug, Clone)]
pub struct DicomSeries {
    /// HU on the series' grid: x along rows' pixels (columns), y down the rows, z along the
    /// slice normal in increasing position; the affine maps to RAS as the NIfTI reader's does.
    pub volume: Volume,
    /// The series read.
    pub series: SeriesSummary,
    /// Every series found among the inputs.
    pub found: Vec<SeriesSummary>,
    /// What a DICOM-SEG of a mask on this volume references.
    pub source: SourceSeries,
}

/// The elements a derived object copies from its source: Patient, General Study and Frame of
/// Reference modules, and the character set their text is in.
const COPIED_TAGS: [dicom_core::Tag; 16] = [
    tags::SPECIFIC_CHARACTER_SET,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::PATIENT_AGE,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_ID,
    tags::ACCESSION_NUMBER,
    tags::STUDY_DESCRIPTION,
    tags::FRAME_OF_REFERENCE_UID,
    tags::POSITION_REFERENCE_INDICATOR,
];

/// The series among `inputs` (folders, searched recursively, or files).
pub fn list_series(inputs: &[PathBuf]) -> Result<Vec<SeriesSummary>> {
    Ok(series::scan(inputs)?.values().map(|s| series::summary(s)).collect())
}

/// Reads one series among `inputs` (folders, searched recursively, or files) into a volume.
pub fn read_series(inputs: &[PathBuf], options: &ReadOptions) -> Result<DicomSeries> {
    let found = series::scan(inputs)?;
    let slices = series::choose(&found, options.series_uid.as_deref(), options.allow_non_ct)?;
    let first = &slices[0];
    for s in &slices {
        if s.frames != 1 {
            return Err(Error::Unsupported(format!(
                "{}: a multi-frame image ({} frames); ichseg reads series of single-frame slices",
                s.path.display(),
                s.frames
            )));
        }
        if (s.rows, s.columns) != (first.rows, first.columns) {
            return Err(Error::image(
                &s.path,
                format!(
                    "mixed slice sizes: {}x{} here, {}x{} in {}",
                    s.columns,
                    s.rows,
                    first.columns,
                    first.rows,
                    first.path.display()
                ),
            ));
        }
        pixels::check_transfer_syntax(&s.path, &s.transfer_syntax)?;
    }
    let placements = slices.iter().map(|s| s.placement()).collect::<Result<Vec<_>>>()?;
    let grid = geometry::grid(&placements)?;

    let (nx, ny, nz) = (first.columns, first.rows, slices.len());
    let voxels = checked_voxel_count([nx, ny, nz])?;
    options.memory_limit.check(voxels.checked_mul(4), "the series' voxels")?;
    let mut values = alloc::try_vec(voxels, 0f32, "the series' voxels")?;
    for (k, &i) in grid.order.iter().enumerate() {
        pixels::decode_slice(&slices[i].path, ny, nx, &mut values[k * nx * ny..(k + 1) * nx * ny])?;
    }
    let data = Array3::from_shape_vec((nz, ny, nx), values).map_err(|e| Error::arg(e.to_string()))?;
    let volume = Volume::from_array(data, grid.spacing, Some(grid.affine_ras))?;

    let sorted_first = &slices[grid.order[0]];
    let header = series::open_header(&sorted_first.path)?;
    let copied = COPIED_TAGS.iter().filter_map(|&t| header.element_opt(t).ok().flatten().cloned()).collect();
    let source = SourceSeries {
        series_uid: first.series_uid.clone(),
        instances: grid
            .order
            .iter()
            .map(|&i| SourceInstance {
                path: slices[i].path.clone(),
                sop_class_uid: slices[i].sop_class_uid.clone(),
                sop_instance_uid: slices[i].sop_instance_uid.clone(),
                position: placements[i].position,
            })
            .collect(),
        rows: ny,
        columns: nx,
        orientation: placements[0].orientation,
        pixel_spacing: placements[0].pixel_spacing,
        slice_spacing: grid.spacing[2],
        copied,
    };
    Ok(DicomSeries {
        volume,
        series: series::summary(&slices),
        found: found.values().map(|s| series::summary(s)).collect(),
        source,
    })
}

/// Whether a path names DICOM input: a folder, or a file that starts like DICOM Part 10.
pub fn is_dicom_input(path: &std::path::Path) -> bool {
    path.is_dir() || (path.is_file() && series::is_dicom_file(path).unwrap_or(false))
}
