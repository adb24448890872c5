//! `ichseg._native`: the Python package's native module, over the Rust library (not the C ABI).
//!
//! This layer converts and calls; the Python side (`python/ichseg/`) turns the JSON reports into
//! dataclasses and gives the API its keyword arguments. Rules kept here:
//! - every call that computes runs with the GIL released (`Python::detach`);
//! - progress goes to an optional Python callable; Ctrl-C (a pending signal) or an exception
//!   from the callable cancels the run, and that exception is what the caller sees;
//! - library errors become `ichseg.errors` exceptions carrying the status name; a panic becomes
//!   `ichseg.errors.PanicError`, never an abort.

use ichseg::alloc::MemoryLimit;
use ichseg::crf::CrfParams;
use ichseg::io::dicom::{self, seg, SourceSeries};
use ichseg::io::nifti::{self, NiftiHeader};
use ichseg::io::slice_labels::SliceLabelTable;
use ichseg::pipeline::report;
use ichseg::sca::{Aggregate, ScfParams};
use ichseg::{
    CamMethod, Device, Engine, EngineOptions, Error, ModelOverrides, OnnxModel, Preset, Progress, PseudoLabeler,
    PseudoOptions, Segmenter, SegmenterOptions, Tuned, Volume, Window,
};
use ndarray::{Array3, ArrayViewD};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyList};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What a failed call reports before it becomes a Python exception: a library error, a
/// caught panic, or an exception the progress callback raised (or a pending Ctrl-C).
enum Failure {
    Lib(Error),
    Panic(String),
    Py(PyErr),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Lib(e)
    }
}

impl From<PyErr> for Failure {
    fn from(e: PyErr) -> Self {
        Failure::Py(e)
    }
}

/// The `ichseg.errors` class of a library error (status names as the C ABI's, without prefix).
fn class_of(e: &Error) -> &'static str {
    match e {
        Error::InvalidArgument(_) => "InvalidArgumentError",
        Error::Io { .. } => "IoError",
        Error::InvalidImage { .. } => "InvalidImageError",
        Error::NonFiniteVoxels { .. } => "NonFiniteError",
        Error::InvalidModel(_) => "InvalidModelError",
        Error::Inference(_) | Error::DeviceMemory(_) => "InferenceError",
        Error::OutOfMemory(_) => "OutOfMemoryError",
        Error::Unsupported(_) => "UnsupportedError",
        Error::Cancelled => "CancelledError",
    }
}

