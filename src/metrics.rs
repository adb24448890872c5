//! Segmentation scores exactly as METHOD.md section 6 (the paper) defines them.
//!
//! - **IoU per class** (background, hemorrhage) over the whole evaluation set: sum of the
//!   intersections over all slices divided by the sum of the unions; **mIoU** is the mean of the
//!   two classes; **Dice** of the hemorrhage class is `2 sum|P and G| / (sum|P| + sum|G|)`.
//! - **Localisation**, per 2D axial slice on 8-connected components: a ground-truth site is
//!   correctly localised if any predicted pixel overlaps it; a predicted component is a false
//!   positive if it touches no ground-truth pixel. `CL = N_correct / N_GT`, `ML = 1 - CL`,
//!   `FPL = N_FP / N_pred`. A lesion spanning several slices counts once per slice.
//!
//! - **By lesion size** (not in the paper; [`evaluate_sized`]): the same CL and FPL with every
//!   site put in the bin of the 3D lesion it belongs to (26-connected, its volume in mL:
//!   [`SIZE_BINS`]): a ground-truth site by the ground-truth lesion, a predicted site by the
//!   predicted lesion. Small bleeds are what a weak detector misses first, and pooled CL hides it.
//!
//! Ratios that would divide by zero are resolved as follows (the paper is silent):
//! - IoU or Dice with an empty union (neither prediction nor truth has the class anywhere) is
//!   **1.0**: prediction and truth agree perfectly.
//! - `cl` and `ml` are **`None`** when there are no ground-truth sites; `fpl` is **`None`** when
//!   there are no predicted sites. Nothing was there to find or to get wrong, and any number would
//!   bias an average; the raw counts are reported alongside so callers can pool them.

use crate::error::{Error, Result};
use crate::lesions::{label_2d, lesion_sizes};
use ndarray::{Array3, ArrayView2, ArrayView3, Axis};

/// The lesion-size bins of [`evaluate_sized`], by 3D lesion volume: `[min_ml, max_ml)`, the last
/// open-ended.
pub const SIZE_BINS: [(f64, Option<f64>); 4] = [(0.0, Some(0.1)), (0.1, Some(1.0)), (1.0, Some(10.0)), (10.0, None)];

/// Scores of one volume or of a whole evaluation set. Ratios are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scores {
    /// IoU of the background class.
    pub iou_background: f64,
    /// IoU of the hemorrhage (foreground) class.
    pub iou_hemorrhage: f64,
    /// Mean of `iou_background` and `iou_hemorrhage` (the paper's mIoU).
    pub miou: f64,
    /// Dice of the hemorrhage class.
    pub dice: f64,
    /// Correct localisation `n_correct / n_gt_sites`; `None` without ground-truth sites.
    pub cl: Option<f64>,
    /// Missed localisation `1 - cl`; `None` without ground-truth sites.
    pub ml: Option<f64>,
    /// False-positive localisation `n_fp / n_pred_sites`; `None` without predicted sites.
    pub fpl: Option<f64>,
    /// Ground-truth sites: 8-connected components, counted per slice.
    pub n_gt_sites: usize,
    /// Ground-truth sites overlapped by at least one predicted pixel.
    pub n_correct: usize,
    /// Predicted sites: 8-connected components, counted per slice.
    pub n_pred_sites: usize,
    /// Predicted sites touching no ground-truth pixel.
    pub n_fp: usize,
    /// Axial slices evaluated.
    pub slices: usize,
    /// CL and FPL per lesion-size bin ([`SIZE_BINS`], in that order); `None` unless every pair
    /// was scored with its voxel volume ([`evaluate_sized`], [`Pool::add_sized`]).
    pub by_size: Option<Vec<SizeBinScores>>,
}

/// Localisation scores of the sites whose lesions fall in one size bin.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SizeBinScores {
    /// The bin, `[min_ml, max_ml)` of 3D lesion volume; `max_ml` is `None` for the last.
    pub min_ml: f64,
    pub max_ml: Option<f64>,
    /// `n_correct / n_gt_sites`; `None` without ground-truth sites in the bin.
    pub cl: Option<f64>,
    /// `n_fp / n_pred_sites`; `None` without predicted sites in the bin.
    pub fpl: Option<f64>,
    pub n_gt_sites: usize,
    pub n_correct: usize,
    pub n_pred_sites: usize,
    pub n_fp: usize,
}

