//! The JSON report `ichseg segment --report` writes: lesions, volumes, model, device, timings.

use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;
use crate::lesions::Lesion;
use crate::segment::{Segmentation, Segmenter, SegmenterConfig, Timings};
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
    /// Slices per network run at the end (below the configured batch when the GPU ran out of
    /// memory and it was halved).
    pub batch: usize,
    pub lesion_count: usize,
    pub total_volume_ml: f64,
    pub lesions: Vec<Lesion>,
    pub timings: ReportTimings,
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
            batch: result.batch,
            lesion_count: result.lesions.len(),
            total_volume_ml: result.total_volume_ml,
            lesions: result.lesions.clone(),
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
