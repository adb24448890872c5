//! Job 2 of METHOD.md: a CT volume and a U-Net in, hemorrhage mask, probabilities and lesions out.

use crate::alloc::{try_array3, try_map3};
use crate::clinical::Findings;
use crate::error::{Error, Result};
use crate::lesions::{check_min_lesion_ml, find_lesions, remove_small_lesions, total_volume_ml, Lesion};
use crate::model::runtime::{Engine, PlanCache};
use crate::model::{ModelKind, OnnxModel};
use crate::pipeline::batching::{for_each_batch, plan_shrinking};
use crate::pipeline::options::{
    check_batch, check_normalize, check_threshold, check_window, ModelOverrides, Progress, DEFAULT_INPUT_SIZE,
};
use crate::preprocess::{model_input, resize_bilinear, InputSpec};
use crate::skull::intracranial::{check_margin_mm, intracranial_mask, zero_outside, IntracranialMask};
use crate::volume::{Volume, Window};
use ndarray::{Array2, Array3, Axis};
use std::sync::Arc;
use std::time::Instant;
use tract_onnx::prelude::*;

/// Caller choices for segmentation. `None` fields fall back to the model's metadata
/// (METHOD.md section 8), then to the documented defaults.
#[derive(Debug, Clone)]
pub struct SegmenterOptions {
    /// Bleed probability at or above which a voxel is hemorrhage (default 0.5).
    pub threshold: f32,
    /// Slices per network run (default 1: measured fastest per slice on tract's CPU engine).
    pub batch: usize,
    /// Window, input size, channels, normalisation and bleed logit in place of the model's.
    pub model: ModelOverrides,
    /// Lesions (3D components) smaller than this many millilitres leave the mask before the
    /// lesion list is made ([`crate::lesions::remove_small_lesions`]; not in METHOD.md). `None`
    /// (the default): the model's tuned `ichseg.segment.min_lesion_ml`, else 0 (every lesion
    /// kept); `Some(0.0)` keeps every lesion whatever the model says.
    pub min_lesion_ml: Option<f64>,
    /// Intracranial mask, not in METHOD.md: `Some(margin_mm)` zeroes the probability and the
    /// mask outside the skull's inside eroded by that margin ([`crate::skull::intracranial`]),
    /// before the small-lesion filter and the lesion list. Default `None`.
    pub intracranial_margin_mm: Option<f64>,
}

impl Default for SegmenterOptions {
    fn default() -> Self {
        SegmenterOptions {
            threshold: 0.5,
            batch: 1,
            model: ModelOverrides::default(),
            min_lesion_ml: None,
            intracranial_margin_mm: None,
        }
    }
}

/// How the network's output becomes a bleed probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputActivation {
    /// One logit per pixel.
    Sigmoid,
    /// `classes` logits per pixel; the bleed class is `bleed_index`.
    Softmax { classes: usize, bleed_index: usize },
}

/// The settings a segmenter actually uses, after metadata and defaults were resolved.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SegmenterConfig {
    pub threshold: f32,
    pub batch: usize,
    pub window_level: f32,
    pub window_width: f32,
    pub input_rows: usize,
    pub input_cols: usize,
    pub channels: usize,
    pub normalize: Option<(f32, f32)>,
    pub activation: OutputActivation,
    pub min_lesion_ml: f64,
    /// Where `min_lesion_ml` came from: `"option"`, `"model: NAME"` (its
    /// `ichseg.segment.min_lesion_ml`) or `"default"`.
    pub min_lesion_ml_source: String,
    /// The intracranial mask's margin in mm; `None`: no mask.
    pub intracranial_margin_mm: Option<f64>,
}

/// Wall-clock seconds spent in each stage of one [`Segmenter::segment`] call.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    pub preprocess_s: f64,
    pub inference_s: f64,
    /// Resizing the probabilities, the mask, the lesions and their findings.
    pub postprocess_s: f64,
    /// The part of `postprocess_s` spent on the clinical findings (midline, ABC/2, density).
    pub findings_s: f64,
    pub total_s: f64,
}

