//! Job 1 of METHOD.md: slice-labelled CT volumes and `N >= 1` slice classifiers in, pseudo
//! masks out (SF-CAM -> SCA -> dense CRF).
//!
//! For each classifier `j`, [`PseudoLabeler::new`] builds its gradient graph once
//! ([`crate::model::onnx_grad`]: logits, tap activations `A_i` and `G_i = d y_bleed / d A_i` in
//! one pass) and plans it on the engine. [`PseudoLabeler::label`] then, per volume:
//!
//! 0. for a classifier whose metadata says it was trained on skull-stripped CTs
//!    (`ichseg.skull_strip_mm`), puts air outside the intracranial mask, computed once per
//!    margin on the original CT;
//! 1. windows and resizes every axial slice to the classifier's input (METHOD.md section 2, the
//!    same [`crate::preprocess::model_input`] the segmenter uses) and runs the graph in batches;
//! 2. turns each tap's `(A_i, G_i)` into a CAM at the input size ([`tap_cam`]: SF-CAM by
//!    default, METHOD.md section 3, the first tap amplified by `tanh(lambda * .)`), and resizes
//!    it bilinearly to the native slice grid: `CAM_ji`, `[nz, ny, nx]`;
//! 3. softmax bleed probability per slice and model;
//! 4. fuses (METHOD.md section 4): [`sca::bme`] per tap across models, [`sca::slice_decision`]
//!    (supplied slice labels replace the prediction), [`sca::scf`] per tap (with SCF off, negative
//!    slices are still emptied), [`sca::bla`] across taps;
//! 5. refines every slice that has foreground with the dense CRF ([`crf::refine`]) over the
//!    slice windowed to grey levels ([`crate::preprocess::window_u8`], first classifier's window
//!    and, when it has one, its skull-stripped view).
//!
//! Taps are listed shallow first: tap 0 is "layer 1" (the one SF-CAM amplifies). Every
//! classifier must have the same number of taps (BME averages tap `i` across models).
//!
//! ```
//! use ichseg::{Engine, EngineOptions, OnnxModel, PseudoLabeler, PseudoOptions};
//! # fn main() -> ichseg::Result<()> {
//! let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
//! let engine = Engine::new(&EngineOptions { threads: 1, ..Default::default() })?;
//! let model = OnnxModel::load(&root.join("tests/fixtures/classifier/tiny_classifier.onnx"))?;
//! // This fixture has no ichseg.taps metadata, so the taps are named here.
//! let taps = vec!["/layer1/relu_1/Relu_output_0".into(), "/layer2/relu_1/Relu_output_0".into()];
//! let options = PseudoOptions { taps: vec![taps], ..Default::default() };
//! let labeler = PseudoLabeler::new(&engine, vec![model], &options)?;
//! let scan = ichseg::io::nifti::read(&root.join("tests/fixtures/unet/ct_small.nii.gz"))?;
//! let labels = vec![true; scan.volume.num_slices()]; // slice-level ground truth
//! let pseudo = labeler.label(&scan.volume, Some(&labels))?;
//! assert_eq!(pseudo.mask.dim(), scan.volume.data().dim());
//! assert_eq!(pseudo.fused.len(), 2); // one fused map per tap layer
//! # Ok(()) }
//! ```

use super::batching::{for_each_batch, plan_shrinking};
use super::stripped::ClassifierInputs;
use super::tail::{TailOptions, TailOutput, TailStep};
use crate::alloc::try_array3;
use crate::cam::batch::{batch_maps, f32_view, CamPlace, TapOutputs};
use crate::cam::{self, CamMethod};
use crate::crf::{self, CrfParams};
use crate::error::{Error, Result};
use crate::lesions::check_min_lesion_ml;
use crate::model::runtime::{Engine, PlanCache};
use crate::model::{GradientGraph, GradientOptions, ModelKind, OnnxModel};
use crate::pipeline::options::{check_batch, ModelOverrides, Progress, DEFAULT_INPUT_SIZE};
use crate::pipeline::tuned::{Preset, Tuned, TunedChoices, TunedSettings};
use crate::preprocess::{model_input, window_u8, InputSpec};
use crate::sca::{self, Aggregate, ScfParams};
use crate::skull::intracranial::IntracranialMask;
use crate::volume::{Volume, Window};
use ndarray::{Array2, Array3, Axis, Ix2};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tract_onnx::prelude::*;

/// The most slices the GPU CRF takes in one round, whatever the network batch: each 512x512
/// slice's lattices take tens of MB of host and device memory (docs/BENCHMARKS.md).
#[cfg(feature = "gpu")]
const CRF_GPU_ROUND_MAX: usize = 16;