/// An instance of `ichseg.errors.<class>` with `message`.
fn py_error(py: Python<'_>, class: &str, message: String) -> PyErr {
    match py.import("ichseg.errors").and_then(|m| m.getattr(class)).and_then(|c| c.call1((message,))) {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

impl Failure {
    fn into_py(self, py: Python<'_>) -> PyErr {
        match self {
            Failure::Lib(e) => py_error(py, class_of(&e), e.to_string()),
            Failure::Panic(msg) => py_error(py, "PanicError", format!("internal error (a bug in libichseg): {msg}")),
            Failure::Py(e) => e,
        }
    }
}

fn arg_error(py: Python<'_>, message: impl Into<String>) -> PyErr {
    py_error(py, "InvalidArgumentError", message.into())
}

/// Runs `work` without the GIL, catching panics.
fn detached<T: Send>(py: Python<'_>, work: impl FnOnce() -> Result<T, Failure> + Send) -> PyResult<T> {
    let out = py.detach(|| match catch_unwind(AssertUnwindSafe(work)) {
        Ok(r) => r,
        Err(payload) => Err(Failure::Panic(
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into()),
        )),
    });
    out.map_err(|f| f.into_py(py))
}

/// The progress hook of a detached run: reacquires the GIL after each step, checks for a
/// pending signal (Ctrl-C), calls the caller's `progress(done, total)`. Returning `False` from
/// it cancels with `CancelledError`; raising cancels with that exception.
struct Hook {
    callback: Option<Py<PyAny>>,
    raised: Option<PyErr>,
}

impl Hook {
    fn new(callback: Option<Py<PyAny>>) -> Self {
        Hook { callback, raised: None }
    }

    fn step(&mut self, p: Progress) -> bool {
        Python::attach(|py| {
            if let Err(e) = py.check_signals() {
                self.raised = Some(e);
                return false;
            }
            let Some(cb) = &self.callback else { return true };
            match cb.call1(py, (p.done, p.total)) {
                Ok(v) => !v.bind(py).cast::<PyBool>().is_ok_and(|b| !b.is_true()),
                Err(e) => {
                    self.raised = Some(e);
                    false
                }
            }
        })
    }

    /// The error a run ended with: the callback's exception when it caused the cancellation.
    fn failure(&mut self, e: Error) -> Failure {
        match (e, self.raised.take()) {
            (Error::Cancelled, Some(raised)) => Failure::Py(raised),
            (e, _) => Failure::Lib(e),
        }
    }
}

/// Copies a numpy array of any supported dtype and any memory order into a standard-layout
/// `[nz, ny, nx]` array, converting each value with `f` (one pass, one copy). The Python side
/// converts dtypes not listed here (float16, non-native byte order) before calling.
fn array3<T: Copy>(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    what: &str,
    f: impl Fn(f64) -> Result<T, String>,
) -> PyResult<Array3<T>> {
    let arr = obj.cast::<PyUntypedArray>().map_err(|_| arg_error(py, format!("{what} must be a numpy array")))?;
    if arr.ndim() != 3 {
        return Err(arg_error(
            py,
            format!("{what} must be 3-dimensional [z, y, x], got {} dimension(s) {:?}", arr.ndim(), arr.shape()),
        ));
    }
    let shape = (arr.shape()[0], arr.shape()[1], arr.shape()[2]);
    macro_rules! each {
        ($($t:ty),*) => {
            $(if let Ok(a) = obj.cast::<PyArrayDyn<$t>>() {
                let ro = a.readonly();
                let view: ArrayViewD<'_, $t> = ro.as_array();
                let mut out = Vec::new();
                out.try_reserve_exact(view.len())
                    .map_err(|_| py_error(py, "OutOfMemoryError", format!("out of memory: copying {what} ({} voxels)", view.len())))?;
                for &v in view.iter() {
                    out.push(f(v as f64).map_err(|m| arg_error(py, format!("{what}: {m}")))?);
                }
                return Array3::from_shape_vec(shape, out).map_err(|e| arg_error(py, e.to_string()));
            })*
        };
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<bool>>() {
        let ro = a.readonly();
        let view = ro.as_array();
        let out: Vec<T> = view
            .iter()
            .map(|&v| f(f64::from(u8::from(v))))
            .collect::<Result<_, _>>()
            .map_err(|m| arg_error(py, format!("{what}: {m}")))?;
        return Array3::from_shape_vec(shape, out).map_err(|e| arg_error(py, e.to_string()));
    }
    each!(f32, f64, i8, i16, i32, i64, u8, u16, u32, u64);
    Err(arg_error(py, format!("{what} has dtype {}, not a real numeric dtype", arr.dtype())))
}

/// HU values: any finite number; the library refuses NaN and Inf with its own error (status
/// NON_FINITE), so they pass through here.
fn hu_array(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Array3<f32>> {
    array3(py, obj, "the volume", |v| Ok(v as f32))
}

/// A mask: nonzero is hemorrhage; NaN is refused (neither in nor out).
fn mask_array(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Array3<u8>> {
    array3(py, obj, what, |v| if v.is_nan() { Err("contains NaN".into()) } else { Ok(u8::from(v != 0.0)) })
}

fn volume_from(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    spacing: [f64; 3],
    affine: Option<[[f64; 4]; 4]>,
) -> PyResult<Volume> {
    let data = hu_array(py, data)?;
    Volume::from_array(data, spacing, affine).map_err(|e| Failure::Lib(e).into_py(py))
}

/// A volume read from a file or a DICOM series, with what writing results on its grid needs.
/// The settings a Python caller gives in place of the model's metadata.
fn overrides(
    window: Option<(f32, f32)>,
    input_size: Option<(usize, usize)>,
    channels: Option<usize>,
    normalize: Option<(f32, f32)>,
    bleed_index: Option<usize>,
) -> ModelOverrides {
    ModelOverrides {
        window: window.map(|(level, width)| Window { level, width }),
        input_size,
        channels,
        normalize,
        bleed_index,
    }
}

#[pyclass(module = "ichseg._native", frozen)]
struct Image {
    volume: Arc<Volume>,
    header: NiftiHeader,
    source: Option<SourceSeries>,
    series_uid: Option<String>,
    path: String,
}

#[pymethods]
impl Image {
    /// HU values as a new float32 array of shape (nz, ny, nx).
    #[getter]
    fn array<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.volume.data().clone().into_pyarray(py).into_any()
    }
    /// Voxel size (x, y, z) in mm.
    #[getter]
    fn spacing(&self) -> (f64, f64, f64) {
        let [x, y, z] = self.volume.spacing();
        (x, y, z)
    }
    /// 4x4 voxel (x, y, z, 1) to world (RAS+ mm) matrix, as nested lists.
    #[getter]
    fn affine(&self) -> Vec<Vec<f64>> {
        self.volume.affine().iter().map(|r| r.to_vec()).collect()
    }
    /// Whether the affine gives the patient's orientation (needed for left/right findings).
    #[getter]
    fn oriented(&self) -> bool {
        self.volume.oriented()
    }
    /// (nz, ny, nx).
    #[getter]
    fn shape(&self) -> (usize, usize, usize) {
        self.volume.data().dim()
    }
    /// "nifti" or "dicom".
    #[getter]
    fn kind(&self) -> &'static str {
        if self.source.is_some() {
            "dicom"
        } else {
            "nifti"
        }
    }
    /// The SeriesInstanceUID read, for DICOM input.
    #[getter]
    fn series_uid(&self) -> Option<String> {
        self.series_uid.clone()
    }
    #[getter]
    fn path(&self) -> String {
        self.path.clone()
    }
}

#[pyfunction]
#[pyo3(signature = (path, series=None, allow_non_ct=false, memory_limit_mb=0))]
fn read_volume(
    py: Python<'_>,
    path: PathBuf,
    series: Option<String>,
    allow_non_ct: bool,
    memory_limit_mb: u64,
) -> PyResult<Image> {
    let limit = memory_limit(py, memory_limit_mb)?;
    let name = path.display().to_string();
    detached(py, move || {
        if dicom::is_dicom_input(&path) {
            let options = dicom::ReadOptions { series_uid: series, allow_non_ct, memory_limit: limit };
            let read = dicom::read_series(&[path], &options)?;
            return Ok(Image {
                header: nifti::header_for_scanner(&read.volume),
                volume: Arc::new(read.volume),
                series_uid: Some(read.series.uid.clone()),
                source: Some(read.source),
                path: name,
            });
        }
        if series.is_some() {
            return Err(Error::arg("series chooses among DICOM series; the input is a NIfTI file").into());
        }
        let image = nifti::read_within(&path, limit)?;
        Ok(Image { volume: Arc::new(image.volume), header: image.header, source: None, series_uid: None, path: name })
    })
}

fn memory_limit(py: Python<'_>, mib: u64) -> PyResult<MemoryLimit> {
    MemoryLimit::from_mib(mib).ok_or_else(|| arg_error(py, format!("memory_limit_mb {mib} is too large")))
}

/// The geometry results are written with: `like`'s, else a header made from spacing/affine.
fn header_like(
    py: Python<'_>,
    like: Option<&Image>,
    shape: (usize, usize, usize),
    spacing: Option<[f64; 3]>,
    affine: Option<[[f64; 4]; 4]>,
) -> PyResult<NiftiHeader> {
    match (like, spacing) {
        (Some(img), None) if affine.is_none() => {
            if img.volume.data().dim() != shape {
                return Err(arg_error(
                    py,
                    format!(
                        "the array's shape {shape:?} is not the image's {:?} (nz, ny, nx)",
                        img.volume.data().dim()
                    ),
                ));
            }
            Ok(img.header.clone())
        }
        (None, Some(spacing)) => {
            // header_for takes its geometry from a volume: a zero-valued one on the same grid.
            let zeros =
                ichseg::alloc::try_array3(shape, 0f32, "the header's grid").map_err(|e| Failure::Lib(e).into_py(py))?;
            let probe = Volume::from_array(zeros, spacing, affine).map_err(|e| Failure::Lib(e).into_py(py))?;
            Ok(nifti::header_for(&probe))
        }
        _ => Err(arg_error(py, "give either like=Image, or spacing (and optionally affine), not both")),
    }
}

#[pyfunction]
#[pyo3(signature = (path, mask, like=None, spacing=None, affine=None, algorithm="ichseg"))]
fn write_mask(
    py: Python<'_>,
    path: PathBuf,
    mask: &Bound<'_, PyAny>,
    like: Option<PyRef<'_, Image>>,
    spacing: Option<[f64; 3]>,
    affine: Option<[[f64; 4]; 4]>,
    algorithm: &str,
) -> PyResult<()> {
    let mask = mask_array(py, mask, "the mask")?;
    write_out(py, &path, Content::Mask(mask), like.as_deref(), spacing, affine, algorithm)
}

#[pyfunction]
#[pyo3(signature = (path, probability, like=None, spacing=None, affine=None, algorithm="ichseg"))]
fn write_probability(
    py: Python<'_>,
    path: PathBuf,
    probability: &Bound<'_, PyAny>,
    like: Option<PyRef<'_, Image>>,
    spacing: Option<[f64; 3]>,
    affine: Option<[[f64; 4]; 4]>,
    algorithm: &str,
) -> PyResult<()> {
    let p = array3(py, probability, "the probability map", |v| {
        if (0.0..=1.0).contains(&v) {
            Ok(v as f32)
        } else {
            Err(format!("value {v} outside [0, 1]"))
        }
    })?;
    write_out(py, &path, Content::Probability(p), like.as_deref(), spacing, affine, algorithm)
}

enum Content {
    Mask(Array3<u8>),
    Probability(Array3<f32>),
}

fn write_out(
    py: Python<'_>,
    path: &Path,
    content: Content,
    like: Option<&Image>,
    spacing: Option<[f64; 3]>,
    affine: Option<[[f64; 4]; 4]>,
    algorithm: &str,
) -> PyResult<()> {
    let shape = match &content {
        Content::Mask(m) => m.dim(),
        Content::Probability(p) => p.dim(),
    };
    let is_seg = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("dcm"));
    let algorithm = seg::Algorithm { name: algorithm.to_string(), trained_on: None };
    if is_seg {
        let Some(source) = like.and_then(|l| l.source.as_ref()) else {
            return Err(arg_error(
                py,
                format!("{} asks for a DICOM-SEG, which needs like= an Image read from a DICOM series", path.display()),
            ));
        };
        if like.is_some_and(|l| l.volume.data().dim() != shape) {
            return Err(arg_error(py, format!("the array's shape {shape:?} is not the series' (nz, ny, nx)")));
        }
        return detached(py, || {
            let c = match &content {
                Content::Mask(m) => seg::Content::Binary(m),
                Content::Probability(p) => seg::Content::Fractional(p),
            };
            Ok(seg::write(path, source, c, &algorithm)?)
        });
    }
    let header = header_like(py, like, shape, spacing, affine)?;
    detached(py, || {
        match &content {
            Content::Mask(m) => nifti::write_mask(path, &header, m)?,
            Content::Probability(p) => nifti::write_f32(path, &header, p)?,
        }
        Ok(())
    })
}

/// Where networks run: the device and a private thread pool.
#[pyclass(module = "ichseg._native", frozen)]
struct NativeEngine {
    engine: Engine,
}

#[pymethods]
impl NativeEngine {
    #[new]
    #[pyo3(signature = (device="auto", threads=0, memory_limit_mb=0, low_memory=false))]
    fn new(py: Python<'_>, device: &str, threads: usize, memory_limit_mb: u64, low_memory: bool) -> PyResult<Self> {
        let device: Device = device.parse().map_err(|e: Error| Failure::Lib(e).into_py(py))?;
        let memory_limit = memory_limit(py, memory_limit_mb)?;
        let options = EngineOptions { threads, device, memory_limit, low_memory };
        let engine = detached(py, || Ok(Engine::new(&options)?))?;
        Ok(NativeEngine { engine })
    }
    #[getter]
    fn device(&self) -> String {
        self.engine.device_name().to_string()
    }
    #[getter]
    fn low_memory(&self) -> bool {
        self.engine.low_memory()
    }
    #[getter]
    fn device_note(&self) -> String {
        self.engine.device_note().to_string()
    }
    #[getter]
    fn threads(&self) -> usize {
        self.engine.threads()
    }
}

/// The volume a call works on: an `Image` as read (no copy, orientation kept) or an array.
fn input_volume(
    py: Python<'_>,
    volume: &Bound<'_, PyAny>,
    spacing: Option<[f64; 3]>,
    affine: Option<[[f64; 4]; 4]>,
) -> PyResult<Arc<Volume>> {
    if let Ok(img) = volume.cast::<Image>() {
        if spacing.is_some() || affine.is_some() {
            return Err(arg_error(py, "an Image carries its own spacing and affine: give neither with it"));
        }
        return Ok(Arc::clone(&img.get().volume));
    }
    let Some(spacing) = spacing else {
        return Err(arg_error(py, "spacing (x, y, z in mm) is required with an array"));
    };
    volume_from(py, volume, spacing, affine).map(Arc::new)
}

#[pyclass(module = "ichseg._native", frozen)]
struct NativeSegmenter {
    segmenter: Segmenter,
    load_s: f64,
}

#[pymethods]
impl NativeSegmenter {
    #[new]
    #[pyo3(signature = (engine, model, threshold=0.5, batch=1, window=None, input_size=None, channels=None,
                        normalize=None, bleed_index=None, min_lesion_ml=None, intracranial_margin_mm=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        engine: PyRef<'_, NativeEngine>,
        model: PathBuf,
        threshold: f32,
        batch: usize,
        window: Option<(f32, f32)>,
        input_size: Option<(usize, usize)>,
        channels: Option<usize>,
        normalize: Option<(f32, f32)>,
        bleed_index: Option<usize>,
        min_lesion_ml: Option<f64>,
        intracranial_margin_mm: Option<f64>,
    ) -> PyResult<Self> {
        let options = SegmenterOptions {
            threshold,
            batch,
            model: overrides(window, input_size, channels, normalize, bleed_index),
            min_lesion_ml,
            intracranial_margin_mm,
        };
        let engine = engine.engine.clone();
        let (segmenter, load_s) = detached(py, move || {
            let t = Instant::now();
            let s = Segmenter::new(&engine, OnnxModel::load(&model)?, &options)?;
            Ok((s, t.elapsed().as_secs_f64()))
        })?;
        Ok(NativeSegmenter { segmenter, load_s })
    }

    /// The settings in use after the model's metadata and defaults, as JSON.
    #[getter]
    fn config_json(&self) -> String {
        serde_json::to_string(self.segmenter.config()).unwrap_or_default()
    }

    /// Returns (mask uint8, probability float32, report JSON), arrays (nz, ny, nx).
    #[pyo3(signature = (volume, spacing=None, affine=None, progress=None))]
    fn segment<'py>(
        &self,
        py: Python<'py>,
        volume: &Bound<'py, PyAny>,
        spacing: Option<[f64; 3]>,
        affine: Option<[[f64; 4]; 4]>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, String)> {
        let input = if let Ok(img) = volume.cast::<Image>() { img.get().path.clone() } else { "<array>".into() };
        let vol = input_volume(py, volume, spacing, affine)?;
        let mut hook = Hook::new(progress);
        let (result, report) = detached(py, || {
            let r = self.segmenter.segment_with_progress(&vol, &mut |p| hook.step(p)).map_err(|e| hook.failure(e))?;
            let rep = report::SegmentationReport::new(&input, &vol, &self.segmenter, &r, self.load_s);
            let json = serde_json::to_string(&rep).map_err(|e| Error::arg(e.to_string()))?;
            Ok((r, json))
        })?;
        Ok((result.mask.into_pyarray(py).into_any(), result.probability.into_pyarray(py).into_any(), report))
    }
}