/// Scores pooled over all pairs (`overall`) and for each pair alone (`per_volume`, input order).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Evaluation {
    pub overall: Scores,
    pub per_volume: Vec<Scores>,
}

/// Scores `(prediction, ground_truth)` mask pairs, each of shape `[nz, ny, nx]`; any nonzero
/// voxel is hemorrhage. Pairs may differ in shape from one another, but a prediction must have the
/// shape of its ground truth.
///
/// `overall` pools the pixel and site counts of every slice of every pair before dividing (the
/// paper's dataset-level scores), so it is not the mean of `per_volume`. See the [module
/// documentation](self) for the definitions and for the ratios that would divide by zero.
///
/// Errors ([`Error::InvalidArgument`]): no pairs, a prediction whose shape differs from its
/// ground truth, or an axial slice of 2^32 pixels or more.
///
/// ```
/// use ndarray::Array3;
/// let mut gt = Array3::<u8>::zeros((1, 4, 4)); // [nz, ny, nx]
/// gt[[0, 0, 0]] = 1; // two ground-truth sites
/// gt[[0, 3, 3]] = 1;
/// let mut pred = Array3::<u8>::zeros((1, 4, 4));
/// pred[[0, 0, 0]] = 1; // finds the first site
/// pred[[0, 0, 3]] = 1; // a false positive
/// let eval = ichseg::metrics::evaluate(&[(pred.view(), gt.view())]).unwrap();
/// let s = &eval.overall;
/// assert_eq!(s.iou_hemorrhage, 1.0 / 3.0);
/// assert_eq!(s.iou_background, 13.0 / 15.0);
/// assert_eq!(s.dice, 0.5);
/// assert_eq!((s.cl, s.ml, s.fpl), (Some(0.5), Some(0.5), Some(0.5)));
/// assert_eq!(eval.per_volume[0], eval.overall);
/// ```
pub fn evaluate(pairs: &[(ArrayView3<u8>, ArrayView3<u8>)]) -> Result<Evaluation> {
    if pairs.is_empty() {
        return Err(Error::arg("nothing to evaluate: no (prediction, ground truth) pairs given"));
    }
    let mut pool = Pool::default();
    let per_volume = pairs.iter().map(|(pred, gt)| pool.add(pred.view(), gt.view())).collect::<Result<_>>()?;
    Ok(Evaluation { overall: pool.scores(), per_volume })
}

/// [`evaluate`] with the scores by lesion size ([`Scores::by_size`]): `voxel_ml[i]` is pair `i`'s
/// voxel volume in mL (the product of its spacing in mm, / 1000).
///
/// Errors: as [`evaluate`], and [`Error::InvalidArgument`] when `voxel_ml` does not give one
/// finite, positive volume per pair.
///
/// ```
/// use ndarray::Array3;
/// let mut gt = Array3::<u8>::zeros((1, 4, 4));
/// gt[[0, 0, 0]] = 1; // a 1-voxel lesion: 0.001 mL at 1 mm^3 voxels
/// gt.slice_mut(ndarray::s![0, 2.., 2..]).fill(1); // 4 voxels: 0.004 mL
/// let pred = Array3::<u8>::zeros((1, 4, 4));
/// let eval = ichseg::metrics::evaluate_sized(&[(pred.view(), gt.view())], &[0.001]).unwrap();
/// let bins = eval.overall.by_size.unwrap();
/// assert_eq!((bins[0].n_gt_sites, bins[0].cl), (2, Some(0.0)));
/// assert_eq!((bins[3].n_gt_sites, bins[3].cl), (0, None));
/// ```
pub fn evaluate_sized(pairs: &[(ArrayView3<u8>, ArrayView3<u8>)], voxel_ml: &[f64]) -> Result<Evaluation> {
    if pairs.is_empty() {
        return Err(Error::arg("nothing to evaluate: no (prediction, ground truth) pairs given"));
    }
    if voxel_ml.len() != pairs.len() {
        return Err(Error::arg(format!("{} voxel volumes for {} pairs", voxel_ml.len(), pairs.len())));
    }
    let mut pool = Pool::default();
    let per_volume = pairs
        .iter()
        .zip(voxel_ml)
        .map(|((pred, gt), &ml)| pool.add_sized(pred.view(), gt.view(), ml))
        .collect::<Result<_>>()?;
    Ok(Evaluation { overall: pool.scores(), per_volume })
}

