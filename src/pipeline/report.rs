//! The JSON reports of the jobs: `ichseg segment --report` (lesions with their clinical findings,
//! volumes, the summary line, model, device, timings) and `ichseg pseudo-label --report`.

use crate::clinical::midline::Midline;
use crate::clinical::LesionFindings;
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::lesions::Lesion;
use crate::pipeline::pseudo::{PseudoLabel, PseudoLabeler};
use crate::pipeline::segment::{Segmentation, Segmenter, SegmenterConfig, Timings};
use crate::skull::intracranial::{IntracranialMask, IntracranialSummary};
use crate::volume::Volume;
use std::path::Path;

/// Everything a reader of one segmentation needs to know; serialised as JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentationReport {
    pub ichseg_version: &'static str,
    pub input: String,
    /// `[nx, ny, nz]`.
    pub dims: [usize; 3],
    pub spacing_mm: [f64; 3],
    pub model: ModelReport,
    pub device: String,
    pub device_note: String,
    pub threads: usize,
    /// What runs the convolutions on the CPU ([`crate::Engine::cpu_kernels`]).
    pub cpu_kernels: String,
    /// Slices per network run at the end (below the configured batch when the GPU ran out of
    /// memory and it was halved).
    pub batch: usize,
    pub lesion_count: usize,
    pub total_volume_ml: f64,
    /// Sum of the lesions' ABC/2 estimates.
    pub total_abc2_ml: f64,
    pub largest_lesion_ml: f64,
    /// e.g. "2 lesions, 34.2 mL total (ABC/2 31.0 mL), largest 30.1 mL left, >= 30 mL".
    pub summary: String,
    /// The midsagittal plane the sides refer to (docs/FINDINGS.md).
    pub midline: Midline,
    /// Whether the output was cut to the intracranial mask, its margin and size.
    pub intracranial_mask: IntracranialReport,
    pub lesions: Vec<ReportLesion>,
    pub timings: ReportTimings,
}

/// The intracranial mask in a report (docs/INTRACRANIAL.md): `applied`, and when it was, the
/// margin, voxels, mL and how many slices were enclosed, bridged by the hull or empty.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IntracranialReport {
    pub applied: bool,
    #[serde(flatten)]
    pub summary: Option<IntracranialSummary>,
}

impl IntracranialReport {
    pub fn new(mask: Option<&IntracranialMask>, voxel_ml: f64) -> Self {
        IntracranialReport { applied: mask.is_some(), summary: mask.map(|m| m.summary(voxel_ml)) }
    }
}

/// One lesion in the report: its geometry and its clinical findings, side by side.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportLesion {
    #[serde(flatten)]
    pub lesion: Lesion,
    #[serde(flatten)]
    pub findings: LesionFindings,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelReport {
    pub name: String,
    pub config: SegmenterConfig,
    pub trained_on: Option<String>,
}

/// Stage timings plus the model load (parse + plan) time, in seconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportTimings {
    pub load_s: f64,
    #[serde(flatten)]
    pub segment: Timings,
}

impl SegmentationReport {
    pub fn new(input: &str, volume: &Volume, segmenter: &Segmenter, result: &Segmentation, load_s: f64) -> Self {
        let model = segmenter.model();
        SegmentationReport {
            ichseg_version: env!("CARGO_PKG_VERSION"),
            input: input.to_string(),
            dims: volume.dims(),
            spacing_mm: volume.spacing(),
            model: ModelReport {
                name: model.name.clone(),
                config: segmenter.config().clone(),
                trained_on: model.metadata.trained_on.clone(),
            },
            device: segmenter.engine().device_name().to_string(),
            device_note: segmenter.engine().device_note().to_string(),
            threads: segmenter.engine().threads(),
            cpu_kernels: segmenter.engine().cpu_kernels(),
            batch: result.batch,
            lesion_count: result.lesions.len(),
            total_volume_ml: result.total_volume_ml,
            total_abc2_ml: result.findings.total_abc2_ml,
            largest_lesion_ml: result.findings.largest_lesion_ml,
            summary: result.findings.summary.clone(),
            midline: result.findings.midline.clone(),
            intracranial_mask: IntracranialReport::new(result.intracranial.as_ref(), volume.voxel_volume_ml()),
            lesions: result
                .lesions
                .iter()
                .zip(&result.findings.lesions)
                .map(|(l, f)| ReportLesion { lesion: l.clone(), findings: f.clone() })
                .collect(),
            timings: ReportTimings { load_s, segment: result.timings.clone() },
        }
    }
}

/// Writes any serialisable value as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value).map_err(|e| Error::io(path, e.into()))?;
        w.write_all(b"\n").map_err(|e| Error::io(path, e))
    })
}

/// The JSON report `ichseg pseudo-label --report` writes: the models and method as run, the
/// tuned settings with where each came from (`settings`), the device, the slices decided positive, the mask volume and the stage timings.
pub fn pseudo_label_report(
    input: &str,
    labeler: &PseudoLabeler,
    r: &PseudoLabel,
    voxel_ml: f64,
    load_s: f64,
) -> serde_json::Value {
    let voxels = r.mask.iter().filter(|&&v| v != 0).count();
    let o = labeler.options();
    let t = labeler.settings();
    let e = labeler.engine();
    let mut timings = serde_json::to_value(&r.timings).unwrap_or_default();
    timings["load_s"] = load_s.into();
    serde_json::json!({
        "input": input, "dims": [r.mask.dim().2, r.mask.dim().1, r.mask.dim().0],
        "models": labeler.configs(),
        "method": {"cam": format!("{:?}", o.cam), "lambda": o.lambda, "threshold": t.threshold(),
                   "aggregate": format!("{:?}", o.aggregate), "scf": o.scf.map(|s| [s.c as f64, s.w as f64]),
                   "crf": o.crf.is_some(), "max_hu": t.max_hu.value,
                   "min_hu": t.min_hu.value,
                   "min_lesion_ml": t.min_lesion_ml.value.unwrap_or(0.0)},
        "settings": t,
        "intracranial_mask": IntracranialReport::new(r.intracranial.as_ref(), voxel_ml),
        "device": e.device_name(), "device_note": e.device_note(), "threads": e.threads(),
        "cpu_kernels": e.cpu_kernels(),
        "cam_device": r.cam_device, "taps_on_device": r.taps_on_device, "crf_device": r.crf_device, "batch": r.batch,
        "positive_slices": r.positive.iter().enumerate().filter(|(_, &p)| p).map(|(z, _)| z).collect::<Vec<_>>(),
        "slice_probabilities": r.slice_probabilities,
        "mask_voxels": voxels, "mask_ml": voxels as f64 * voxel_ml,
        "timings": timings,
    })
}