/// Caller choices for pseudo-labelling. `None` and empty fields fall back to each classifier's
/// metadata (METHOD.md section 8), then to the defaults listed.
#[derive(Debug, Clone)]
pub struct PseudoOptions {
    /// Default [`CamMethod::Sf`].
    pub cam: CamMethod,
    /// SF-CAM's layer-1 amplification `lambda` (default [`cam::DEFAULT_LAMBDA`] = 2).
    pub lambda: f32,
    /// Tap tensor names per classifier, shallow first, in the order of the classifiers; a
    /// missing or empty entry means the model's `ichseg.taps` (for Grad-CAM: `ichseg.deep_tap`).
    pub taps: Vec<Vec<String>>,
    /// Window, input size, channels, normalisation and bleed logit (the gradient target) in
    /// place of each classifier's.
    pub model: ModelOverrides,
    /// Spatial context fusion; default `Some(c = 2, w = 0.5)` (METHOD.md 4.3). `None` skips the
    /// fusion but still empties negative slices.
    pub scf: Option<ScfParams>,
    /// BLA threshold `TH` (METHOD.md 4.4). [`Tuned::Auto`] (the default): the classifiers'
    /// `ichseg.pseudo.threshold`, else [`sca::DEFAULT_THRESHOLD`] = 0.2.
    pub threshold: Tuned<f32>,
    /// BLA aggregation across taps (default OR, METHOD.md 4.4).
    pub aggregate: Aggregate,
    /// Dense CRF refinement; default `Some(CrfParams::default())` (METHOD.md 4.5). `None` skips it.
    /// Its label confidence and bilateral weight are tuned settings: a value changed from
    /// METHOD.md's counts as the caller's choice, one left at it gives way to the classifiers'
    /// metadata (see `crf_confidence`, `crf_bilateral_compat`).
    pub crf: Option<CrfParams>,
    /// The CRF unary's label confidence in (0, 1). [`Tuned::Auto`] (the default): `crf`'s when it
    /// differs from METHOD.md's 0.7, else the classifiers' `ichseg.pseudo.crf_confidence`, else
    /// 0.7. [`Tuned::Set`] wins over both (to keep 0.7 against the metadata).
    pub crf_confidence: Tuned<f32>,
    /// The CRF's bilateral (appearance) Potts weight, > 0; as `crf_confidence`, with the
    /// classifiers' `ichseg.pseudo.crf_bilateral_compat` and METHOD.md's 10.
    pub crf_bilateral_compat: Tuned<f32>,
    /// Intracranial mask, not in METHOD.md: a margin (mm) zeroes the fused maps outside the
    /// skull's inside eroded by it ([`crate::skull::intracranial`]) before BLA and the CRF,
    /// and cuts the CRF's output to it. [`Tuned::Auto`] (the default): the classifiers'
    /// `ichseg.pseudo.intracranial_margin_mm`, else off (the paper's pipeline); `ichseg`
    /// suggests [`crate::skull::intracranial::DEFAULT_MARGIN_MM`].
    pub intracranial_margin_mm: Tuned<f64>,
    /// Bone cut, not in METHOD.md: drop from the final mask every voxel above this CT value
    /// (HU), see [`bone_cut`]. [`Tuned::Auto`]: the classifiers' `ichseg.pseudo.max_hu`, else off.
    pub max_hu: Tuned<f32>,
    /// Blood-density cut, not in METHOD.md: drop from the final mask every voxel below this CT
    /// value (HU), after the bone cut, see [`min_hu_cut`]. [`Tuned::Auto`]: the classifiers'
    /// `ichseg.pseudo.min_hu`, else off.
    pub min_hu: Tuned<f32>,
    /// Small-lesion filter, not in METHOD.md: lesions (3D components) smaller than this many
    /// millilitres leave the final mask, after the bone cut and the blood-density cut
    /// ([`crate::lesions::remove_small_lesions`]); 0 keeps every lesion. [`Tuned::Auto`]: the
    /// classifiers' `ichseg.pseudo.min_lesion_ml`, else 0.
    pub min_lesion_ml: Tuned<f64>,
    /// What the tuned settings above follow when left [`Tuned::Auto`]: the classifiers'
    /// metadata ([`Preset::Model`], the default) or METHOD.md exactly ([`Preset::Paper`]).
    pub preset: Preset,
    /// Slices per network run (default 1), and per round of the dense CRF on the GPU (at most 16).
    pub batch: usize,
}

impl Default for PseudoOptions {
    fn default() -> Self {
        PseudoOptions {
            cam: CamMethod::Sf,
            lambda: cam::DEFAULT_LAMBDA,
            taps: vec![],
            model: ModelOverrides::default(),
            scf: Some(ScfParams::default()),
            threshold: Tuned::Auto,
            aggregate: Aggregate::Or,
            crf: Some(CrfParams::default()),
            crf_confidence: Tuned::Auto,
            crf_bilateral_compat: Tuned::Auto,
            intracranial_margin_mm: Tuned::Auto,
            max_hu: Tuned::Auto,
            min_hu: Tuned::Auto,
            min_lesion_ml: Tuned::Auto,
            preset: Preset::Model,
            batch: 1,
        }
    }
}

/// The settings one classifier actually runs with, after metadata and defaults were resolved.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassifierConfig {
    pub name: String,
    /// Tap layer names (from `ichseg.taps`, else the tensor names), shallow first.
    pub layers: Vec<String>,
    /// Tap tensor names, in the same order.
    pub taps: Vec<String>,
    pub bleed_index: usize,
    pub classes: usize,
    pub window_level: f32,
    pub window_width: f32,
    pub input_rows: usize,
    pub input_cols: usize,
    pub channels: usize,
    pub normalize: Option<(f32, f32)>,
    /// Air outside the intracranial mask eroded by this margin (mm) before windowing, from
    /// `ichseg.skull_strip_mm`: how the model was trained ([`crate::skull::intracranial::strip_outside`]).
    pub skull_strip_mm: Option<f64>,
    pub batch: usize,
}

/// Wall-clock seconds per stage of one [`PseudoLabeler::label`] call.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PseudoTimings {
    pub preprocess_s: f64,
    pub inference_s: f64,
    /// CAMs from activations and gradients, and their resize to the native grid.
    pub cam_s: f64,
    /// BME, slice decision, SCF, BLA.
    pub fusion_s: f64,
    pub crf_s: f64,
    pub total_s: f64,
}

