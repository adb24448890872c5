//! Spatial Context Aware module (SCA), METHOD.md section 4: turns per-slice class activation
//! maps of several classifiers and tap layers into a binary pseudo mask for one volume.
//!
//! All maps here are `[nz, ny, nx]` arrays (axial slice first) holding one CAM per slice, with
//! values in `[0, 1]`. The steps, in order:
//!
//! 1. [`bme`] (bi-model ensemble), once per tap layer `i`: `ECAM_i = mean_j CAM_ji` over the
//!    `N >= 1` models `j`.
//! 2. [`slice_decision`]: a slice is positive when the mean over models of its bleed probability
//!    is `>= 0.5`; ground-truth slice labels, when supplied, replace the prediction.
//! 3. [`scf`] (spatial context fusion), once per tap layer: each positive slice becomes a
//!    distance-weighted mean of itself and its positive neighbours within `c` slices, never across
//!    a negative slice; negative slices become empty.
//! 4. [`bla`] (bi-layer aggregation): `mask = OR_i (SCAM_i > TH)` (or AND).
//!
//! ```
//! use ichseg::sca::{bla, bme, scf, slice_decision, Aggregate, ScfParams, DEFAULT_THRESHOLD};
//! use ndarray::Array3;
//! # fn main() -> ichseg::Result<()> {
//! // Two models, two tap layers, 4 slices of 8 x 8.
//! let cam = |v: f32| Array3::<f32>::from_elem((4, 8, 8), v);
//! let (m1_l1, m2_l1, m1_l2, m2_l2) = (cam(0.3), cam(0.5), cam(0.1), cam(0.2));
//! let positive = slice_decision(&[&[0.9, 0.8, 0.1, 0.7], &[0.7, 0.6, 0.2, 0.9]], None)?;
//! assert_eq!(positive, [true, true, false, true]);
//! let ecam1 = bme(&[m1_l1.view(), m2_l1.view()])?;
//! let ecam2 = bme(&[m1_l2.view(), m2_l2.view()])?;
//! let scam1 = scf(ecam1.view(), &positive, &ScfParams::default())?;
//! let scam2 = scf(ecam2.view(), &positive, &ScfParams::default())?;
//! let mask = bla(&[scam1.view(), scam2.view()], DEFAULT_THRESHOLD, Aggregate::Or)?;
//! assert_eq!(mask[[0, 0, 0]], 1); // layer 1: 0.4 > 0.2
//! assert_eq!(mask[[2, 0, 0]], 0); // negative slice
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use ndarray::{s, Array3, ArrayView3, Zip};

/// Default BLA threshold `TH` (METHOD.md 4.4; the paper's best were 0.17 on BHSD, 0.22 on BCIHM).
pub const DEFAULT_THRESHOLD: f32 = 0.2;

/// Checks that `maps` is non-empty and all of one shape; returns that shape.
fn common_shape<T>(maps: &[ArrayView3<T>], what: &str) -> Result<(usize, usize, usize)> {
    let first = maps.first().ok_or_else(|| Error::arg(format!("{what}: need at least one map, got none")))?.dim();
    for (k, m) in maps.iter().enumerate().skip(1) {
        if m.dim() != first {
            return Err(Error::arg(format!(
                "{what}: map {k} has shape {:?} but map 0 has shape {:?} (expected [nz, ny, nx] alike)",
                m.shape(),
                [first.0, first.1, first.2]
            )));
        }
    }
    Ok(first)
}

/// **BME** (bi-model ensemble, METHOD.md 4.1) for one tap layer `i`:
///
/// `ECAM_i = (1 / N) * sum_{j = 1..N} CAM_ji`
///
/// `cams` holds one `[nz, ny, nx]` CAM volume per model (any `N >= 1`; the paper uses two).
///
/// # Errors
/// [`Error::InvalidArgument`] when `cams` is empty or the shapes differ (the message names them).
pub fn bme(cams: &[ArrayView3<f32>]) -> Result<Array3<f32>> {
    let dim = common_shape(cams, "bme")?;
    let mut sum = Array3::<f32>::zeros(dim);
    for cam in cams {
        sum += cam;
    }
    let n = cams.len() as f32;
    sum.mapv_inplace(|v| v / n);
    Ok(sum)
}