#[pyclass(module = "ichseg._native", frozen)]
struct NativePseudoLabeler {
    labeler: PseudoLabeler,
    load_s: f64,
}

#[pymethods]
impl NativePseudoLabeler {
    #[new]
    #[pyo3(signature = (engine, classifiers, taps=Vec::new(), cam="sf", threshold=None,
                        scf=Some((2, 0.5)), crf=true, aggregate="or", max_hu=None, min_lesion_ml=None,
                        batch=1, window=None, input_size=None, channels=None, normalize=None, bleed_index=None,
                        intracranial_margin_mm=None, off=Vec::new(), preset="model", crf_confidence=None,
                        crf_bilateral_compat=None, min_hu=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        engine: PyRef<'_, NativeEngine>,
        classifiers: Vec<PathBuf>,
        taps: Vec<Vec<String>>,
        cam: &str,
        threshold: Option<f32>,
        scf: Option<(usize, f32)>,
        crf: bool,
        aggregate: &str,
        max_hu: Option<f32>,
        min_lesion_ml: Option<f64>,
        batch: usize,
        window: Option<(f32, f32)>,
        input_size: Option<(usize, usize)>,
        channels: Option<usize>,
        normalize: Option<(f32, f32)>,
        bleed_index: Option<usize>,
        intracranial_margin_mm: Option<f64>,
        off: Vec<String>,
        preset: &str,
        crf_confidence: Option<f32>,
        crf_bilateral_compat: Option<f32>,
        min_hu: Option<f32>,
    ) -> PyResult<Self> {
        let preset: Preset = preset.parse().map_err(|e: Error| Failure::Lib(e).into_py(py))?;
        // A tuned setting: a value, "off" (named in `off`), or None: the classifiers' metadata.
        let tuned_off = |name: &str| off.iter().any(|o| o == name);
        if let Some(bad) = off.iter().find(|o| !matches!(o.as_str(), "max_hu" | "min_hu" | "intracranial_margin_mm")) {
            return Err(arg_error(py, format!("{bad} cannot be \"off\"")));
        }
        let cam: CamMethod = cam.parse().map_err(|e: Error| Failure::Lib(e).into_py(py))?;
        let aggregate = match aggregate {
            "or" => Aggregate::Or,
            "and" => Aggregate::And,
            other => return Err(arg_error(py, format!("aggregate {other:?}: expected \"or\" or \"and\""))),
        };
        // The CLI's options for the same flags (crates/cli/src/pseudo.rs).
        let options = PseudoOptions {
            cam,
            taps,
            model: overrides(window, input_size, channels, normalize, bleed_index),
            scf: scf.map(|(c, w)| ScfParams { c, w }),
            threshold: threshold.map_or(Tuned::Auto, Tuned::Set),
            aggregate,
            crf: crf.then(CrfParams::default),
            crf_confidence: crf_confidence.map_or(Tuned::Auto, Tuned::Set),
            crf_bilateral_compat: crf_bilateral_compat.map_or(Tuned::Auto, Tuned::Set),
            max_hu: if tuned_off("max_hu") { Tuned::Off } else { max_hu.map_or(Tuned::Auto, Tuned::Set) },
            min_hu: if tuned_off("min_hu") { Tuned::Off } else { min_hu.map_or(Tuned::Auto, Tuned::Set) },
            min_lesion_ml: min_lesion_ml.map_or(Tuned::Auto, Tuned::Set),
            intracranial_margin_mm: if tuned_off("intracranial_margin_mm") {
                Tuned::Off
            } else {
                intracranial_margin_mm.map_or(Tuned::Auto, Tuned::Set)
            },
            preset,
            batch,
            ..Default::default()
        };
        let engine = engine.engine.clone();
        let (labeler, load_s) = detached(py, move || {
            let t = Instant::now();
            let l = PseudoLabeler::from_paths(&engine, &classifiers, &options)?;
            Ok((l, t.elapsed().as_secs_f64()))
        })?;
        Ok(NativePseudoLabeler { labeler, load_s })
    }

    /// The tuned settings in use, each with its source (JSON of `ichseg::pipeline::tuned::TunedSettings`).
    #[getter]
    fn settings_json(&self) -> String {
        // through a JSON value, as the report is made, so both print the f32 values alike
        serde_json::to_value(self.labeler.settings()).map(|v| v.to_string()).unwrap_or_default()
    }

    /// Tap layers per classifier (the number of fused maps).
    #[getter]
    fn layer_count(&self) -> usize {
        self.labeler.layer_count()
    }

    /// Returns (mask, [fused map per tap], [[CAM per tap] per classifier], report JSON).
    #[allow(clippy::type_complexity)] // the tuple Python unpacks; a type alias would only hide it
    #[pyo3(signature = (volume, spacing=None, affine=None, slice_labels=None, progress=None))]
    fn label<'py>(
        &self,
        py: Python<'py>,
        volume: &Bound<'py, PyAny>,
        spacing: Option<[f64; 3]>,
        affine: Option<[[f64; 4]; 4]>,
        slice_labels: Option<Vec<bool>>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyList>, Bound<'py, PyList>, String)> {
        let input = if let Ok(img) = volume.cast::<Image>() { img.get().path.clone() } else { "<array>".into() };
        let vol = input_volume(py, volume, spacing, affine)?;
        let mut hook = Hook::new(progress);
        let (result, report) = detached(py, || {
            let r = self
                .labeler
                .label_with_progress(&vol, slice_labels.as_deref(), &mut |p| hook.step(p))
                .map_err(|e| hook.failure(e))?;
            let rep = report::pseudo_label_report(&input, &self.labeler, &r, vol.voxel_volume_ml(), self.load_s);
            Ok((r, rep.to_string()))
        })?;
        let fused = PyList::empty(py);
        for m in result.fused {
            fused.append(m.into_pyarray(py))?;
        }
        let cams = PyList::empty(py);
        for per_model in result.cams {
            let taps = PyList::empty(py);
            for m in per_model {
                taps.append(m.into_pyarray(py))?;
            }
            cams.append(taps)?;
        }
        Ok((result.mask.into_pyarray(py).into_any(), fused, cams, report))
    }
}