/// The pseudo label of one volume; every array is `[nz, ny, nx]` on the volume's native grid.
#[derive(Debug, Clone)]
pub struct PseudoLabel {
    /// 1 = hemorrhage, 0 = background (after the CRF when it is on).
    pub mask: Array3<u8>,
    /// `cams[j][i]`: classifier `j`'s CAM at tap `i` (`CAM_ji`, values in `[0, 1]`), before fusion.
    pub cams: Vec<Vec<Array3<f32>>>,
    /// `fused[i]`: tap `i`'s map after BME and SCF (`SCAM_i`; zero on negative slices), the map
    /// BLA thresholds.
    pub fused: Vec<Array3<f32>>,
    /// `slice_probabilities[j][z]`: classifier `j`'s softmax bleed probability of slice `z`.
    pub slice_probabilities: Vec<Vec<f32>>,
    /// The slice decision used: the supplied labels, else the mean probability `>= 0.5`.
    pub positive: Vec<bool>,
    /// Where the CAMs were computed: `"cuda"` (the GPU kernels of the CUDA path) or `"cpu"`.
    pub cam_device: &'static str,
    /// Whether the GPU CAM kernels read every tap's activations and gradients in place, where
    /// the networks left them on the device (no round trip through the host); `false` when any
    /// tap went through the host, and on the CPU.
    pub taps_on_device: bool,
    /// Where the dense CRF's mean-field iterations ran: `"cuda"` (the GPU kernels, when networks
    /// run on CUDA) or `"cpu"` (also when the CRF is off).
    pub crf_device: &'static str,
    /// Slices per network run at the end (the smallest over the classifiers): the configured
    /// batch, or less when the GPU ran out of memory and it was halved ([`Error::DeviceMemory`]).
    pub batch: usize,
    /// The intracranial mask the maps and the mask were cut to, when that option is on.
    pub intracranial: Option<IntracranialMask>,
    pub timings: PseudoTimings,
}

/// One classifier: its gradient graph and the tract plans built for it.
struct Classifier {
    config: ClassifierConfig,
    graph: OnnxModel,
    spec: InputSpec,
    fixed_batch: Option<usize>,
    plans: PlanCache,
}

/// Makes pseudo masks from slice classifiers (METHOD.md job 1); see the [module docs](self).
///
/// Safe to share between threads: concurrent calls run concurrently on the engine's pool.
pub struct PseudoLabeler {
    engine: Engine,
    classifiers: Vec<Classifier>,
    options: PseudoOptions,
    /// The tuned settings as resolved against the classifiers' metadata.
    settings: TunedSettings,
    /// The window of the CRF's grey image (the first classifier's).
    crf_window: Window,
}

impl std::fmt::Debug for PseudoLabeler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PseudoLabeler").field("classifiers", &self.configs()).field("options", &self.options).finish()
    }
}

impl PseudoLabeler {
    /// Checks the options and the classifiers, builds each classifier's gradient graph and plan.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for no classifiers, out-of-range options, more tap lists than
    /// classifiers, or classifiers with different numbers of taps; [`Error::InvalidModel`] for a
    /// model that is not a classifier (segmenter metadata, or an output other than logits
    /// `[N, K]`) or that cannot be planned; errors of [`GradientGraph::build`] for unknown taps
    /// or a model without taps.
    pub fn new(engine: &Engine, classifiers: Vec<OnnxModel>, options: &PseudoOptions) -> Result<Self> {
        check_options(options, classifiers.len())?;
        let tuned: Vec<_> = classifiers.iter().map(|m| (m.name.clone(), m.metadata.pseudo)).collect();
        let settings = TunedSettings::resolve(&options.tuned_choices(), &tuned)?;
        tail_options(options, &settings).check()?;
        let built: Vec<Classifier> = classifiers
            .into_iter()
            .enumerate()
            .map(|(j, model)| Classifier::new(engine, model, options.taps.get(j).map(Vec::as_slice), options))
            .collect::<Result<_>>()?;
        let first = &built[0].config;
        for (j, c) in built.iter().enumerate().skip(1) {
            if c.config.taps.len() != first.taps.len() {
                return Err(Error::arg(format!(
                    "classifier {j} ({}) has {} tap(s) but classifier 0 ({}) has {}: the ensemble averages tap i across models, so every classifier needs as many taps",
                    c.config.name,
                    c.config.taps.len(),
                    first.name,
                    first.taps.len()
                )));
            }
        }
        let crf_window = built[0].spec.window;
        cam::batch::prepare(engine, options.cam);
        Ok(PseudoLabeler { engine: engine.clone(), classifiers: built, options: options.clone(), settings, crf_window })
    }

    /// The number of tap layers: the length of [`PseudoLabel::fused`] (the same for every
    /// classifier).
    pub fn layer_count(&self) -> usize {
        self.classifiers[0].config.taps.len()
    }

    /// The distinct `ichseg.skull_strip_mm` margins of the classifiers.
    pub(super) fn strip_margins(&self) -> Vec<f64> {
        let mut margins: Vec<f64> = Vec::new();
        for m in self.classifiers.iter().filter_map(|c| c.config.skull_strip_mm) {
            if !margins.contains(&m) {
                margins.push(m);
            }
        }
        margins
    }

    /// The `ichseg.skull_strip_mm` of the first classifier, whose window (and so whose view of
    /// the CT) the CRF's grey image uses.
    pub(super) fn crf_strip_mm(&self) -> Option<f64> {
        self.classifiers[0].config.skull_strip_mm
    }

    /// Bytes of the buffers [`PseudoLabeler::label`] allocates for a volume of `dims` (None: more
    /// than a usize holds): every classifier's map per tap, the fused maps (4 bytes a voxel
    /// each), the mask and its lesion labelling (1 + 4 bytes a voxel), the intracranial mask
    /// when it is on (1 byte a voxel), and a skull-stripped copy and its mask per margin of
    /// `ichseg.skull_strip_mm` in use (4 + 1 bytes a voxel). The networks' weights and
    /// activations and the CRF's per-slice work are not included: they do not grow with the
    /// number of slices.
    pub fn buffer_bytes(&self, dims: [usize; 3]) -> Option<usize> {
        let voxels = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
        let maps = self.classifiers.iter().map(|c| c.config.taps.len()).sum::<usize>() + self.layer_count();
        let masks = if self.settings.intracranial_margin_mm.value.is_some() { 6 } else { 5 };
        let stripped = 5 * self.strip_margins().len();
        voxels.checked_mul(maps.checked_mul(4)?.checked_add(masks + stripped)?)
    }