/// [`evaluate`]'s pooled scores built one pair at a time, so that a caller scoring many
/// volumes (or many variants of each) need not keep every mask in memory.
///
/// ```
/// use ndarray::Array3;
/// let mut gt = Array3::<u8>::zeros((1, 2, 2));
/// gt[[0, 0, 0]] = 1;
/// let mut pool = ichseg::metrics::Pool::default();
/// pool.add(gt.view(), gt.view()).unwrap();
/// pool.add(Array3::zeros((1, 2, 2)).view(), gt.view()).unwrap();
/// assert_eq!(pool.scores().iou_hemorrhage, 0.5);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pool {
    counts: Counts,
    pairs: usize,
}

impl Pool {
    /// Adds one `(prediction, ground truth)` pair (as in [`evaluate`]) and returns its own scores.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the shapes differ or a slice has 2^32 pixels or more; the
    /// pool is then left unchanged.
    pub fn add(&mut self, pred: ArrayView3<u8>, gt: ArrayView3<u8>) -> Result<Scores> {
        self.add_pair(pred, gt, None)
    }

    /// [`add`](Self::add), also scoring by lesion size with the pair's voxel volume in mL.
    ///
    /// # Errors
    /// As [`add`](Self::add), and [`Error::InvalidArgument`] for a voxel volume that is not
    /// finite and positive.
    pub fn add_sized(&mut self, pred: ArrayView3<u8>, gt: ArrayView3<u8>, voxel_ml: f64) -> Result<Scores> {
        if !(voxel_ml.is_finite() && voxel_ml > 0.0) {
            return Err(Error::arg(format!(
                "pair {}: voxel volume {voxel_ml} mL must be finite and positive",
                self.pairs
            )));
        }
        self.add_pair(pred, gt, Some(voxel_ml))
    }

    fn add_pair(&mut self, pred: ArrayView3<u8>, gt: ArrayView3<u8>, voxel_ml: Option<f64>) -> Result<Scores> {
        let index = self.pairs;
        if pred.shape() != gt.shape() {
            return Err(Error::arg(format!(
                "pair {index}: prediction shape {:?} differs from ground truth shape {:?} (both [nz, ny, nx])",
                pred.shape(),
                gt.shape()
            )));
        }
        let (_, ny, nx) = pred.dim();
        // Keeps every 2D label below u32::MAX, so label_2d never saturates.
        if ny.saturating_mul(nx) >= u32::MAX as usize {
            return Err(Error::arg(format!("pair {index}: axial slices of {ny}x{nx} pixels are too large to score")));
        }
        let mut volume = Counts { pairs: 1, ..Counts::default() };
        if let Some(ml) = voxel_ml {
            let (pred_bins, gt_bins) = (size_bins(pred, ml), size_bins(gt, ml));
            let bins = pred_bins.axis_iter(Axis(0)).zip(gt_bins.axis_iter(Axis(0)));
            for ((p, g), (pb, gb)) in pred.axis_iter(Axis(0)).zip(gt.axis_iter(Axis(0))).zip(bins) {
                volume += slice_counts(p, g, Some((pb, gb)));
            }
            volume.sized = 1;
        } else {
            for (p, g) in pred.axis_iter(Axis(0)).zip(gt.axis_iter(Axis(0))) {
                volume += slice_counts(p, g, None);
            }
        }
        self.counts += volume;
        self.pairs += 1;
        Ok(volume.scores())
    }

    /// The scores pooled over every pair added so far.
    pub fn scores(&self) -> Scores {
        self.counts.scores()
    }
}

/// The integer tallies behind [`Scores`]; they add up, so one slice, one volume and the whole set
/// are scored the same way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    pixels: usize,
    pred: usize,
    gt: usize,
    both: usize,
    gt_sites: usize,
    correct: usize,
    pred_sites: usize,
    fp: usize,
    slices: usize,
    pairs: usize,
    /// Pairs scored by lesion size; `by_size` is reported only when all were.
    sized: usize,
    bins: [BinCounts; SIZE_BINS.len()],
}