/// **Slice decision** (METHOD.md 4.2): slice `z` is positive when
///
/// `p_z = (1 / N) * sum_j P_j(bleed | slice z) >= 0.5`
///
/// (a mean of exactly 0.5 counts as positive). `bleed_probs_per_model[j][z]` is model `j`'s
/// softmax bleed probability for slice `z`. When `labels` (ground-truth slice labels, the normal
/// case when pseudo-labelling a training set) are given, they are returned instead of the
/// prediction; the probabilities may then be empty (`N = 0`), and any that are given are still
/// validated.
///
/// # Errors
/// [`Error::InvalidArgument`] when no model and no labels are given, when the models' slice
/// counts differ from each other or from `labels`, or when a probability is NaN or infinite.
pub fn slice_decision(bleed_probs_per_model: &[&[f32]], labels: Option<&[bool]>) -> Result<Vec<bool>> {
    let nz = match (bleed_probs_per_model.first(), labels) {
        (_, Some(l)) => l.len(),
        (Some(p), None) => p.len(),
        (None, None) => {
            return Err(Error::arg("slice_decision: need bleed probabilities of at least one model or slice labels"))
        }
    };
    for (j, probs) in bleed_probs_per_model.iter().enumerate() {
        if probs.len() != nz {
            return Err(Error::arg(format!(
                "slice_decision: model {j} has {} slice probabilities, expected {nz}{}",
                probs.len(),
                if labels.is_some() { " (the number of slice labels)" } else { " (as model 0)" }
            )));
        }
        if let Some(z) = probs.iter().position(|p| !p.is_finite()) {
            return Err(Error::arg(format!(
                "slice_decision: model {j} has a non-finite bleed probability ({}) at slice {z}",
                probs[z]
            )));
        }
    }
    if let Some(l) = labels {
        return Ok(l.to_vec());
    }
    let n = bleed_probs_per_model.len() as f64;
    Ok((0..nz).map(|z| bleed_probs_per_model.iter().map(|p| f64::from(p[z])).sum::<f64>() / n >= 0.5).collect())
}

/// Parameters of [`scf`]: the context reach `c` (slices each side) and the neighbour weight `w`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScfParams {
    /// How many slices each side contribute (`|j - l| <= c`); 0 disables fusion.
    pub c: usize,
    /// Weight of the neighbours relative to the slice itself (finite, `>= 0`); 0 disables fusion.
    pub w: f32,
}

impl Default for ScfParams {
    /// `c = 2`, `w = 0.5` (METHOD.md 4.3).
    fn default() -> Self {
        ScfParams { c: 2, w: 0.5 }
    }
}

/// The neighbours of slice `l` inside the run `start..=end` with their weights `w / |j - l|`,
/// and the normaliser `NF = 1 + sum of those weights`.
fn neighbour_weights(start: usize, end: usize, l: usize, params: &ScfParams) -> (Vec<(usize, f32)>, f32) {
    let mut out = Vec::new();
    let mut nf = 1.0f32;
    if params.c == 0 || params.w == 0.0 {
        return (out, nf);
    }
    let lo = l.saturating_sub(params.c).max(start);
    let hi = l.saturating_add(params.c).min(end);
    for j in lo..=hi {
        if j != l {
            let wt = params.w / l.abs_diff(j) as f32;
            out.push((j, wt));
            nf += wt;
        }
    }
    (out, nf)
}