    /// [`PseudoLabeler::new`] with the classifiers loaded from `.onnx` files.
    pub fn from_paths<P: AsRef<Path>>(engine: &Engine, paths: &[P], options: &PseudoOptions) -> Result<Self> {
        let models = paths.iter().map(|p| OnnxModel::load(p.as_ref())).collect::<Result<Vec<_>>>()?;
        Self::new(engine, models, options)
    }

    /// The resolved settings of each classifier, in order.
    pub fn configs(&self) -> Vec<ClassifierConfig> {
        self.classifiers.iter().map(|c| c.config.clone()).collect()
    }
    /// The options as given.
    pub fn options(&self) -> &PseudoOptions {
        &self.options
    }
    /// The tuned settings in use (threshold, intracranial mask, bone cut, small-lesion filter),
    /// each with where it came from.
    pub fn settings(&self) -> &TunedSettings {
        &self.settings
    }
    /// The engine (device, threads) it runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
    /// Classifier `j`'s gradient graph as planned (outputs as in [`crate::model::onnx_grad`]).
    pub fn gradient_model(&self, j: usize) -> Option<&OnnxModel> {
        self.classifiers.get(j).map(|c| &c.graph)
    }

    /// Pseudo-labels a volume; `slice_labels` (one per axial slice, `true` = bleeding) replace
    /// the classifiers' slice decision when given.
    pub fn label(&self, volume: &Volume, slice_labels: Option<&[bool]>) -> Result<PseudoLabel> {
        self.label_with_progress(volume, slice_labels, &mut |_| true)
    }

    /// [`PseudoLabeler::label`], reporting progress after each batch of slices per classifier
    /// and each round of CRF slices (`total` = slices x classifiers, plus slices when the CRF is
    /// on; the CRF's empty slices count at once, then a round per `threads` slices, or per slice
    /// batch on the GPU); the
    /// callback returns `false` to cancel, which ends the call with [`Error::Cancelled`].
    pub fn label_with_progress(
        &self,
        volume: &Volume,
        slice_labels: Option<&[bool]>,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<PseudoLabel> {
        let started = Instant::now();
        let nz = volume.num_slices();
        self.engine.memory_limit().check(self.buffer_bytes(volume.dims()), "pseudo-labelling this volume")?;
        if let Some(labels) = slice_labels {
            if labels.len() != nz {
                return Err(Error::arg(format!(
                    "{} slice label(s) given for a volume of {nz} slice(s); give one label per axial slice",
                    labels.len()
                )));
            }
        }
        let crf_steps = if self.options.crf.is_some() { nz } else { 0 };
        let mut ticker = Ticker { done: 0, total: nz * self.classifiers.len() + crf_steps, progress };
        let mut timings = PseudoTimings::default();
        let mut cams = Vec::with_capacity(self.classifiers.len());
        let mut slice_probabilities = Vec::with_capacity(self.classifiers.len());
        let mut cam_place = CamPlace::new();
        let mut batch = usize::MAX;
        let t = Instant::now();
        let mut inputs = ClassifierInputs::new(volume, &self.strip_margins())?;
        timings.preprocess_s += t.elapsed().as_secs_f64();
        for c in &self.classifiers {
            let input = inputs.for_margin(c.config.skull_strip_mm);
            let (probs, maps, used) = self.run_classifier(c, input, &mut timings, &mut ticker, &mut cam_place)?;
            batch = batch.min(used);
            slice_probabilities.push(probs);
            cams.push(maps);
        }
        let t = Instant::now();
        let probs: Vec<&[f32]> = slice_probabilities.iter().map(Vec::as_slice).collect();
        let positive = sca::slice_decision(&probs, slice_labels)?;
        let ensemble = (0..cams[0].len())
            .map(|i| sca::bme(&cams.iter().map(|m| m[i].view()).collect::<Vec<_>>()))
            .collect::<Result<Vec<_>>>()?;
        // Fusion is SCF + BLA; the CRF's time runs from there to its own end.
        let (mut fused_at, mut crf_at) = (None, None);
        let TailOutput { fused, mask, crf_device, intracranial } = self.tail(
            &mut inputs,
            ensemble,
            &positive,
            &self.tail_options(),
            &mut ticker,
            &mut |step, _| match step {
                TailStep::Bla => fused_at = Some(Instant::now()),
                TailStep::Crf => crf_at = Some(Instant::now()),
                _ => {}
            },
        )?;
        if let Some(f) = fused_at {
            timings.fusion_s = (f - t).as_secs_f64();
            timings.crf_s = crf_at.map_or(0.0, |c| (c - f).as_secs_f64());
        }
        timings.total_s = started.elapsed().as_secs_f64();
        let (cam_device, taps_on_device) = (cam_place.device(), cam_place.taps_on_device());
        Ok(PseudoLabel {
            mask,
            cams,
            fused,
            slice_probabilities,
            positive,
            cam_device,
            taps_on_device,
            crf_device,
            batch,
            intracranial,
            timings,
        })
    }

    /// Runs one classifier over all slices: its bleed probability per slice and its CAM per tap
    /// on the native grid.
    fn run_classifier(
        &self,
        c: &Classifier,
        volume: &Volume,
        timings: &mut PseudoTimings,
        ticker: &mut Ticker,
        cam_place: &mut CamPlace,
    ) -> Result<(Vec<f32>, Vec<Array3<f32>>, usize)> {
        let nz = volume.num_slices();
        let cfg = &c.config;
        let mut probs = Vec::with_capacity(nz);
        let mut maps = (0..cfg.taps.len())
            .map(|_| try_array3(volume.data().dim(), 0f32, "a class activation map"))
            .collect::<Result<Vec<_>>>()?;
        let batch = for_each_batch(nz, cfg.batch, c.fixed_batch.is_none(), |first, count| {
            let t = Instant::now();
            let input = model_input(volume, first, count, c.fixed_batch.unwrap_or(count), &c.spec);
            timings.preprocess_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let plan = c.plan(&self.engine, input.dim().0)?;
            // The logits come to the host; the taps may stay on the GPU for the CAM kernels.
            let input = tvec!(Tensor::from(input).into_tvalue());
            let outputs = self.engine.run_leaving_on_device(&plan, input, &|output| output > 0)?;
            timings.inference_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let logits = f32_view(&outputs[0], &cfg.name, "logits")?
                .into_dimensionality::<Ix2>()
                .map_err(|_| Error::Inference(format!("{}: logits are not [N, K]", cfg.name)))?;
            let batch_probs =
                (0..count).map(|b| c.bleed_probability(logits.index_axis(Axis(0), b))).collect::<Result<Vec<_>>>()?;
            let taps = TapOutputs {
                outputs: &outputs,
                model: &cfg.name,
                taps: &cfg.taps,
                count,
                input: (cfg.input_rows, cfg.input_cols),
                native: (volume.data().dim().1, volume.data().dim().2),
            };
            let batch = batch_maps(&self.engine, self.options.cam, self.options.lambda, &taps)?;
            cam_place.add(&batch);
            for (map, tap) in maps.iter_mut().zip(batch.maps) {
                map.slice_mut(ndarray::s![first..first + count, .., ..]).assign(&tap);
            }
            timings.cam_s += t.elapsed().as_secs_f64();
            probs.extend(batch_probs);
            ticker.advance(count)
        })?;
        Ok((probs, maps, batch))
    }

    /// The labeller's own tail settings.
    fn tail_options(&self) -> TailOptions {
        tail_options(&self.options, &self.settings)
    }

    /// Dense CRF over every slice with foreground ([`refine_in_rounds`]); returns where it ran.
    /// The slices are independent and go a round at a time, so progress (and cancelling) stays
    /// per round and memory stays bounded: on the CPU a round is `threads` slices, refined in
    /// parallel; on the GPU (networks on CUDA and the CRF kernels load) it is the slice batch, at
    /// most [`CRF_GPU_ROUND_MAX`], whose lattices are built on the engine's threads and whose
    /// mean-field iterations then run in one go on the device.
    pub(super) fn refine(
        &self,
        volume: &Volume,
        mask: &mut Array3<u8>,
        params: &CrfParams,
        ticker: &mut Ticker,
    ) -> Result<&'static str> {
        let image = |z: usize| window_u8(volume.slice(z), self.crf_window);
        // The smoothness kernel depends only on the slice grid: built once, when first needed.
        let smoothness = std::sync::OnceLock::new();
        let (ny, nx) = (mask.dim().1, mask.dim().2);
        let smoothness = || smoothness.get_or_init(|| crf::smoothness_kernel((ny, nx), params));
        let cpu = |z: usize, mask: &Array3<u8>| {
            let (image, labels) = (image(z), mask.index_axis(Axis(0), z));
            crf::check(image.view(), labels, params)?;
            crf::refine_with(image.view(), labels, params, smoothness())
        };
        // On the GPU when networks run on CUDA and the CRF kernels load.
        #[cfg(feature = "gpu")]
        if self.engine.is_cuda() && crf::cuda::available().is_ok() {
            let gpu =
                |round: &[usize], mask: &Array3<u8>| self.refine_on_gpu(round, &image, smoothness(), mask, params);
            let round = self.options.batch.min(CRF_GPU_ROUND_MAX);
            return refine_in_rounds(&self.engine, mask, round, Some(&gpu), &cpu, ticker);
        }
        refine_in_rounds(&self.engine, mask, self.engine.threads(), None, &cpu, ticker)
    }