/// The result of segmenting one volume; arrays have the volume's `[nz, ny, nx]` shape.
#[derive(Debug, Clone)]
pub struct Segmentation {
    /// 1 = hemorrhage, 0 = background.
    pub mask: Array3<u8>,
    /// Bleed probability in `[0, 1]`.
    pub probability: Array3<f32>,
    /// 3D connected components (26-connectivity), largest first.
    pub lesions: Vec<Lesion>,
    pub total_volume_ml: f64,
    /// The intracranial mask the output was cut to, when that option is on.
    pub intracranial: Option<IntracranialMask>,
    /// ABC/2, density, side and flags of each lesion (same order as `lesions`), the midline,
    /// totals and the one-line summary ([`crate::clinical`]).
    pub findings: Findings,
    /// Slices per network run at the end: the configured batch, or less when the GPU ran out
    /// of memory and the batch was halved ([`Error::DeviceMemory`]).
    pub batch: usize,
    pub timings: Timings,
}

/// Runs a U-Net slice by slice over CT volumes.
///
/// Safe to share between threads: concurrent calls run concurrently on the engine's pool.
///
/// ```no_run
/// use ichseg::{Engine, EngineOptions, OnnxModel, Segmenter, SegmenterOptions, Volume};
/// # fn main() -> ichseg::Result<()> {
/// let engine = Engine::new(&EngineOptions::default())?;
/// let model = OnnxModel::load("models/unet.onnx".as_ref())?;
/// let segmenter = Segmenter::new(&engine, model, &SegmenterOptions::default())?;
/// let scan = ichseg::io::nifti::read("scan.nii.gz".as_ref())?;
/// let result = segmenter.segment(&scan.volume)?;
/// println!("{} lesion(s), {:.2} mL", result.lesions.len(), result.total_volume_ml);
/// # Ok(()) }
/// ```
pub struct Segmenter {
    engine: Engine,
    model: OnnxModel,
    config: SegmenterConfig,
    /// The batch size every run uses, short batches zero-padded: the model file's when it fixes
    /// one, or the planned one once the graph is released (on the CPU).
    fixed_batch: Option<usize>,
    plans: PlanCache,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter").field("model", &self.model.name).field("config", &self.config).finish()
    }
}

