//! Finding the series among a folder's files: which files are DICOM images, what each slice's
//! header says, and which series the caller gets.

use super::geometry::SlicePlacement;
use crate::error::{Error, Result};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One series found among the inputs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SeriesSummary {
    /// SeriesInstanceUID.
    pub uid: String,
    /// SeriesDescription ("" when absent).
    pub description: String,
    /// Modality ("" when absent).
    pub modality: String,
    /// Number of image files (slices) in it.
    pub slices: usize,
    /// Rows x columns of its first slice.
    pub rows: usize,
    pub columns: usize,
}

impl std::fmt::Display for SeriesSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let description = if self.description.is_empty() { "no description" } else { &self.description };
        write!(
            f,
            "{} ({}, {}, {} slices of {}x{})",
            self.uid,
            description,
            if self.modality.is_empty() { "no modality" } else { &self.modality },
            self.slices,
            self.columns,
            self.rows
        )
    }
}

/// What the reader keeps of one image file's header.
#[derive(Debug, Clone)]
pub(crate) struct SliceHeader {
    pub path: PathBuf,
    pub series_uid: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub modality: String,
    pub description: String,
    pub rows: usize,
    pub columns: usize,
    pub frames: usize,
    pub position: Option<[f64; 3]>,
    pub orientation: Option<[f64; 6]>,
    pub pixel_spacing: Option<[f64; 2]>,
    pub transfer_syntax: String,
}

impl SliceHeader {
    pub fn placement(&self) -> Result<SlicePlacement> {
        let missing = |what: &str| Error::image(&self.path, format!("{what} is missing: the slice cannot be placed"));
        Ok(SlicePlacement {
            path: self.path.clone(),
            position: self.position.ok_or_else(|| missing("ImagePositionPatient"))?,
            orientation: self.orientation.ok_or_else(|| missing("ImageOrientationPatient"))?,
            pixel_spacing: self.pixel_spacing.ok_or_else(|| missing("PixelSpacing"))?,
        })
    }
}

/// Every file under the inputs (folders recursively, in name order so that runs repeat).
pub(crate) fn files_under(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
            .collect::<Result<_>>()?;
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.is_file() {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut out)?;
        } else if input.is_file() {
            out.push(input.clone());
        } else {
            return Err(Error::io(input, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")));
        }
    }
    Ok(out)
}

/// Whether a file starts like a DICOM Part 10 file (128-byte preamble, then "DICM").
pub(crate) fn is_dicom_file(path: &Path) -> Result<bool> {
    let mut head = [0u8; 132];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    match file.read_exact(&mut head) {
        Ok(()) => Ok(&head[128..] == b"DICM"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

pub(crate) fn open_header(path: &Path) -> Result<DefaultDicomObject> {
    OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| Error::image(path, format!("unreadable DICOM header: {e}")))
}

pub(crate) fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok()??;
    Some(e.to_str().ok()?.trim_end_matches(['\0', ' ']).trim().to_string())
}

pub(crate) fn numbers<const N: usize>(
    obj: &InMemDicomObject,
    tag: dicom_core::Tag,
    path: &Path,
    what: &str,
) -> Result<Option<[f64; N]>> {
    let Some(e) = obj.element_opt(tag).ok().flatten() else { return Ok(None) };
    let values = e.to_multi_float64().map_err(|err| Error::image(path, format!("{what} is not numeric: {err}")))?;
    let array: [f64; N] = values
        .as_slice()
        .try_into()
        .map_err(|_| Error::image(path, format!("{what} has {} values, expected {N}", values.len())))?;
    if array.iter().any(|v| !v.is_finite()) {
        return Err(Error::image(path, format!("{what} holds a non-finite value: {array:?}")));
    }
    Ok(Some(array))
}

pub(crate) fn unsigned(obj: &InMemDicomObject, tag: dicom_core::Tag, path: &Path, what: &str) -> Result<Option<usize>> {
    let Some(e) = obj.element_opt(tag).ok().flatten() else { return Ok(None) };
    e.to_int::<u32>()
        .map(|v| Some(v as usize))
        .map_err(|err| Error::image(path, format!("{what} is not a non-negative integer: {err}")))
}

/// The header of an image file, or `None` for a DICOM file that holds no image (a report, a
/// DICOMDIR, a presentation state).
pub(crate) fn read_slice_header(path: &Path) -> Result<Option<SliceHeader>> {
    let obj = open_header(path)?;
    let (Some(rows), Some(columns)) =
        (unsigned(&obj, tags::ROWS, path, "Rows")?, unsigned(&obj, tags::COLUMNS, path, "Columns")?)
    else {
        return Ok(None);
    };
    let series_uid = text(&obj, tags::SERIES_INSTANCE_UID)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::image(path, "SeriesInstanceUID is missing"))?;
    Ok(Some(SliceHeader {
        path: path.to_path_buf(),
        series_uid,
        sop_class_uid: text(&obj, tags::SOP_CLASS_UID).unwrap_or_default(),
        sop_instance_uid: text(&obj, tags::SOP_INSTANCE_UID)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::image(path, "SOPInstanceUID is missing"))?,
        modality: text(&obj, tags::MODALITY).unwrap_or_default(),
        description: text(&obj, tags::SERIES_DESCRIPTION).unwrap_or_default(),
        rows,
        columns,
        frames: unsigned(&obj, tags::NUMBER_OF_FRAMES, path, "NumberOfFrames")?.unwrap_or(1),
        position: numbers(&obj, tags::IMAGE_POSITION_PATIENT, path, "ImagePositionPatient")?,
        orientation: numbers(&obj, tags::IMAGE_ORIENTATION_PATIENT, path, "ImageOrientationPatient")?,
        pixel_spacing: numbers(&obj, tags::PIXEL_SPACING, path, "PixelSpacing")?,
        transfer_syntax: obj.meta().transfer_syntax().trim_end_matches(['\0', ' ']).to_string(),
    }))
}