    /// One round of slices through [`crf::cuda::mean_field`], their lattices built on the
    /// engine's threads; `None` when the GPU fails on it (out of memory or otherwise).
    #[cfg(feature = "gpu")]
    fn refine_on_gpu(
        &self,
        round: &[usize],
        image: &(dyn Fn(usize) -> Array2<u8> + Sync),
        smoothness: &crf::Kernel,
        mask: &Array3<u8>,
        params: &CrfParams,
    ) -> Result<Option<Vec<Array2<u8>>>> {
        let appearance = self.engine.par_map(round, |&z| -> Result<crf::Kernel> {
            let image = image(z);
            crf::check(image.view(), mask.index_axis(Axis(0), z), params)?;
            Ok(crf::appearance_kernel(image.view(), params))
        });
        let appearance = appearance.into_iter().collect::<Result<Vec<_>>>()?;
        let kernels: Vec<[&crf::Kernel; 2]> = appearance.iter().map(|a| [smoothness, a]).collect();
        let labels: Vec<u8> = round.iter().flat_map(|&z| mask.index_axis(Axis(0), z).into_iter().copied()).collect();
        // Any GPU failure (no memory, a launch error) leaves the CRF to the CPU, which computes
        // the same masks; the report's crf_device then says "cpu".
        let Ok(flat) = crf::cuda::mean_field(&labels, &kernels, params) else {
            return Ok(None);
        };
        let (ny, nx) = (mask.dim().1, mask.dim().2);
        let slices =
            flat.chunks_exact(ny * nx).map(|s| Array2::from_shape_vec((ny, nx), s.to_vec()).expect("slice size"));
        Ok(Some(slices.collect()))
    }
}

/// The suggested bone cut in HU (`ichseg ship` uses it; the C options default to it when the cut
/// is turned on): the best of the cuts tried on the phantoms' val split (docs/RESULTS.md).
pub const DEFAULT_MAX_HU: f32 = 100.0;

