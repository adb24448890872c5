//! What the commands read and write: a NIfTI volume or a DICOM series in; masks and maps out as
//! NIfTI, or as DICOM-SEG when the output's name ends in `.dcm` (DICOM input only).

use clap::Args;
use ichseg::alloc::MemoryLimit;
use ichseg::io::dicom::{self, seg, SourceSeries};
use ichseg::io::nifti::{self, NiftiHeader};
use ichseg::{Error, Result, Volume};
use ndarray::Array3;
use std::path::{Path, PathBuf};

/// Choosing a series when the input is DICOM.
#[derive(Args, Clone, Default)]
pub struct SeriesArgs {
    /// With DICOM input: the SeriesInstanceUID to read [default: the CT series with the most
    /// slices].
    #[arg(long, value_name = "UID")]
    pub series: Option<String>,
    /// With DICOM input: read a series whose modality is not CT (its values must be HU).
    #[arg(long)]
    pub allow_non_ct: bool,
}

/// A volume read from the inputs, with what writing results on its grid needs.
pub struct Loaded {
    pub volume: Volume,
    /// The NIfTI header results are written with (the input's, or one made for a series).
    pub header: NiftiHeader,
    /// The source series, when the input was DICOM.
    pub source: Option<SourceSeries>,
}

/// Whether an output path asks for DICOM-SEG.
pub fn is_seg_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("dcm"))
}

/// Whether the inputs are DICOM: a folder, several files, or a file that starts like DICOM.
pub fn is_dicom(inputs: &[PathBuf]) -> bool {
    inputs.len() > 1 || inputs.first().is_some_and(|p| dicom::is_dicom_input(p))
}

/// Refuses, before any work, outputs the inputs cannot give (a DICOM-SEG of a NIfTI volume).
pub fn check_outputs(inputs: &[PathBuf], outputs: &[Option<&Path>]) -> Result<()> {
    if is_dicom(inputs) {
        return Ok(());
    }
    match outputs.iter().flatten().find(|p| is_seg_path(p)) {
        Some(p) => Err(Error::arg(format!(
            "{} asks for a DICOM-SEG, which references a DICOM source series; the input is NIfTI",
            p.display()
        ))),
        None => Ok(()),
    }
}

/// Reads a NIfTI volume (one path) or a DICOM series (folders and files).
pub fn load(inputs: &[PathBuf], series: &SeriesArgs, limit: MemoryLimit) -> Result<Loaded> {
    if is_dicom(inputs) {
        let options = dicom::ReadOptions {
            series_uid: series.series.clone(),
            allow_non_ct: series.allow_non_ct,
            memory_limit: limit,
        };
        let read = dicom::read_series(inputs, &options)?;
        if read.found.len() > 1 && series.series.is_none() {
            eprintln!(
                "ichseg: {} series found; reading {} (choose another with --series UID, list them with `ichseg inspect`)",
                read.found.len(),
                read.series
            );
        }
        return Ok(Loaded {
            header: nifti::header_for_scanner(&read.volume),
            volume: read.volume,
            source: Some(read.source),
        });
    }
    let [path] = inputs else {
        return Err(Error::arg("give one NIfTI volume, or the files or folder of one DICOM series"));
    };
    if series.series.is_some() {
        return Err(Error::arg("--series chooses among DICOM series; the input is a NIfTI file"));
    }
    let image = nifti::read_within(path, limit)?;
    Ok(Loaded { volume: image.volume, header: image.header, source: None })
}

impl Loaded {
    fn source(&self, path: &Path) -> Result<&SourceSeries> {
        self.source
            .as_ref()
            .ok_or_else(|| Error::arg(format!("{} asks for a DICOM-SEG, which needs DICOM input", path.display())))
    }

    /// Writes a 0/1 mask: DICOM-SEG (BINARY) for a `.dcm` path, else NIfTI.
    pub fn write_mask(&self, path: &Path, mask: &Array3<u8>, algorithm: &seg::Algorithm) -> Result<()> {
        if is_seg_path(path) {
            return seg::write(path, self.source(path)?, seg::Content::Binary(mask), algorithm);
        }
        nifti::write_mask(path, &self.header, mask)
    }

    /// Writes probabilities: DICOM-SEG (FRACTIONAL) for a `.dcm` path, else float32 NIfTI.
    pub fn write_probability(&self, path: &Path, prob: &Array3<f32>, algorithm: &seg::Algorithm) -> Result<()> {
        if is_seg_path(path) {
            return seg::write(path, self.source(path)?, seg::Content::Fractional(prob), algorithm);
        }
        nifti::write_f32(path, &self.header, prob)
    }
}

/// A mask to score: NIfTI, or a DICOM-SEG placed on the grid of `like` (read from `like_path`).
pub fn read_mask_like(path: &Path, like: &NiftiHeader, like_path: &Path) -> Result<Array3<u8>> {
    if dicom::is_dicom_input(path) && !path.is_dir() {
        return dicom::read_mask_on(path, like.dims(), &like.affine());
    }
    let (header, mask) = nifti::read_mask(path)?;
    if let Some(why) = header.geometry_mismatch(like) {
        return Err(Error::arg(format!(
            "{} and {} do not share a geometry: {why}",
            path.display(),
            like_path.display()
        )));
    }
    Ok(mask)
}