/// **SCF** (spatial context fusion, METHOD.md 4.3) of one tap layer's ensembled CAMs.
///
/// The positive slices are split into maximal runs of consecutive slices. In a run of length
/// `n`, slice `l` (numbered `1..=n` within the run) becomes
///
/// ```text
/// SCAM_l = ( ECAM_l + w * sum_{j != l, |j-l| <= c, 1 <= j <= n} ECAM_j / |j-l| ) / NF
/// NF     = 1 + w * sum_{j != l, |j-l| <= c, 1 <= j <= n} 1 / |j-l|
/// ```
///
/// so `NF` counts only the weights actually used (fewer at a run's ends) and SCAM is a weighted
/// mean that stays in `[0, 1]`. A run never reaches across a negative slice. Negative slices
/// become all zeros; `c = 0` or `w = 0` leaves the positive slices unchanged.
///
/// `ecam` is `[nz, ny, nx]`; `positive` has one entry per slice (`nz`).
///
/// # Errors
/// [`Error::InvalidArgument`] when `positive.len() != nz` or `w` is negative or not finite.
///
/// # Example
/// One pixel per slice; slices 0..=2 form a run, slice 3 is negative, slice 4 a run of one.
/// ```
/// use ichseg::sca::{scf, ScfParams};
/// use ndarray::Array3;
/// # fn main() -> ichseg::Result<()> {
/// let ecam = Array3::from_shape_vec((5, 1, 1), vec![0.2f32, 0.4, 0.8, 0.9, 0.7]).unwrap();
/// let positive = [true, true, true, false, true];
/// let scam = scf(ecam.view(), &positive, &ScfParams { c: 2, w: 0.5 })?;
/// // Middle of the run: (0.4 + 0.5 * 0.2 + 0.5 * 0.8) / (1 + 0.5 + 0.5) = 0.45
/// assert!((scam[[1, 0, 0]] - 0.45).abs() < 1e-6);
/// // Run start: (0.2 + 0.5 * 0.4 + 0.25 * 0.8) / (1 + 0.5 + 0.25) = 0.6 / 1.75
/// assert!((scam[[0, 0, 0]] - 0.6 / 1.75).abs() < 1e-6);
/// assert_eq!(scam[[3, 0, 0]], 0.0); // negative slice
/// assert_eq!(scam[[4, 0, 0]], 0.7); // run of one: unchanged, slice 2 is across the gap
/// # Ok(()) }
/// ```
pub fn scf(ecam: ArrayView3<f32>, positive: &[bool], params: &ScfParams) -> Result<Array3<f32>> {
    let nz = ecam.dim().0;
    if positive.len() != nz {
        return Err(Error::arg(format!(
            "scf: {} slice decisions for a CAM volume of {nz} slices (shape {:?})",
            positive.len(),
            ecam.shape()
        )));
    }
    if !params.w.is_finite() || params.w < 0.0 {
        return Err(Error::arg(format!("scf: weight w must be finite and >= 0, got {}", params.w)));
    }
    let mut out = Array3::<f32>::zeros(ecam.raw_dim());
    let mut z = 0;
    while z < nz {
        if !positive[z] {
            z += 1;
            continue;
        }
        let start = z;
        while z + 1 < nz && positive[z + 1] {
            z += 1;
        }
        let end = z;
        for l in start..=end {
            let (neighbours, nf) = neighbour_weights(start, end, l, params);
            let mut dst = out.slice_mut(s![l, .., ..]);
            dst.assign(&ecam.slice(s![l, .., ..]));
            if neighbours.is_empty() {
                continue; // NF = 1: unchanged, bit for bit
            }
            for (j, wt) in neighbours {
                dst.scaled_add(wt, &ecam.slice(s![j, .., ..]));
            }
            dst.mapv_inplace(|v| v / nf);
        }
        z += 1;
    }
    Ok(out)
}