/// The blood-density cut's CT value where a caller turns it on without one (the C ABI's
/// default `min_hu`): the best of the cuts tried on the phantoms' val split (docs/RESULTS.md).
pub const SUGGESTED_MIN_HU: f32 = 42.0;

/// The bone cut: clears every voxel of `mask` whose CT value in `volume` exceeds `max_hu`.
/// Blood is 50-90 HU, bone far above the brain window's top (115 HU); without the cut the dense
/// CRF grows the CAMs' ring along the skull's inner table into the whole bone ring, which is one
/// saturated grey in the window (how much of the phantoms' pseudo masks that is, and what the
/// cut is worth: docs/RESULTS.md).
pub fn bone_cut(volume: &Volume, mask: &mut Array3<u8>, max_hu: f32) -> Result<()> {
    clear_where(volume, mask, ("bone cut", "max_hu"), max_hu, |hu| hu > max_hu)
}

/// The blood-density cut: clears every voxel of `mask` whose CT value in `volume` is below
/// `min_hu`. Acute blood is denser than the brain around it; the CAMs and the CRF spread over
/// that brain, which this cut gives back (what it is worth: docs/RESULTS.md).
pub fn min_hu_cut(volume: &Volume, mask: &mut Array3<u8>, min_hu: f32) -> Result<()> {
    clear_where(volume, mask, ("blood-density cut", "min_hu"), min_hu, |hu| hu < min_hu)
}

/// Clears the voxels of `mask` whose CT value `drop` says to; `(step, bound)` name the cut and
/// its bound `hu` in errors.
fn clear_where(
    volume: &Volume,
    mask: &mut Array3<u8>,
    (step, bound): (&str, &str),
    hu: f32,
    drop: impl Fn(f32) -> bool,
) -> Result<()> {
    if !hu.is_finite() {
        return Err(Error::arg(format!("{step}: {bound} must be a finite HU value, got {hu}")));
    }
    if mask.dim() != volume.data().dim() {
        return Err(Error::arg(format!(
            "{step}: mask is {:?} but the volume is {:?} ([nz, ny, nx])",
            mask.shape(),
            volume.data().shape()
        )));
    }
    ndarray::Zip::from(mask).and(volume.data()).for_each(|m, &v| {
        if drop(v) {
            *m = 0;
        }
    });
    Ok(())
}

/// The GPU CRF of a round of slices ([`PseudoLabeler::refine_on_gpu`]); `None` when the GPU
/// failed on it.
type GpuRound<'a> = dyn Fn(&[usize], &Array3<u8>) -> Result<Option<Vec<Array2<u8>>>> + 'a;
/// The CPU CRF of one slice.
type CpuSlice<'a> = dyn Fn(usize, &Array3<u8>) -> Result<Array2<u8>> + Sync + 'a;

/// The CRF over every slice of `mask` with foreground, `round` slices at a time: on the GPU
/// while `gpu` is given and succeeds, then on the CPU (a round's slices on the engine's
/// threads). Empty slices are skipped; progress is reported per round. Returns where the last
/// round ran.
fn refine_in_rounds(
    engine: &Engine,
    mask: &mut Array3<u8>,
    round: usize,
    mut gpu: Option<&GpuRound>,
    cpu: &CpuSlice,
    ticker: &mut Ticker,
) -> Result<&'static str> {
    let (todo, empty): (Vec<usize>, Vec<usize>) =
        (0..mask.dim().0).partition(|&z| mask.index_axis(Axis(0), z).iter().any(|&v| v != 0));
    if !empty.is_empty() {
        ticker.advance(empty.len())?;
    }
    for slices in todo.chunks(round.max(1)) {
        let mut refined = None;
        if let Some(on_gpu) = gpu {
            refined = on_gpu(slices, mask)?;
            if refined.is_none() {
                gpu = None;
            }
        }
        let refined = match refined {
            Some(r) => r,
            None => engine.par_map(slices, |&z| cpu(z, mask)).into_iter().collect::<Result<Vec<_>>>()?,
        };
        for (&z, slice) in slices.iter().zip(refined) {
            mask.index_axis_mut(Axis(0), z).assign(&slice);
        }
        ticker.advance(slices.len())?;
    }
    Ok(if gpu.is_some() { "cuda" } else { "cpu" })
}

/// Counts finished steps and asks the caller's callback whether to go on.
pub(super) struct Ticker<'a> {
    pub(super) done: usize,
    pub(super) total: usize,
    pub(super) progress: &'a mut dyn FnMut(Progress) -> bool,
}

impl Ticker<'_> {
    fn advance(&mut self, steps: usize) -> Result<()> {
        self.done += steps;
        if (self.progress)(Progress { done: self.done, total: self.total }) {
            Ok(())
        } else {
            Err(Error::Cancelled)
        }
    }
}

impl PseudoOptions {
    fn tuned_choices(&self) -> TunedChoices {
        let paper = CrfParams::default();
        let crf = self.crf.as_ref().unwrap_or(&paper);
        // A CRF value the caller changed is their choice; one left at METHOD.md's is not.
        let changed = |choice: Tuned<f32>, value: f32, default: f32| match choice {
            Tuned::Auto if value != default => Tuned::Set(value),
            c => c,
        };
        TunedChoices {
            preset: self.preset,
            threshold: self.threshold,
            intracranial_margin_mm: self.intracranial_margin_mm,
            max_hu: self.max_hu,
            min_hu: self.min_hu,
            min_lesion_ml: self.min_lesion_ml,
            crf_confidence: changed(self.crf_confidence, crf.label_confidence, paper.label_confidence),
            crf_bilateral_compat: changed(self.crf_bilateral_compat, crf.bilateral_compat, paper.bilateral_compat),
        }
    }
}