/// The image slices under the inputs grouped by series (in UID order).
pub(crate) fn scan(inputs: &[PathBuf]) -> Result<BTreeMap<String, Vec<SliceHeader>>> {
    let mut series: BTreeMap<String, Vec<SliceHeader>> = BTreeMap::new();
    for path in files_under(inputs)? {
        if !is_dicom_file(&path)? {
            continue;
        }
        if let Some(h) = read_slice_header(&path)? {
            series.entry(h.series_uid.clone()).or_default().push(h);
        }
    }
    if series.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::image(names.join(", "), "no DICOM image found"));
    }
    Ok(series)
}

pub(crate) fn summary(slices: &[SliceHeader]) -> SeriesSummary {
    let first = &slices[0];
    SeriesSummary {
        uid: first.series_uid.clone(),
        description: first.description.clone(),
        modality: first.modality.clone(),
        slices: slices.len(),
        rows: first.rows,
        columns: first.columns,
    }
}

/// The series to read: the one asked for, else the CT series with the most slices (the first
/// in UID order on a tie). A non-CT series is refused unless `allow_non_ct`.
pub(crate) fn choose(
    found: &BTreeMap<String, Vec<SliceHeader>>,
    uid: Option<&str>,
    allow_non_ct: bool,
) -> Result<Vec<SliceHeader>> {
    let listing = || found.values().map(|s| format!("  {}", summary(s))).collect::<Vec<_>>().join("\n");
    let chosen = match uid {
        Some(uid) => found
            .get(uid)
            .ok_or_else(|| Error::arg(format!("no series {uid} among the inputs; found:\n{}", listing())))?,
        None => found
            .values()
            .filter(|s| allow_non_ct || s[0].modality == "CT")
            .fold(None::<&Vec<SliceHeader>>, |best, s| match best {
                Some(b) if b.len() >= s.len() => Some(b),
                _ => Some(s),
            })
            .ok_or_else(|| Error::arg(format!("no CT series among the inputs; found:\n{}", listing())))?,
    };
    if !allow_non_ct && chosen[0].modality != "CT" {
        return Err(Error::arg(format!(
            "series {} has modality {:?}, not CT: the models are trained on CT in HU (force it with the \
             non-CT option if its values are HU)",
            chosen[0].series_uid, chosen[0].modality
        )));
    }
    Ok(chosen.clone())
}