/// The site tallies of one lesion-size bin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BinCounts {
    gt_sites: usize,
    correct: usize,
    pred_sites: usize,
    fp: usize,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        // Saturating: the sums cannot realistically overflow, and must never panic.
        self.pixels = self.pixels.saturating_add(o.pixels);
        self.pred = self.pred.saturating_add(o.pred);
        self.gt = self.gt.saturating_add(o.gt);
        self.both = self.both.saturating_add(o.both);
        self.gt_sites = self.gt_sites.saturating_add(o.gt_sites);
        self.correct = self.correct.saturating_add(o.correct);
        self.pred_sites = self.pred_sites.saturating_add(o.pred_sites);
        self.fp = self.fp.saturating_add(o.fp);
        self.slices = self.slices.saturating_add(o.slices);
        self.pairs = self.pairs.saturating_add(o.pairs);
        self.sized = self.sized.saturating_add(o.sized);
        for (b, ob) in self.bins.iter_mut().zip(o.bins) {
            b.gt_sites = b.gt_sites.saturating_add(ob.gt_sites);
            b.correct = b.correct.saturating_add(ob.correct);
            b.pred_sites = b.pred_sites.saturating_add(ob.pred_sites);
            b.fp = b.fp.saturating_add(ob.fp);
        }
    }
}

impl Counts {
    fn scores(&self) -> Scores {
        // Union of foreground; background's intersection is what that union leaves out, and
        // background's union is everything but the foreground intersection.
        let union_fg = self.pred + self.gt - self.both;
        let iou_hemorrhage = ratio_or_one(self.both, union_fg);
        let iou_background = ratio_or_one(self.pixels - union_fg, self.pixels - self.both);
        let cl = (self.gt_sites > 0).then(|| self.correct as f64 / self.gt_sites as f64);
        Scores {
            iou_background,
            iou_hemorrhage,
            miou: (iou_background + iou_hemorrhage) / 2.0,
            dice: ratio_or_one(2 * self.both, self.pred + self.gt),
            cl,
            ml: cl.map(|cl| 1.0 - cl),
            fpl: (self.pred_sites > 0).then(|| self.fp as f64 / self.pred_sites as f64),
            n_gt_sites: self.gt_sites,
            n_correct: self.correct,
            n_pred_sites: self.pred_sites,
            n_fp: self.fp,
            slices: self.slices,
            by_size: (self.pairs > 0 && self.sized == self.pairs).then(|| {
                SIZE_BINS
                    .iter()
                    .zip(&self.bins)
                    .map(|(&(min_ml, max_ml), b)| SizeBinScores {
                        min_ml,
                        max_ml,
                        cl: (b.gt_sites > 0).then(|| b.correct as f64 / b.gt_sites as f64),
                        fpl: (b.pred_sites > 0).then(|| b.fp as f64 / b.pred_sites as f64),
                        n_gt_sites: b.gt_sites,
                        n_correct: b.correct,
                        n_pred_sites: b.pred_sites,
                        n_fp: b.fp,
                    })
                    .collect()
            }),
        }
    }
}

/// `num / den`, or 1.0 for 0/0 (an empty union: perfect agreement).
fn ratio_or_one(num: usize, den: usize) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

/// Each voxel's size bin plus one (0 for background): the bin of the 3D lesion it belongs to.
fn size_bins(mask: ArrayView3<u8>, voxel_ml: f64) -> Array3<u8> {
    let sizes = lesion_sizes(mask);
    let bin = |voxels: u32| {
        let ml = f64::from(voxels) * voxel_ml;
        SIZE_BINS.iter().position(|&(_, max)| max.is_none_or(|m| ml < m)).unwrap_or(SIZE_BINS.len() - 1) as u8 + 1
    };
    let data = sizes.into_iter().map(|v| if v == 0 { 0 } else { bin(v) }).collect();
    Array3::from_shape_vec(mask.raw_dim(), data).expect("one size per voxel")
}