/// The tail settings of `o` with its tuned settings resolved.
fn tail_options(o: &PseudoOptions, s: &TunedSettings) -> TailOptions {
    TailOptions {
        scf: o.scf,
        threshold: s.threshold(),
        aggregate: o.aggregate,
        crf: o.crf.as_ref().map(|c| s.crf(c)),
        intracranial_margin_mm: s.intracranial_margin_mm.value,
        max_hu: s.max_hu.value,
        min_hu: s.min_hu.value,
        min_lesion_ml: s.min_lesion_ml.value.filter(|&ml| ml != 0.0),
    }
}

fn check_options(options: &PseudoOptions, classifiers: usize) -> Result<()> {
    if classifiers == 0 {
        return Err(Error::arg("pseudo-labelling needs at least one classifier"));
    }
    if options.taps.len() > classifiers {
        return Err(Error::arg(format!(
            "{} tap list(s) given for {classifiers} classifier(s); give at most one per classifier",
            options.taps.len()
        )));
    }
    // The tail sees the filter only when it is on: check the value as given first.
    if let Tuned::Set(ml) = options.min_lesion_ml {
        check_min_lesion_ml(ml)?;
    }
    if !(options.lambda.is_finite() && options.lambda >= 0.0) {
        return Err(Error::arg(format!("lambda must be finite and >= 0, got {}", options.lambda)));
    }
    check_batch(options.batch)?;
    options.model.check()
}

impl Classifier {
    fn new(engine: &Engine, model: OnnxModel, taps: Option<&[String]>, options: &PseudoOptions) -> Result<Self> {
        let name = model.name.clone();
        let meta = &model.metadata;
        if meta.kind == Some(ModelKind::Segmenter) {
            return Err(Error::InvalidModel(format!(
                "{name} is a segmenter (ichseg.kind = segmenter); pseudo-labelling needs slice classifiers"
            )));
        }
        let input = model.inputs.first().filter(|_| model.inputs.len() == 1).ok_or_else(|| {
            Error::InvalidModel(format!(
                "{name} has {} inputs; a classifier takes exactly one image input [N, C, H, W]",
                model.inputs.len()
            ))
        })?;
        let (layers, tensors) = resolve_taps(&model, taps, options.cam)?;
        let bleed_index = options.model.bleed_index.or(meta.bleed_index).unwrap_or(1);
        let declared = input.fixed_dim(2).zip(input.fixed_dim(3));
        let size = match (declared, options.model.input_size) {
            (Some(d), Some(o)) if d != o => {
                return Err(Error::InvalidModel(format!(
                    "{name}: input size {}x{} was requested but the model input is fixed at {}x{}",
                    o.0, o.1, d.0, d.1
                )))
            }
            (Some(d), _) => d,
            (None, o) => o.or(meta.input_size).unwrap_or(DEFAULT_INPUT_SIZE),
        };
        let channels = match input.fixed_dim(1) {
            Some(_) => options.model.channels,
            None => Some(options.model.channels.or(meta.channels).unwrap_or(1)),
        };
        let grad_options = GradientOptions {
            target: bleed_index,
            taps: tensors.clone(),
            input_size: Some(size),
            channels,
            ..Default::default()
        };
        if model.bytes().is_empty() {
            return Err(Error::arg(format!(
                "{}: its encoded file was released (OnnxModel::release_source): load the model again",
                model.name
            )));
        }
        let graph = GradientGraph::build(model.bytes(), &model.name, &grad_options)?;
        let [_, channels, rows, cols] = graph.input_shape;
        if channels != 1 && channels != 3 {
            return Err(Error::InvalidModel(format!("{name}: {channels} input channels; expected 1 or 3")));
        }
        let graph_model = graph.model(&format!("{name} (gradients)"))?;
        let fixed_batch = input.fixed_dim(0);
        let spec = InputSpec {
            window: options.model.window.or(meta.window).unwrap_or_default(),
            rows,
            cols,
            channels,
            normalize: options.model.normalize.or(meta.normalize),
        };
        let classifier = Classifier {
            config: ClassifierConfig {
                name,
                layers,
                taps: tensors,
                bleed_index,
                classes: 0, // from the plan's output shape, below
                window_level: spec.window.level,
                window_width: spec.window.width,
                input_rows: rows,
                input_cols: cols,
                channels,
                normalize: spec.normalize,
                skull_strip_mm: meta.skull_strip_mm,
                batch: fixed_batch.unwrap_or(options.batch),
            },
            graph: graph_model,
            spec,
            fixed_batch,
            plans: PlanCache::default(),
        };
        let can_shrink = classifier.fixed_batch.is_none();
        let plan = plan_shrinking(classifier.config.batch, can_shrink, |b| classifier.plan(engine, b))?;
        let classes = classifier.logit_count(&plan)?;
        Ok(Classifier { config: ClassifierConfig { classes, ..classifier.config.clone() }, ..classifier })
    }

    /// The optimised plan for a batch size, built once and cached.
    fn plan(&self, engine: &Engine, batch: usize) -> Result<Arc<TypedRunnableModel>> {
        let s = &self.spec;
        self.plans.get(engine, &self.graph, [batch, s.channels, s.rows, s.cols])
    }

    /// `K` of the `[N, K]` logits, checking the model is a classifier with the bleed class.
    fn logit_count(&self, plan: &Arc<TypedRunnableModel>) -> Result<usize> {
        let name = &self.config.name;
        let (fact, shape) = crate::model::first_output(plan)?;
        if shape.len() != 2 || fact.datum_type != f32::datum_type() {
            return Err(Error::InvalidModel(format!(
                "{name} is not a slice classifier: its first output is {:?} {:?}, expected float32 logits [N, K]",
                fact.datum_type, fact.shape
            )));
        }
        let (classes, bleed) = (shape[1], self.config.bleed_index);
        if classes == 1 && bleed != 0 {
            return Err(Error::InvalidModel(format!(
                "{name}: bleed index {bleed} requested but the model outputs a single (sigmoid) logit"
            )));
        }
        if classes > 1 && bleed >= classes {
            return Err(Error::InvalidModel(format!(
                "{name}: bleed index {bleed} is out of range for {classes} output logits"
            )));
        }
        Ok(classes)
    }

