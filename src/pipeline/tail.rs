//! The pseudo-labelling steps after the class activation maps, as one function: spatial context
//! fusion (METHOD.md 4.3), bi-layer aggregation (4.4), the dense CRF (4.5), then our optional
//! steps: the intracranial mask (fused maps zeroed outside it before BLA and the CRF, and the
//! CRF's output cut to it), the bone cut, the blood-density cut and the small-lesion filter. [`PseudoLabeler::label`] runs it with the
//! labeller's options; `ichseg ablate` runs it with each setting of its grid through
//! [`PseudoLabeler::finish`] and records the mask after every step. The order of the steps lives
//! here only.

use super::pseudo::{bone_cut, min_hu_cut, PseudoLabeler, Ticker};
use super::stripped::ClassifierInputs;
use crate::crf::CrfParams;
use crate::error::{Error, Result};
use crate::lesions::{check_min_lesion_ml, remove_small_lesions};
use crate::pipeline::options::check_threshold;
use crate::sca::{self, Aggregate, ScfParams};
use crate::skull::intracranial::{check_margin_mm, zero_outside, IntracranialMask};
use crate::volume::Volume;
use ndarray::{Array3, ArrayView3};

/// The tail's settings; each optional step runs only when set.
#[derive(Debug, Clone, PartialEq)]
pub struct TailOptions {
    /// Spatial context fusion over neighbouring positive slices; `None`: negative slices are
    /// only emptied.
    pub scf: Option<ScfParams>,
    /// BLA threshold on the fused maps.
    pub threshold: f32,
    pub aggregate: Aggregate,
    pub crf: Option<CrfParams>,
    /// The intracranial mask's margin (mm), not in METHOD.md: the fused maps are zeroed outside
    /// the mask before BLA, so the CRF starts from nothing over bone, and the CRF's output is
    /// cut to the mask, since its pairwise terms can still pull labels across the boundary.
    pub intracranial_margin_mm: Option<f64>,
    /// The bone cut (HU), not in METHOD.md.
    pub max_hu: Option<f32>,
    /// The blood-density cut (HU), not in METHOD.md.
    pub min_hu: Option<f32>,
    /// The small-lesion filter (mL), not in METHOD.md.
    pub min_lesion_ml: Option<f64>,
}

impl TailOptions {
    /// Every value in range, before any work.
    pub fn check(&self) -> Result<()> {
        check_threshold(self.threshold)?;
        if let Some(scf) = &self.scf {
            if !(scf.w.is_finite() && scf.w >= 0.0) {
                return Err(Error::arg(format!("SCF weight w must be finite and >= 0, got {}", scf.w)));
            }
        }
        if let Some(crf) = &self.crf {
            crf.validate()?;
        }
        if let Some(m) = self.intracranial_margin_mm {
            check_margin_mm(m)?;
        }
        for (what, hu) in [("max_hu", self.max_hu), ("min_hu", self.min_hu)] {
            if let Some(h) = hu.filter(|h| !h.is_finite()) {
                return Err(Error::arg(format!("{what} must be a finite HU value, got {h}")));
            }
        }
        self.min_lesion_ml.map_or(Ok(()), check_min_lesion_ml)
    }
}

/// The steps that make a mask, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailStep {
    Bla,
    Crf,
    BoneCut,
    MinHuCut,
    SmallLesions,
}

/// What the tail made.
#[derive(Debug, Clone)]
pub struct TailOutput {
    /// Each tap's map after SCF (what the threshold saw), shape `[nz, ny, nx]`.
    pub fused: Vec<Array3<f32>>,
    pub mask: Array3<u8>,
    /// Where the CRF ran last: "cpu" or "cuda" ("cpu" when it did not run).
    pub crf_device: &'static str,
    /// The intracranial mask, when it was applied.
    pub intracranial: Option<IntracranialMask>,
}

impl PseudoLabeler {
    /// The tail on `ensemble` (one model-averaged map per tap, each dropped once fused) with
    /// `options` instead of the
    /// labeller's own, for ablations: no progress, and `observe` sees the mask after each step
    /// that ran. `positive` says which slices bleed (others end up empty).
    pub fn finish(
        &self,
        volume: &Volume,
        ensemble: Vec<Array3<f32>>,
        positive: &[bool],
        options: &TailOptions,
        observe: &mut dyn FnMut(TailStep, &Array3<u8>),
    ) -> Result<TailOutput> {
        options.check()?;
        let mut ticker = Ticker { done: 0, total: volume.num_slices(), progress: &mut |_| true };
        let mut inputs = ClassifierInputs::new(volume, self.crf_strip_mm().as_slice())?;
        self.tail(&mut inputs, ensemble, positive, options, &mut ticker, observe)
    }

    /// The tail on the original CT of `inputs`; the CRF sees the first classifier's view of it.
    pub(super) fn tail(
        &self,
        inputs: &mut ClassifierInputs,
        ensemble: Vec<Array3<f32>>,
        positive: &[bool],
        options: &TailOptions,
        ticker: &mut Ticker,
        observe: &mut dyn FnMut(TailStep, &Array3<u8>),
    ) -> Result<TailOutput> {
        let volume = inputs.original();
        if let Some(e) = ensemble.iter().find(|e| e.dim() != volume.data().dim()) {
            return Err(Error::arg(format!(
                "the maps are {:?} but the volume is {:?} ([nz, ny, nx])",
                e.shape(),
                volume.data().shape()
            )));
        }
        let scf = options.scf.unwrap_or(ScfParams { c: 0, w: 0.0 });
        let intracranial = options.intracranial_margin_mm.map(|m| inputs.take_mask(m)).transpose()?;
        // Each ensemble map is freed as soon as it is fused: one set of maps alive, not two.
        let mut fused = ensemble.into_iter().map(|e| sca::scf(e.view(), positive, &scf)).collect::<Result<Vec<_>>>()?;
        if let Some(ic) = &intracranial {
            for map in &mut fused {
                zero_outside(map, &ic.mask)?;
            }
        }
        let views: Vec<ArrayView3<f32>> = fused.iter().map(|m| m.view()).collect();
        let mut mask = sca::bla(&views, options.threshold, options.aggregate)?;
        observe(TailStep::Bla, &mask);
        let mut crf_device = "cpu";
        if let Some(params) = &options.crf {
            crf_device = self.refine(inputs.for_margin(self.crf_strip_mm()), &mut mask, params, ticker)?;
            if let Some(ic) = &intracranial {
                zero_outside(&mut mask, &ic.mask)?;
            }
            observe(TailStep::Crf, &mask);
        }
        if let Some(max_hu) = options.max_hu {
            bone_cut(volume, &mut mask, max_hu)?;
            observe(TailStep::BoneCut, &mask);
        }
        if let Some(min_hu) = options.min_hu {
            min_hu_cut(volume, &mut mask, min_hu)?;
            observe(TailStep::MinHuCut, &mask);
        }
        if let Some(ml) = options.min_lesion_ml {
            remove_small_lesions(&mut mask, volume.spacing(), ml)?;
            observe(TailStep::SmallLesions, &mask);
        }
        Ok(TailOutput { fused, mask, crf_device, intracranial })
    }
}