/// Scores (prediction, ground truth) pairs: JSON of `ichseg::metrics::Evaluation`; with each
/// pair's voxel volume (mL), also by lesion size.
#[pyfunction]
#[pyo3(signature = (pairs, voxel_ml=None))]
fn evaluate(
    py: Python<'_>,
    pairs: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)>,
    voxel_ml: Option<Vec<f64>>,
) -> PyResult<String> {
    let mut masks = Vec::with_capacity(pairs.len());
    for (i, (p, g)) in pairs.iter().enumerate() {
        masks.push((mask_array(py, p, &format!("pred[{i}]"))?, mask_array(py, g, &format!("gt[{i}]"))?));
    }
    detached(py, || {
        let views: Vec<_> = masks.iter().map(|(p, g)| (p.view(), g.view())).collect();
        let e = match &voxel_ml {
            Some(ml) => ichseg::metrics::evaluate_sized(&views, ml)?,
            None => ichseg::metrics::evaluate(&views)?,
        };
        Ok(serde_json::to_string(&e).map_err(|e| Error::arg(e.to_string()))?)
    })
}

/// A slice-label CSV (the simple `slice,label` layout or BCIHM's), as `ichseg pseudo-label`
/// reads it for `--labels` and `--dataset`.
#[pyclass(module = "ichseg._native", frozen)]
struct NativeSliceLabels(SliceLabelTable);