    /// Softmax probability of the bleed logit (sigmoid for a single logit).
    fn bleed_probability(&self, logits: ndarray::ArrayView1<f32>) -> Result<f32> {
        let b = self.config.bleed_index;
        let lb = *logits.get(b).ok_or_else(|| Error::Inference(format!("{}: no logit {b}", self.config.name)))?;
        if logits.len() == 1 {
            return Ok(1.0 / (1.0 + (-lb).exp()));
        }
        // p_b = 1 / sum_k exp(l_k - l_b)
        Ok(1.0 / logits.iter().map(|&l| (l - lb).exp()).sum::<f32>())
    }
}

/// `(layer names, tensor names)`: the caller's tensors, else `ichseg.taps` (Grad-CAM:
/// `ichseg.deep_tap`).
fn resolve_taps(model: &OnnxModel, taps: Option<&[String]>, method: CamMethod) -> Result<(Vec<String>, Vec<String>)> {
    if let Some(t) = taps.filter(|t| !t.is_empty()) {
        return Ok((t.to_vec(), t.to_vec()));
    }
    let meta = &model.metadata;
    if method == CamMethod::Grad {
        return match &meta.deep_tap {
            Some(t) => Ok((vec!["deep".into()], vec![t.clone()])),
            None => Err(Error::arg(format!(
                "{}: Grad-CAM needs a deep tap: the model has no ichseg.deep_tap, name the tap tensor",
                model.name
            ))),
        };
    }
    if meta.taps.is_empty() {
        return Err(Error::arg(format!(
            "{}: no taps given and the model has no ichseg.taps metadata (name the tap tensors; `ichseg inspect` lists candidates)",
            model.name
        )));
    }
    Ok(meta.taps.iter().cloned().unzip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineOptions;
    use std::cell::Cell;

    /// A 5-slice mask whose slices 1 and 3 are empty, and a "CRF" that adds 1 to every voxel.
    #[allow(clippy::type_complexity)] // an `impl Fn` cannot be named by a type alias
    fn case() -> (Engine, Array3<u8>, impl Fn(usize, &Array3<u8>) -> Result<Array2<u8>> + Sync) {
        let engine = Engine::new(&EngineOptions { threads: 2, ..Default::default() }).unwrap();
        let mask = Array3::from_shape_fn((5, 3, 4), |(z, y, x)| u8::from(z % 2 == 0 && x == y));
        let plus_one = |z: usize, m: &Array3<u8>| Ok(m.index_axis(Axis(0), z).mapv(|v| v + 1));
        (engine, mask, plus_one)
    }

    fn run(
        engine: &Engine,
        mask: &mut Array3<u8>,
        round: usize,
        gpu: Option<&GpuRound>,
        cpu: &CpuSlice,
    ) -> (Result<&'static str>, Vec<usize>) {
        let mut seen = vec![];
        let mut progress = |p: Progress| {
            seen.push(p.done);
            true
        };
        let mut ticker = Ticker { done: 0, total: 5, progress: &mut progress };
        let device = refine_in_rounds(engine, mask, round, gpu, cpu, &mut ticker);
        (device, seen)
    }

    #[test]
    fn crf_rounds_skip_empty_slices_and_refine_each_other_slice_once() {
        let (engine, mut mask, cpu) = case();
        let before = mask.clone();
        let (device, seen) = run(&engine, &mut mask, 2, None, &cpu);
        assert_eq!(device.unwrap(), "cpu");
        for z in 0..5 {
            let want = if z % 2 == 0 { before.index_axis(Axis(0), z).mapv(|v| v + 1) } else { Array2::zeros((3, 4)) };
            assert_eq!(mask.index_axis(Axis(0), z), want, "slice {z}");
        }
        // the two empty slices at once, then rounds of 2 and 1 of the three others
        assert_eq!(seen, [2, 4, 5]);
    }

    #[test]
    fn a_gpu_failure_moves_the_rest_to_the_cpu() {
        let (engine, mut mask, cpu) = case();
        let want = {
            let mut m = mask.clone();
            run(&engine, &mut m, 1, None, &cpu).0.unwrap();
            m
        };
        // The GPU takes the first round, then has no memory: the other rounds run on the CPU.
        let calls = Cell::new(0);
        let gpu = |slices: &[usize], m: &Array3<u8>| {
            calls.set(calls.get() + 1);
            Ok((calls.get() == 1).then(|| slices.iter().map(|&z| m.index_axis(Axis(0), z).mapv(|v| v + 1)).collect()))
        };
        let (device, _) = run(&engine, &mut mask, 1, Some(&gpu), &cpu);
        assert_eq!((device.unwrap(), calls.get()), ("cpu", 2));
        assert_eq!(mask, want);
        // A GPU that succeeds keeps every round; an error of the round itself (a slice the CRF
        // refuses, checked before the GPU runs) ends the call.
        let (_, mut mask, _) = case();
        let all = |slices: &[usize], m: &Array3<u8>| {
            Ok(Some(slices.iter().map(|&z| m.index_axis(Axis(0), z).mapv(|v| v + 1)).collect()))
        };
        assert_eq!(run(&engine, &mut mask, 2, Some(&all), &cpu).0.unwrap(), "cuda");
        assert_eq!(mask, want);
        let failing = |_: &[usize], _: &Array3<u8>| -> Result<Option<Vec<Array2<u8>>>> {
            Err(Error::arg("crf: labels must be 0 or 1, found 2"))
        };
        let err = run(&engine, &mut mask, 2, Some(&failing), &cpu).0.unwrap_err();
        assert!(err.to_string().contains("labels must be 0 or 1"), "{err}");
    }
}