/// How [`bla`] combines the tap layers' masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aggregate {
    /// A voxel is foreground when any layer's SCAM exceeds the threshold (the paper's choice).
    #[default]
    Or,
    /// A voxel is foreground only when every layer's SCAM exceeds the threshold.
    And,
}

/// **BLA** (bi-layer aggregation, METHOD.md 4.4):
///
/// `mask = OR_i (SCAM_i > TH)` (or `AND_i` with [`Aggregate::And`])
///
/// with a strict comparison, over one `[nz, ny, nx]` SCAM volume per tap layer. The result holds
/// 1 for foreground, 0 for background. A NaN SCAM value never exceeds the threshold.
///
/// # Errors
/// [`Error::InvalidArgument`] when `scams` is empty, the shapes differ, or `threshold` is not a
/// finite number in `[0, 1]`.
pub fn bla(scams: &[ArrayView3<f32>], threshold: f32, aggregate: Aggregate) -> Result<Array3<u8>> {
    if !(threshold.is_finite() && (0.0..=1.0).contains(&threshold)) {
        return Err(Error::arg(format!("bla: threshold must be a finite number in [0, 1], got {threshold}")));
    }
    let dim = common_shape(scams, "bla")?;
    let init = match aggregate {
        Aggregate::Or => 0u8,
        Aggregate::And => 1u8,
    };
    let mut mask = Array3::<u8>::from_elem(dim, init);
    for scam in scams {
        Zip::from(&mut mask).and(scam).for_each(|m, &v| {
            let above = u8::from(v > threshold);
            *m = match aggregate {
                Aggregate::Or => *m | above,
                Aggregate::And => *m & above,
            };
        });
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array3};

    /// A `[nz, 1, 1]` volume: one pixel per slice.
    fn col(v: &[f32]) -> Array3<f32> {
        Array3::from_shape_vec((v.len(), 1, 1), v.to_vec()).unwrap()
    }

    fn values(a: &Array3<f32>) -> Vec<f32> {
        a.iter().copied().collect()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-6, "slice {k}: got {g}, want {w} (all: {got:?} vs {want:?})");
        }
    }

    fn is_arg(r: &Result<impl std::fmt::Debug>) -> bool {
        matches!(r, Err(Error::InvalidArgument(_)))
    }

    // ---------------------------------------------------------------- BME

    #[test]
    fn bme_of_one_model_is_identity() {
        let a = array![[[0.1f32, 0.7], [0.0, 1.0]], [[0.5, 0.25], [0.3, 0.9]]];
        assert_eq!(bme(&[a.view()]).unwrap(), a);
    }

    #[test]
    fn bme_of_three_models_is_the_mean() {
        let a = array![[[0.0f32, 0.3]], [[0.9, 1.0]]];
        let b = array![[[0.3f32, 0.3]], [[0.0, 1.0]]];
        let c = array![[[0.6f32, 0.6]], [[0.3, 1.0]]];
        let m = bme(&[a.view(), b.view(), c.view()]).unwrap();
        // (0+0.3+0.6)/3 = 0.3, (0.3+0.3+0.6)/3 = 0.4, (0.9+0+0.3)/3 = 0.4, 1
        assert_close(&values(&m), &[0.3, 0.4, 0.4, 1.0]);
        assert_eq!(m.dim(), (2, 1, 2));
    }

    #[test]
    fn bme_rejects_shape_mismatch_and_no_models() {
        let a = Array3::<f32>::zeros((3, 4, 4));
        let b = Array3::<f32>::zeros((3, 4, 5));
        let err = bme(&[a.view(), b.view()]).unwrap_err().to_string();
        assert!(err.contains("[3, 4, 5]") && err.contains("[3, 4, 4]"), "{err}");
        assert!(is_arg(&bme(&[])));
    }

    // ---------------------------------------------------------------- slice decision

    #[test]
    fn slice_decision_from_predictions() {
        let m1: &[f32] = &[0.25, 0.5, 0.9, 0.1, 0.49];
        let m2: &[f32] = &[0.75, 0.5, 0.2, 0.2, 0.5];
        // means: 0.5 (exactly -> positive), 0.5, 0.55, 0.15, 0.495
        assert_eq!(slice_decision(&[m1, m2], None).unwrap(), [true, true, true, false, false]);
        // one model: its own probabilities, 0.5 inclusive
        assert_eq!(slice_decision(&[m1], None).unwrap(), [false, true, true, false, false]);
        // mean of 0.4 and 0.6 stored as f32 is 0.5 -> positive
        assert_eq!(slice_decision(&[&[0.4], &[0.6]], None).unwrap(), [true]);
    }

    #[test]
    fn slice_decision_labels_replace_prediction() {
        let m1: &[f32] = &[0.9, 0.1, 0.6];
        let labels = [false, true, false];
        assert_eq!(slice_decision(&[m1], Some(&labels)).unwrap(), labels);
        // labels alone are enough
        assert_eq!(slice_decision(&[], Some(&labels)).unwrap(), labels);
    }

    #[test]
    fn slice_decision_validates() {
        let a: &[f32] = &[0.1, 0.9];
        let b: &[f32] = &[0.1, 0.9, 0.5];
        assert!(is_arg(&slice_decision(&[a, b], None)));
        assert!(is_arg(&slice_decision(&[a], Some(&[true, false, true]))));
        assert!(is_arg(&slice_decision(&[], None)));
        let nan: &[f32] = &[0.1, f32::NAN];
        let err = slice_decision(&[a, nan], None).unwrap_err().to_string();
        assert!(err.contains("model 1") && err.contains("slice 1"), "{err}");
        assert!(is_arg(&slice_decision(&[nan], Some(&[true, true]))));
        assert!(is_arg(&slice_decision(&[&[f32::INFINITY]], None)));
    }

    // ---------------------------------------------------------------- SCF

    #[test]
    fn scf_default_params() {
        assert_eq!(ScfParams::default(), ScfParams { c: 2, w: 0.5 });
    }

    #[test]
    fn scf_run_of_one_is_unchanged() {
        let e = col(&[0.9, 0.37, 0.8]);
        let s = scf(e.view(), &[false, true, false], &ScfParams::default()).unwrap();
        assert_eq!(values(&s), [0.0, 0.37, 0.0]);
        let (nb, nf) = neighbour_weights(1, 1, 1, &ScfParams::default());
        assert!(nb.is_empty());
        assert_eq!(nf, 1.0);
    }

    #[test]
    fn scf_run_of_three_c2_weights_and_values() {
        let p = ScfParams { c: 2, w: 0.5 };
        // NF per slice of a run 0..=2: ends see d=1 (0.5) and d=2 (0.25), middle sees two d=1.
        let (nb0, nf0) = neighbour_weights(0, 2, 0, &p);
        assert_eq!(nb0, [(1, 0.5), (2, 0.25)]);
        assert_eq!(nf0, 1.75);
        let (nb1, nf1) = neighbour_weights(0, 2, 1, &p);
        assert_eq!(nb1, [(0, 0.5), (2, 0.5)]);
        assert_eq!(nf1, 2.0);
        let (nb2, nf2) = neighbour_weights(0, 2, 2, &p);
        assert_eq!(nb2, [(0, 0.25), (1, 0.5)]);
        assert_eq!(nf2, 1.75);

        let e = col(&[0.2, 0.4, 0.8]);
        let s = scf(e.view(), &[true; 3], &p).unwrap();
        // l=1: (0.2 + 0.5*0.4 + 0.25*0.8) / 1.75 = 0.6 / 1.75 = 12/35
        // l=2: (0.4 + 0.5*0.2 + 0.5*0.8) / 2    = 0.9 / 2    = 0.45
        // l=3: (0.8 + 0.5*0.4 + 0.25*0.2) / 1.75 = 1.05 / 1.75 = 0.6
        assert_close(&values(&s), &[12.0 / 35.0, 0.45, 0.6]);

        // all-ones stays exactly one (NF is the sum of the weights used)
        let ones = scf(col(&[1.0; 3]).view(), &[true; 3], &p).unwrap();
        assert_eq!(values(&ones), [1.0; 3]);
    }

    #[test]
    fn scf_does_not_reach_across_a_negative_slice() {
        let e = col(&[0.2, 0.4, 0.9, 0.6, 1.0]);
        let s = scf(e.view(), &[true, true, false, true, true], &ScfParams::default()).unwrap();
        // run {0,1}: (0.2 + 0.5*0.4)/1.5 = 4/15, (0.4 + 0.5*0.2)/1.5 = 1/3
        // slice 2 (0.9) negative -> 0 and contributes to nobody
        // run {3,4}: (0.6 + 0.5*1.0)/1.5 = 11/15, (1.0 + 0.5*0.6)/1.5 = 13/15
        assert_close(&values(&s), &[4.0 / 15.0, 1.0 / 3.0, 0.0, 11.0 / 15.0, 13.0 / 15.0]);
    }

    #[test]
    fn scf_runs_touching_first_and_last_slice() {
        let e = col(&[0.5, 0.9, 0.9, 0.2, 0.4, 0.8]);
        let s = scf(e.view(), &[true, false, false, true, true, true], &ScfParams::default()).unwrap();
        // slice 0: run of one at the volume start -> unchanged
        // slices 3..=5: run of three at the volume end, as in the c=2 test
        assert_close(&values(&s), &[0.5, 0.0, 0.0, 12.0 / 35.0, 0.45, 0.6]);

        // one run covering the whole stack: slice 0 sees only 1 and 2, slice 4 only 3 and 2
        let e = col(&[1.0, 0.0, 0.0, 0.0, 0.0]);
        let s = scf(e.view(), &[true; 5], &ScfParams::default()).unwrap();
        // l=0: 1/1.75 = 4/7; l=1: NF = 1 + .5(1 + 1 + .5) = 2.25 -> 0.5/2.25 = 2/9
        // l=2: NF = 1 + .5(1 + 1 + .5 + .5) = 2.5 -> 0.25/2.5 = 0.1; l=3,4: slice 0 beyond c -> 0
        assert_close(&values(&s), &[4.0 / 7.0, 2.0 / 9.0, 0.1, 0.0, 0.0]);
    }

    #[test]
    fn scf_c1_vs_c2() {
        let e = col(&[0.2, 0.4, 0.8]);
        let s1 = scf(e.view(), &[true; 3], &ScfParams { c: 1, w: 0.5 }).unwrap();
        // l=1: (0.2 + 0.5*0.4)/1.5 = 4/15; l=2: (0.4 + 0.1 + 0.4)/2 = 0.45; l=3: (0.8 + 0.2)/1.5 = 2/3
        assert_close(&values(&s1), &[4.0 / 15.0, 0.45, 2.0 / 3.0]);
        let s2 = scf(e.view(), &[true; 3], &ScfParams { c: 2, w: 0.5 }).unwrap();
        assert_close(&values(&s2), &[12.0 / 35.0, 0.45, 0.6]);

        let imp = col(&[1.0, 0.0, 0.0, 0.0, 0.0]);
        let s1 = scf(imp.view(), &[true; 5], &ScfParams { c: 1, w: 0.5 }).unwrap();
        // l=0: 1/1.5; l=1: NF 2 -> 0.5/2 = 0.25; l>=2 out of reach
        assert_close(&values(&s1), &[2.0 / 3.0, 0.25, 0.0, 0.0, 0.0]);
        // c larger than the run is the same as c = run length - 1
        let big = scf(e.view(), &[true; 3], &ScfParams { c: 100, w: 0.5 }).unwrap();
        assert_eq!(big, s2);
    }

    #[test]
    fn scf_w0_and_c0_leave_positive_slices_unchanged() {
        let e = col(&[0.2, 0.4, 0.8, 0.6]);
        let pos = [true, true, false, true];
        for p in [ScfParams { c: 2, w: 0.0 }, ScfParams { c: 0, w: 0.5 }] {
            let s = scf(e.view(), &pos, &p).unwrap();
            assert_eq!(values(&s), [0.2, 0.4, 0.0, 0.6], "{p:?}");
        }
    }

    #[test]
    fn scf_is_per_pixel_and_validates() {
        // two pixels per slice, run of two: pixel-wise (a + 0.5 b)/1.5
        let e = array![[[0.3f32, 0.0]], [[0.6, 1.0]]];
        let s = scf(e.view(), &[true, true], &ScfParams::default()).unwrap();
        assert_close(&values(&s), &[0.4, 1.0 / 3.0, 0.5, 1.0 / 1.5]);

        assert!(is_arg(&scf(e.view(), &[true], &ScfParams::default())));
        assert!(is_arg(&scf(e.view(), &[true, true], &ScfParams { c: 2, w: -0.5 })));
        assert!(is_arg(&scf(e.view(), &[true, true], &ScfParams { c: 2, w: f32::NAN })));
        // no positive slice -> all zeros
        assert_eq!(scf(e.view(), &[false, false], &ScfParams::default()).unwrap(), Array3::<f32>::zeros((2, 1, 2)));
    }

    // ---------------------------------------------------------------- BLA

    #[test]
    fn bla_or_vs_and() {
        let a = array![[[0.1f32, 0.3, 0.2, 0.25]]];
        let b = array![[[0.3f32, 0.1, 0.2, 0.25]]];
        // a > 0.2: [0,1,0,1]; b > 0.2: [1,0,0,1]
        let or = bla(&[a.view(), b.view()], 0.2, Aggregate::Or).unwrap();
        assert_eq!(or, array![[[1u8, 1, 0, 1]]]);
        let and = bla(&[a.view(), b.view()], 0.2, Aggregate::And).unwrap();
        assert_eq!(and, array![[[0u8, 0, 0, 1]]]);
        assert_eq!(Aggregate::default(), Aggregate::Or);
        // a single layer: OR and AND agree
        let one_or = bla(&[a.view()], 0.2, Aggregate::Or).unwrap();
        assert_eq!(one_or, bla(&[a.view()], 0.2, Aggregate::And).unwrap());
        assert_eq!(one_or, array![[[0u8, 1, 0, 1]]]);
    }

    #[test]
    fn bla_threshold_is_strict() {
        let a = array![[[0.0f32, 0.2, 0.2001, 1.0]]];
        assert_eq!(bla(&[a.view()], 0.2, Aggregate::Or).unwrap(), array![[[0u8, 0, 1, 1]]]);
        assert_eq!(bla(&[a.view()], 0.0, Aggregate::Or).unwrap(), array![[[0u8, 1, 1, 1]]]);
        assert_eq!(bla(&[a.view()], 1.0, Aggregate::Or).unwrap(), array![[[0u8, 0, 0, 0]]]);
    }

    #[test]
    fn bla_validates() {
        let a = Array3::<f32>::zeros((2, 3, 3));
        for th in [-0.1, 1.1, f32::NAN, f32::INFINITY] {
            assert!(is_arg(&bla(&[a.view()], th, Aggregate::Or)), "threshold {th}");
        }
        assert!(is_arg(&bla(&[], 0.2, Aggregate::Or)));
        let b = Array3::<f32>::zeros((2, 3, 4));
        let err = bla(&[a.view(), b.view()], 0.2, Aggregate::And).unwrap_err().to_string();
        assert!(err.contains("[2, 3, 4]") && err.contains("[2, 3, 3]"), "{err}");
    }
}