/// Pixel and site tallies of one axial slice pair of equal shape; with `bins` (each pixel's size
/// bin plus one, prediction then ground truth, from [`size_bins`]) also the tallies per bin.
fn slice_counts(pred: ArrayView2<u8>, gt: ArrayView2<u8>, bins: Option<(ArrayView2<u8>, ArrayView2<u8>)>) -> Counts {
    let (pred_labels, pred_sites) = label_2d(pred);
    let (gt_labels, gt_sites) = label_2d(gt);
    let mut gt_found = vec![false; gt_sites + 1];
    let mut pred_hits = vec![false; pred_sites + 1];
    let mut c = Counts { pixels: pred_labels.len(), gt_sites, pred_sites, slices: 1, ..Counts::default() };
    for (&p, &g) in pred_labels.iter().zip(gt_labels.iter()) {
        c.pred += usize::from(p != 0);
        c.gt += usize::from(g != 0);
        if p != 0 && g != 0 {
            c.both += 1;
            gt_found[g as usize] = true;
            pred_hits[p as usize] = true;
        }
    }
    c.correct = gt_found.iter().filter(|&&f| f).count();
    c.fp = pred_hits[1..].iter().filter(|&&h| !h).count();
    if let Some((pred_bins, gt_bins)) = bins {
        // A 2D site lies inside one 3D lesion (8-connected in plane implies 26-connected), so any
        // of its pixels gives its bin.
        let mut gt_bin = vec![0u8; gt_sites + 1];
        let mut pred_bin = vec![0u8; pred_sites + 1];
        for (((&p, &g), &pb), &gb) in pred_labels.iter().zip(gt_labels.iter()).zip(pred_bins.iter()).zip(gt_bins.iter())
        {
            gt_bin[g as usize] = gb;
            pred_bin[p as usize] = pb;
        }
        for s in 1..=gt_sites {
            let b = &mut c.bins[usize::from(gt_bin[s]) - 1];
            b.gt_sites += 1;
            b.correct += usize::from(gt_found[s]);
        }
        for s in 1..=pred_sites {
            let b = &mut c.bins[usize::from(pred_bin[s]) - 1];
            b.pred_sites += 1;
            b.fp += usize::from(!pred_hits[s]);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array3};

    /// Mask of shape [nz, ny, nx] with the given (x, y, z) voxels set.
    fn mask(nz: usize, ny: usize, nx: usize, on: &[[usize; 3]]) -> Array3<u8> {
        let mut m = Array3::zeros((nz, ny, nx));
        for &[x, y, z] in on {
            m[[z, y, x]] = 1;
        }
        m
    }

    fn one(pred: &Array3<u8>, gt: &Array3<u8>) -> Scores {
        evaluate(&[(pred.view(), gt.view())]).unwrap().overall
    }

    #[test]
    fn empty_prediction_scores_about_half_miou() {
        let gt = mask(2, 4, 5, &[[1, 1, 0], [2, 1, 0], [3, 3, 1]]);
        let s = one(&mask(2, 4, 5, &[]), &gt);
        assert_eq!(s.iou_hemorrhage, 0.0);
        assert_eq!(s.iou_background, 37.0 / 40.0);
        assert_eq!(s.miou, 37.0 / 80.0);
        assert_eq!(s.dice, 0.0);
        assert_eq!((s.cl, s.ml, s.fpl), (Some(0.0), Some(1.0), None));
        assert_eq!((s.n_gt_sites, s.n_correct, s.n_pred_sites, s.n_fp, s.slices), (2, 0, 0, 0, 2));
    }

    #[test]
    fn empty_ground_truth() {
        let pred = mask(1, 3, 3, &[[0, 0, 0], [2, 2, 0]]);
        let s = one(&pred, &mask(1, 3, 3, &[]));
        assert_eq!(s.iou_hemorrhage, 0.0);
        assert_eq!(s.iou_background, 7.0 / 9.0);
        assert_eq!(s.dice, 0.0);
        assert_eq!((s.cl, s.ml, s.fpl), (None, None, Some(1.0)));
        assert_eq!((s.n_gt_sites, s.n_pred_sites, s.n_fp), (0, 2, 2));
    }

    #[test]
    fn both_empty_is_perfect_agreement() {
        let e = mask(3, 2, 2, &[]);
        let s = one(&e, &e);
        assert_eq!((s.iou_background, s.iou_hemorrhage, s.miou, s.dice), (1.0, 1.0, 1.0, 1.0));
        assert_eq!((s.cl, s.ml, s.fpl), (None, None, None));
        assert_eq!(s.slices, 3);
        // Zero-sized volumes: every union is empty too.
        let z = Array3::<u8>::zeros((0, 4, 4));
        let s = one(&z, &z);
        assert_eq!((s.miou, s.slices), (1.0, 0));
    }

    #[test]
    fn several_sites_and_a_false_positive() {
        // 6x6 slice. GT sites: A = 2x2 block at (0..2, 0..2), B = (5,5), C = (0,5).
        // Pred: covers A's (1,1) plus (2,1) [8-connected, one component], hits B exactly,
        // misses C, and a false positive at (4,0).
        let gt = mask(1, 6, 6, &[[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [5, 5, 0], [0, 5, 0]]);
        let pred = mask(1, 6, 6, &[[1, 1, 0], [2, 1, 0], [5, 5, 0], [4, 0, 0]]);
        let s = one(&pred, &gt);
        // |G| = 6, |P| = 4, |P and G| = 2, |P or G| = 8, 36 pixels.
        assert_eq!(s.iou_hemorrhage, 2.0 / 8.0);
        assert_eq!(s.iou_background, 28.0 / 34.0);
        assert_eq!(s.miou, (2.0 / 8.0 + 28.0 / 34.0) / 2.0);
        assert_eq!(s.dice, 4.0 / 10.0);
        assert_eq!((s.n_gt_sites, s.n_correct, s.n_pred_sites, s.n_fp), (3, 2, 3, 1));
        assert_eq!(s.cl, Some(2.0 / 3.0));
        assert_eq!(s.ml, Some(1.0 - 2.0 / 3.0));
        assert_eq!(s.fpl, Some(1.0 / 3.0));
    }

    #[test]
    fn one_prediction_touching_two_sites() {
        // Two GT dots two pixels apart; one predicted bar covering both and the gap.
        let gt = mask(1, 1, 5, &[[0, 0, 0], [2, 0, 0]]);
        let pred = mask(1, 1, 5, &[[0, 0, 0], [1, 0, 0], [2, 0, 0]]);
        let s = one(&pred, &gt);
        assert_eq!((s.n_gt_sites, s.n_correct, s.n_pred_sites, s.n_fp), (2, 2, 1, 0));
        assert_eq!((s.cl, s.fpl), (Some(1.0), Some(0.0)));
        assert_eq!(s.iou_hemorrhage, 2.0 / 3.0);
    }

    #[test]
    fn diagonal_pixels_are_one_site() {
        let gt = mask(1, 2, 2, &[[0, 0, 0], [1, 1, 0]]);
        let s = one(&mask(1, 2, 2, &[]), &gt);
        assert_eq!(s.n_gt_sites, 1);
    }

    #[test]
    fn site_spanning_slices_counts_per_slice() {
        // One 3D lesion over slices 0..3; prediction finds it on slices 0 and 2 only.
        let mut gt = Array3::<u8>::zeros((3, 4, 4));
        gt.slice_mut(s![.., 1..3, 1..3]).fill(1);
        let mut pred = Array3::<u8>::zeros((3, 4, 4));
        pred[[0, 1, 1]] = 1;
        pred[[2, 2, 2]] = 1;
        let s = one(&pred, &gt);
        assert_eq!((s.n_gt_sites, s.n_correct, s.n_pred_sites, s.n_fp, s.slices), (3, 2, 2, 0, 3));
        assert_eq!(s.iou_hemorrhage, 2.0 / 12.0);
    }

    #[test]
    fn overall_pools_counts_across_volumes() {
        // Volume 1: perfect on 1 pixel of 4. Volume 2: empty prediction, 2 GT pixels of 4.
        let a = mask(1, 2, 2, &[[0, 0, 0]]);
        let gt_b = mask(1, 2, 2, &[[0, 0, 0], [1, 1, 0]]);
        let empty = mask(1, 2, 2, &[]);
        let e = evaluate(&[(a.view(), a.view()), (empty.view(), gt_b.view())]).unwrap();
        assert_eq!(e.per_volume.len(), 2);
        assert_eq!(e.per_volume[0].iou_hemorrhage, 1.0);
        assert_eq!(e.per_volume[1].iou_hemorrhage, 0.0);
        // Pooled: I = 1, U = 3 (not the mean of 1.0 and 0.0).
        assert_eq!(e.overall.iou_hemorrhage, 1.0 / 3.0);
        assert_eq!(e.overall.iou_background, 5.0 / 7.0);
        assert_eq!(e.overall.dice, 2.0 / 4.0);
        assert_eq!((e.overall.n_gt_sites, e.overall.n_correct, e.overall.slices), (2, 1, 2));
    }

    #[test]
    fn nonzero_values_are_foreground() {
        let mut pred = mask(1, 1, 2, &[[0, 0, 0]]);
        pred[[0, 0, 0]] = 255;
        let gt = mask(1, 1, 2, &[[0, 0, 0]]);
        assert_eq!(one(&pred, &gt).miou, 1.0);
    }

    #[test]
    fn shape_mismatch_and_no_pairs_are_errors() {
        let a = Array3::<u8>::zeros((2, 3, 4));
        let b = Array3::<u8>::zeros((2, 4, 3));
        let err = evaluate(&[(a.view(), a.view()), (a.view(), b.view())]).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        let msg = err.to_string();
        assert!(msg.contains("pair 1") && msg.contains("[2, 3, 4]") && msg.contains("[2, 4, 3]"), "{msg}");
        assert!(matches!(evaluate(&[]), Err(Error::InvalidArgument(_))));
    }

    /// Three ground-truth lesions of 1, 20 and 300 voxels at 0.005 mL per voxel (0.005, 0.1 and
    /// 1.5 mL); the prediction finds the middle one on one of its two slices, misses the others,
    /// and adds a 1-voxel false positive.
    #[test]
    fn localisation_by_lesion_size() {
        let mut gt = Array3::<u8>::zeros((3, 40, 40));
        gt[[0, 0, 0]] = 1;
        gt.slice_mut(s![0..2, 10..12, 10..15]).fill(1); // 20 voxels over slices 0 and 1
        gt.slice_mut(s![0..3, 20..30, 20..30]).fill(1); // 300 voxels
        let mut pred = Array3::<u8>::zeros((3, 40, 40));
        pred[[1, 10, 10]] = 1;
        pred[[2, 0, 39]] = 1;
        let e = evaluate_sized(&[(pred.view(), gt.view())], &[0.005]).unwrap();
        let bins = e.overall.by_size.clone().unwrap();
        let got: Vec<_> = bins.iter().map(|b| (b.n_gt_sites, b.n_correct, b.n_pred_sites, b.n_fp)).collect();
        // Both predicted voxels are 1-voxel predicted lesions: the first bin, one of them false.
        assert_eq!(got, [(1, 0, 2, 1), (2, 1, 0, 0), (3, 0, 0, 0), (0, 0, 0, 0)]);
        assert_eq!((bins[0].cl, bins[0].fpl), (Some(0.0), Some(0.5)));
        assert_eq!((bins[1].cl, bins[1].fpl), (Some(0.5), None));
        assert_eq!((bins[3].cl, bins[3].fpl), (None, None));
        assert_eq!((bins[1].min_ml, bins[1].max_ml), (0.1, Some(1.0)), "0.1 mL is the second bin's lower edge");
        // The bins split the pooled counts.
        let o = &e.overall;
        assert_eq!(bins.iter().map(|b| b.n_gt_sites).sum::<usize>(), o.n_gt_sites);
        assert_eq!(bins.iter().map(|b| b.n_fp).sum::<usize>(), o.n_fp);
        // Unsized scores are the same apart from the bins.
        let plain = evaluate(&[(pred.view(), gt.view())]).unwrap().overall;
        assert_eq!(Scores { by_size: None, ..o.clone() }, plain);
        assert_eq!(plain.by_size, None);
        // One unsized pair in a pool: no bins for the pool.
        let mut pool = Pool::default();
        pool.add_sized(pred.view(), gt.view(), 0.005).unwrap();
        pool.add(pred.view(), gt.view()).unwrap();
        assert_eq!(pool.scores().by_size, None);
    }

    #[test]
    fn sized_evaluation_refuses_bad_voxel_volumes() {
        let m = Array3::<u8>::zeros((1, 2, 2));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = evaluate_sized(&[(m.view(), m.view())], &[bad]).unwrap_err().to_string();
            assert!(e.contains("finite and positive"), "{bad}: {e}");
        }
        let e = evaluate_sized(&[(m.view(), m.view())], &[]).unwrap_err().to_string();
        assert!(e.contains("0 voxel volumes for 1 pairs"), "{e}");
    }

    #[test]
    fn scores_serialize_with_null_for_undefined() {
        let e = mask(1, 1, 1, &[]);
        let json = serde_json::to_value(evaluate(&[(e.view(), e.view())]).unwrap()).unwrap();
        assert_eq!(json["overall"]["cl"], serde_json::Value::Null);
        assert_eq!(json["per_volume"][0]["miou"], 1.0);
    }
}