impl Segmenter {
    /// Checks that `model` is a usable U-Net, resolves the settings and builds its tract plan.
    pub fn new(engine: &Engine, mut model: OnnxModel, options: &SegmenterOptions) -> Result<Self> {
        // Segmentation builds no derived graphs: the encoded file would only hold memory.
        model.release_source();
        if model.metadata.kind == Some(ModelKind::Classifier) {
            return Err(Error::InvalidModel(format!(
                "{} is a classifier (ichseg.kind = classifier); segmentation needs a U-Net",
                model.name
            )));
        }
        if model.inputs.len() != 1 {
            return Err(Error::InvalidModel(format!(
                "{} has {} inputs; a segmenter takes exactly one image input [N, C, H, W]",
                model.name,
                model.inputs.len()
            )));
        }
        let input = &model.inputs[0];
        let rank = input.shape.as_ref().map(|s| s.len());
        if rank != Some(4) {
            return Err(Error::InvalidModel(format!(
                "{}: input {:?} has shape {}; a segmenter input must be [N, C, H, W] (rank 4)",
                model.name,
                input.name,
                input.shape_text()
            )));
        }
        let pick = |what: &str, file: Option<usize>, option: Option<usize>, meta: Option<usize>, default: usize| match (
            file,
            option.or(meta),
        ) {
            (Some(f), Some(o)) if f != o => Err(Error::InvalidModel(format!(
                "{}: {what} {o} was requested but the model input is fixed at {f}",
                model.name
            ))),
            (Some(f), _) => Ok(f),
            (None, Some(o)) => Ok(o),
            (None, None) => Ok(default),
        };
        check_threshold(options.threshold)?;
        check_batch(options.batch)?;
        options.model.check()?;
        let (min_lesion_ml, min_lesion_ml_source) = match (options.min_lesion_ml, model.metadata.segment_min_lesion_ml)
        {
            (Some(ml), _) => (ml, "option".to_string()),
            (None, Some(ml)) => (ml, format!("model: {}", model.name)),
            (None, None) => (0.0, "default".to_string()),
        };
        check_min_lesion_ml(min_lesion_ml)?;
        if let Some(m) = options.intracranial_margin_mm {
            check_margin_mm(m)?;
        }
        let meta = &model.metadata;
        let channels = pick("channels", input.fixed_dim(1), options.model.channels, meta.channels, 1)?;
        if channels != 1 && channels != 3 {
            return Err(Error::InvalidModel(format!("{}: {channels} input channels; expected 1 or 3", model.name)));
        }
        let size = options.model.input_size.or(meta.input_size);
        let rows = pick("input rows", input.fixed_dim(2), size.map(|s| s.0), None, DEFAULT_INPUT_SIZE.0)?;
        let cols = pick("input columns", input.fixed_dim(3), size.map(|s| s.1), None, DEFAULT_INPUT_SIZE.1)?;
        let window = options.model.window.or(meta.window).unwrap_or_default();
        check_window(window)?;
        let normalize = options.model.normalize.or(meta.normalize);
        check_normalize(normalize)?;
        let fixed_batch = input.fixed_dim(0);
        let mut seg = Segmenter {
            engine: engine.clone(),
            config: SegmenterConfig {
                threshold: options.threshold,
                batch: fixed_batch.unwrap_or(options.batch),
                window_level: window.level,
                window_width: window.width,
                input_rows: rows,
                input_cols: cols,
                channels,
                normalize,
                activation: OutputActivation::Sigmoid, // settled below from the plan's output shape
                min_lesion_ml,
                min_lesion_ml_source,
                intracranial_margin_mm: options.intracranial_margin_mm,
            },
            fixed_batch,
            plans: PlanCache::default(),
            model,
        };
        let plan = plan_shrinking(seg.config.batch, seg.fixed_batch.is_none(), |b| seg.plan(b))?;
        seg.config.activation = seg.activation_of(&plan, options.model.bleed_index)?;
        // On the CPU this plan is the only one: the parsed graph, as large as the weights, is
        // freed, and short batches are zero-padded as for a model whose file fixes its batch
        // size (the GPU keeps the graph, to plan smaller batches when memory runs out).
        if !engine.is_cuda() {
            seg.fixed_batch = Some(seg.config.batch);
            seg.model.release_graph();
        }
        Ok(seg)
    }

    /// The settings in use.
    pub fn config(&self) -> &SegmenterConfig {
        &self.config
    }
    /// The model this segmenter runs.
    pub fn model(&self) -> &OnnxModel {
        &self.model
    }
    /// The engine (device, threads) it runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Segments a volume.
    pub fn segment(&self, volume: &Volume) -> Result<Segmentation> {
        self.segment_with_progress(volume, &mut |_| true)
    }