#[pymethods]
impl NativeSliceLabels {
    #[staticmethod]
    fn read(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        detached(py, move || Ok(Self(SliceLabelTable::read(&path)?)))
    }

    /// The BCIHM patient numbers (empty for the simple layout).
    fn patients(&self) -> Vec<u32> {
        self.0.patients()
    }

    /// One label per slice of a volume with `slices` slices (`patient` None: the simple layout).
    #[pyo3(signature = (patient, slices))]
    fn labels(&self, py: Python<'_>, patient: Option<u32>, slices: usize) -> PyResult<Vec<bool>> {
        self.0.labels(patient, slices).map_err(|e| Failure::Lib(e).into_py(py))
    }
}

/// Raises the error a library error maps to (tests of the mapping for errors hard to provoke).
#[pyfunction]
fn _raise_library_error(py: Python<'_>, kind: &str) -> PyResult<()> {
    let e = match kind {
        "cancelled" => Error::Cancelled,
        "out_of_memory" => Error::OutOfMemory("test".into()),
        "unsupported" => Error::Unsupported("test".into()),
        "inference" => Error::Inference("test".into()),
        "device_memory" => Error::DeviceMemory("test".into()),
        "panic" => return detached(py, || -> Result<(), Failure> { panic!("test panic") }),
        _ => return Err(arg_error(py, format!("unknown kind {kind:?}"))),
    };
    Err(Failure::Lib(e).into_py(py))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Image>()?;
    m.add_class::<NativeEngine>()?;
    m.add_class::<NativeSegmenter>()?;
    m.add_class::<NativePseudoLabeler>()?;
    m.add_class::<NativeSliceLabels>()?;
    m.add_function(wrap_pyfunction!(read_volume, m)?)?;
    m.add_function(wrap_pyfunction!(write_mask, m)?)?;
    m.add_function(wrap_pyfunction!(write_probability, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(_raise_library_error, m)?)?;
    Ok(())
}
