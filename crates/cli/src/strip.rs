//! `ichseg skull-strip`: CTs with air outside the intracranial mask (docs/INTRACRANIAL.md), the
//! inputs of classifiers trained on skull-stripped CTs (`ichseg.skull_strip_mm`, which
//! `pseudo-label` then applies itself). One volume, or a BCIHM-layout dataset whose slice labels
//! and masks are copied beside the stripped scans; a dataset run skips the scans already written
//! (each is written atomically), so it resumes where it stopped.

use super::input::{self, SeriesArgs};
use super::pseudo::{dataset_scans, volume_stem};
use clap::Args;
use ichseg::alloc::MemoryLimit;
use ichseg::io::nifti;
use ichseg::skull::intracranial::{check_margin_mm, skull_strip};
use ichseg::{Error, Result, Volume};
use std::path::{Path, PathBuf};

/// What a BCIHM-layout dataset holds besides its scans, copied as they are.
const DATASET_TABLES: [&str; 2] = ["hemorrhage_diagnosis_raw_ct.csv", "acquisition.csv"];

#[derive(Args)]
pub struct SkullStripArgs {
    /// CT volume (.nii or .nii.gz) or the files or folder of a DICOM series; not with --dataset.
    #[arg(required_unless_present = "dataset", conflicts_with = "dataset")]
    input: Vec<PathBuf>,
    /// The stripped volume (NIfTI, float32 HU); with --dataset, the output folder.
    #[arg(long, short)]
    output: PathBuf,
    /// A BCIHM-layout dataset folder (ct_scans/, masks/, hemorrhage_diagnosis_raw_ct.csv).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// The intracranial mask's margin in mm: what the classifier's ichseg.skull_strip_mm says.
    #[arg(long, default_value_t = 0.0)]
    margin_mm: f64,
    #[command(flatten)]
    series: SeriesArgs,
    /// Hide the summary.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: &SkullStripArgs) -> Result<()> {
    check_margin_mm(a.margin_mm)?;
    match &a.dataset {
        Some(dir) => dataset(a, dir),
        None => {
            if input::is_seg_path(&a.output) || volume_stem(&a.output).is_none() {
                return Err(Error::arg(format!(
                    "{}: the output is a NIfTI volume (.nii or .nii.gz)",
                    a.output.display()
                )));
            }
            let loaded = input::load(&a.input, &a.series, MemoryLimit::NONE)?;
            let kept = strip_one(&loaded.volume, a.margin_mm, &a.output, &loaded.header)?;
            if !a.quiet {
                println!("{}: {kept:.1} % of the voxels kept (margin {} mm)", a.output.display(), a.margin_mm);
            }
            Ok(())
        }
    }
}

/// Writes `volume` stripped to `out`; returns the percentage of voxels inside the mask.
fn strip_one(volume: &Volume, margin_mm: f64, out: &Path, header: &nifti::NiftiHeader) -> Result<f64> {
    let (mask, stripped) = skull_strip(volume, margin_mm)?;
    nifti::write_volume(out, header, &stripped)?;
    let inside = mask.mask.iter().filter(|&&m| m != 0).count();
    Ok(100.0 * inside as f64 / mask.mask.len().max(1) as f64)
}

fn dataset(a: &SkullStripArgs, dir: &Path) -> Result<()> {
    let scans = dataset_scans(dir)?;
    if same_folder(dir, &a.output) {
        return Err(Error::arg(format!("{}: the output folder must not be the dataset itself", a.output.display())));
    }
    let out_scans = a.output.join("ct_scans");
    std::fs::create_dir_all(&out_scans).map_err(|e| Error::io(&out_scans, e))?;
    for name in DATASET_TABLES {
        copy_if_missing(&dir.join(name), &a.output.join(name))?;
    }
    let masks = dir.join("masks");
    if masks.is_dir() {
        let out_masks = a.output.join("masks");
        std::fs::create_dir_all(&out_masks).map_err(|e| Error::io(&out_masks, e))?;
        for entry in std::fs::read_dir(&masks).map_err(|e| Error::io(&masks, e))? {
            let path = entry.map_err(|e| Error::io(&masks, e))?.path();
            if let (true, Some(name)) = (path.is_file(), path.file_name()) {
                copy_if_missing(&path, &out_masks.join(name))?;
            }
        }
    }
    let (mut written, mut skipped) = (0, 0);
    for scan in &scans {
        let target = out_scans.join(scan.file_name().unwrap_or_default());
        if target.exists() {
            skipped += 1;
            continue;
        }
        let image = nifti::read(scan)?;
        strip_one(&image.volume, a.margin_mm, &target, &image.header).map_err(|e| in_file(scan, e))?;
        written += 1;
    }
    if !a.quiet {
        println!(
            "{}: {written} volume(s) stripped, {skipped} already there (margin {} mm)",
            a.output.display(),
            a.margin_mm
        );
    }
    Ok(())
}

fn same_folder(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// Copies `from` to `to` unless `to` exists or `from` does not.
fn copy_if_missing(from: &Path, to: &Path) -> Result<()> {
    if from.is_file() && !to.exists() {
        ichseg::io::atomic::write_atomic(to, |w| {
            let mut source = std::fs::File::open(from).map_err(|e| Error::io(from, e))?;
            std::io::copy(&mut source, w).map_err(|e| Error::io(to, e)).map(|_| ())
        })?;
    }
    Ok(())
}

/// Names the scan in an error that does not already.
fn in_file(scan: &Path, e: Error) -> Error {
    match e {
        Error::InvalidArgument(m) => Error::arg(format!("{}: {m}", scan.display())),
        other => other,
    }
}