    /// Segments a volume, reporting progress after each batch of slices; the callback returns
    /// `false` to cancel, which ends the call with [`Error::Cancelled`].
    pub fn segment_with_progress(
        &self,
        volume: &Volume,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Segmentation> {
        let started = Instant::now();
        let mut timings = Timings::default();
        let [nx, ny, nz] = volume.dims();
        self.engine.memory_limit().check(self.buffer_bytes(volume.dims()), "segmenting this volume")?;
        let mut probability = try_array3(volume.data().dim(), 0f32, "the probability map")?;
        let batch = for_each_batch(nz, self.config.batch, self.fixed_batch.is_none(), |first, count| {
            let t0 = Instant::now();
            let input = self.input_batch(volume, first, count)?;
            timings.preprocess_s += t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let logits = self.run_network(input)?;
            timings.inference_s += t1.elapsed().as_secs_f64();
            let t2 = Instant::now();
            // Per slice on the engine's threads: the probability, resized to the native grid.
            let slices: Vec<usize> = (0..count).collect();
            let native = self.engine.par_map(&slices, |&i| -> Result<Array2<f32>> {
                let p = self.bleed_probability(logits.index_axis(Axis(0), i))?;
                Ok(resize_bilinear(p.view(), ny, nx))
            });
            for (i, p) in native.into_iter().enumerate() {
                probability.index_axis_mut(Axis(0), first + i).assign(&p?);
            }
            timings.postprocess_s += t2.elapsed().as_secs_f64();
            if !progress(Progress { done: first + count, total: nz }) {
                return Err(Error::Cancelled);
            }
            Ok(())
        })?;
        let t3 = Instant::now();
        let threshold = self.config.threshold;
        let mut mask = try_map3(&probability, "the mask", |&p| u8::from(p >= threshold))?;
        let intracranial = self.config.intracranial_margin_mm.map(|m| intracranial_mask(volume, m)).transpose()?;
        if let Some(ic) = &intracranial {
            zero_outside(&mut probability, &ic.mask)?;
            // Not only the probability: a threshold of 0 would mark the zeros again.
            zero_outside(&mut mask, &ic.mask)?;
        }
        remove_small_lesions(&mut mask, volume.spacing(), self.config.min_lesion_ml)?;
        let lesions = find_lesions(mask.view(), volume.spacing(), &volume.affine());
        let total_volume_ml = total_volume_ml(&lesions);
        let t4 = Instant::now();
        let findings = Findings::on_pool(volume, mask.view(), &lesions, self.engine.pool())?;
        timings.findings_s = t4.elapsed().as_secs_f64();
        timings.postprocess_s += t3.elapsed().as_secs_f64();
        timings.total_s = started.elapsed().as_secs_f64();
        Ok(Segmentation { mask, probability, lesions, total_volume_ml, intracranial, findings, batch, timings })
    }

    /// Bytes of the buffers [`Segmenter::segment`] allocates for a volume of `dims` (None: more
    /// than a usize holds): the probability map, the mask and the lesion labelling (4 + 1 + 4
    /// bytes a voxel), the findings' skull mask, its dilations and a label map (6 more bytes a
    /// voxel at their peak; one more for the intracranial mask when it is on), one batch of
    /// probability slices at the native size and the network input.
    /// The model's weights and activations are not included: they do not grow with the volume.
    pub fn buffer_bytes(&self, dims: [usize; 3]) -> Option<usize> {
        let [nx, ny, nz] = dims;
        let c = &self.config;
        let voxels = nx.checked_mul(ny)?.checked_mul(nz)?;
        let slices = nx.checked_mul(ny)?.checked_mul(c.batch)?.checked_mul(4)?;
        let input =
            c.batch.checked_mul(c.channels)?.checked_mul(c.input_rows)?.checked_mul(c.input_cols)?.checked_mul(4)?;
        let per_voxel = if c.intracranial_margin_mm.is_some() { 16 } else { 15 };
        voxels.checked_mul(per_voxel)?.checked_add(slices)?.checked_add(input)
    }

    /// Runs the network alone on a preprocessed `[B, C, H, W]` batch and returns its first
    /// output (the logits, `[B, K, H', W']`). `B` must equal the configured batch size when
    /// the model file fixes one or the engine is the CPU (the segmenter keeps that one plan);
    /// C, H and W must match [`Segmenter::config`].
    pub fn run_network(&self, input: ndarray::Array4<f32>) -> Result<ndarray::ArrayD<f32>> {
        let c = &self.config;
        let (b, ch, h, w) = input.dim();
        if (ch, h, w) != (c.channels, c.input_rows, c.input_cols) || b == 0 || self.fixed_batch.is_some_and(|f| f != b)
        {
            return Err(Error::arg(format!(
                "network input is [{b}, {ch}, {h}, {w}]; this model takes [{}, {}, {}, {}]",
                self.fixed_batch.map_or("B".to_string(), |f| f.to_string()),
                c.channels,
                c.input_rows,
                c.input_cols
            )));
        }
        let outputs = self.engine.run(&self.plan(b)?, tvec!(Tensor::from(input).into_tvalue()))?;
        let logits = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| Error::Inference(format!("output is not float32: {e}")))?;
        Ok(logits.to_owned())
    }

    /// Windowed, resized, normalised slices `first..first+count` as an `[B, C, H, W]` tensor
    /// (zero-padded up to the model's fixed batch).
    fn input_batch(&self, volume: &Volume, first: usize, count: usize) -> Result<ndarray::Array4<f32>> {
        let c = &self.config;
        let b = if self.fixed_batch.is_some() { c.batch } else { count };
        let spec = InputSpec {
            window: Window { level: c.window_level, width: c.window_width },
            rows: c.input_rows,
            cols: c.input_cols,
            channels: c.channels,
            normalize: c.normalize,
        };
        Ok(model_input(volume, first, count, b, &spec))
    }

    /// Per-pixel bleed probability from one slice's `[K, H, W]` logits.
    fn bleed_probability(&self, logits: ndarray::ArrayViewD<f32>) -> Result<Array2<f32>> {
        let logits = logits
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|_| Error::Inference("network output is not [N, K, H, W]".into()))?;
        Ok(match self.config.activation {
            OutputActivation::Sigmoid => logits.index_axis(Axis(0), 0).mapv(|l| 1.0 / (1.0 + (-l).exp())),
            OutputActivation::Softmax { bleed_index, .. } => {
                let bleed = logits.index_axis(Axis(0), bleed_index);
                // p_b = 1 / sum_k exp(l_k - l_b): stable without a separate max pass
                let mut denom = Array2::<f32>::zeros(bleed.dim());
                for k in logits.axis_iter(Axis(0)) {
                    ndarray::Zip::from(&mut denom).and(&k).and(&bleed).for_each(|d, &lk, &lb| *d += (lk - lb).exp());
                }
                denom.mapv(|d| 1.0 / d)
            }
        })
    }

    /// The optimised tract plan for a batch size, built once and cached.
    fn plan(&self, batch: usize) -> Result<Arc<TypedRunnableModel>> {
        let c = &self.config;
        self.plans.get(&self.engine, &self.model, [batch, c.channels, c.input_rows, c.input_cols])
    }

    fn activation_of(&self, plan: &Arc<TypedRunnableModel>, bleed_option: Option<usize>) -> Result<OutputActivation> {
        let name = &self.model.name;
        let (fact, shape) = crate::model::first_output(plan)?;
        if shape.len() != 4 || fact.datum_type != f32::datum_type() {
            return Err(Error::InvalidModel(format!(
                "{name}: first output is {:?} {:?}; a segmenter must output float32 logits [N, K, H, W]",
                fact.datum_type, fact.shape
            )));
        }
        let classes = shape[1];
        let bleed_index = bleed_option.or(self.model.metadata.bleed_index);
        if classes == 1 {
            return match bleed_index {
                Some(b) if b != 0 => Err(Error::InvalidModel(format!(
                    "{name}: bleed index {b} requested but the model outputs a single (sigmoid) logit"
                ))),
                _ => Ok(OutputActivation::Sigmoid),
            };
        }
        let bleed_index = bleed_index.unwrap_or(1);
        if bleed_index >= classes {
            return Err(Error::InvalidModel(format!(
                "{name}: bleed index {bleed_index} is out of range for {classes} output classes"
            )));
        }
        Ok(OutputActivation::Softmax { classes, bleed_index })
    }
}
