//! The midsagittal plane, estimated from the symmetry of the skull (docs/FINDINGS.md).
//!
//! Bone is the skull (the largest 26-connected component of voxels at or above
//! [`crate::skull::BONE_HU`]); the brain is not used, so a haematoma's mass effect (midline shift)
//! does not move the plane. A plane `n . p = c` (world mm, RAS+) is good when the skull's
//! voxels, mirrored through it, land on skull again: the score is the fraction of (up to
//! [`SAMPLES`]) skull voxels whose mirror image falls on the skull dilated by about 1.5 mm.
//! The search covers the normals within [`MAX_YAW_DEG`] of world +x about the z axis and
//! [`MAX_ROLL_DEG`] about the y axis: a coarse grid (offset `c` the median of the skull's
//! projections), then a pattern search over yaw, roll and offset with shrinking steps.
//!
//! The plane is "not found" (sides are then "unknown") when the volume's orientation is not
//! known, when there is too little skull ([`MIN_SKULL_ML`]), when the affine cannot be
//! inverted, or when the best score is below [`MIN_SCORE`] (a skull cut by the field of view,
//! a large craniectomy, a head turned beyond the search range, heavy metal artefacts).

use crate::affine::WorldToVoxel;
use crate::error::Result;
use crate::volume::Volume;
use ndarray::Array3;

/// Skull volume below which no plane is estimated (a few slices through the vertex or a
/// volume without bone).
pub const MIN_SKULL_ML: f64 = 10.0;
/// Least fraction of mirrored skull samples that must land on skull.
pub const MIN_SCORE: f64 = 0.6;
/// Search range of the plane's normal about the z axis (head turned left/right), degrees.
pub const MAX_YAW_DEG: f64 = 30.0;
/// Search range of the plane's normal about the y axis (head tilted to a shoulder), degrees.
pub const MAX_ROLL_DEG: f64 = 20.0;
/// Most skull voxels scored per candidate plane (an evenly strided subset).
pub const SAMPLES: usize = 20_000;
/// The coarse grid and the first pattern steps score every this many samples: they only have to
/// land in the right basin; the fine steps score all of them.
const COARSE_STRIDE: usize = 8;

/// The estimated midsagittal plane: the points `p` (world mm) with `normal . p = offset_mm`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Midline {
    pub found: bool,
    /// Unit normal, pointing towards the patient's right (world +x in RAS+).
    pub normal: [f64; 3],
    pub offset_mm: f64,
    /// The point of the plane nearest the world origin (`offset_mm * normal`).
    pub point: [f64; 3],
    /// Fraction of mirrored skull samples that landed on skull (0 when not searched).
    pub score: f64,
    /// Why no plane was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Midline {
    /// No plane, for `reason`.
    pub fn not_found(reason: impl Into<String>, score: f64) -> Self {
        Midline { found: false, normal: [0.0; 3], offset_mm: 0.0, point: [0.0; 3], score, reason: Some(reason.into()) }
    }

    /// Signed distance (mm) of a world point from the plane: positive on the patient's right.
    pub fn signed_distance(&self, p: [f64; 3]) -> f64 {
        dot(self.normal, p) - self.offset_mm
    }
}

/// Estimates the plane from `skull` (shape `[nz, ny, nx]`, nonzero = skull) of `volume`; the
/// candidate planes of each step are scored on `pool` when given.
pub fn estimate(volume: &Volume, skull: &Array3<u8>, pool: Option<&rayon::ThreadPool>) -> Result<Midline> {
    if !volume.oriented() {
        return Ok(Midline::not_found(
            "the volume's orientation is unknown (no affine, or a NIfTI with qform_code and sform_code 0)",
            0.0,
        ));
    }
    let count = skull.iter().filter(|&&v| v != 0).count();
    let skull_ml = count as f64 * volume.voxel_volume_ml();
    if skull_ml < MIN_SKULL_ML {
        let reason = format!("too little skull: {skull_ml:.1} mL, at least {MIN_SKULL_ML} needed");
        return Ok(Midline::not_found(reason, 0.0));
    }
    let Some(to_voxel) = WorldToVoxel::of(&volume.affine()) else {
        return Ok(Midline::not_found("the affine cannot be inverted", 0.0));
    };
    let spacing = volume.spacing();
    let radius = spacing.map(|s| (1.5 / s).round() as usize);
    let target = crate::skull::dilate_box(skull, [radius[0].max(1), radius[1].max(1), radius[2]])?;
    let stride = count.div_ceil(SAMPLES).max(1);
    let samples: Vec<[f64; 3]> = skull
        .indexed_iter()
        .filter(|(_, v)| **v != 0)
        .step_by(stride)
        .map(|((z, y, x), _)| volume.voxel_to_world([x as f64, y as f64, z as f64]))
        .collect();
    let coarse: Vec<[f64; 3]> = samples.iter().step_by(COARSE_STRIDE).copied().collect();
    let search = Search { target: &target, to_voxel, pool };

    // Coarse grid, each candidate with the median offset (the centre of a symmetric skull).
    let mut grid = vec![];
    let mut yaw = -MAX_YAW_DEG;
    while yaw <= MAX_YAW_DEG {
        let mut roll = -MAX_ROLL_DEG;
        while roll <= MAX_ROLL_DEG {
            grid.push((yaw, roll, median_projection(&coarse, normal(yaw, roll))));
            roll += 5.0;
        }
        yaw += 5.0;
    }
    let mut best = (f64::NEG_INFINITY, 0.0, 0.0, 0.0);
    search.take_best(&coarse, &grid, &mut best);
    search.refine(&coarse, &mut best, &[(2.5, 2.0), (1.0, 1.0)]);
    best.0 = search.score(&samples, normal(best.1, best.2), best.3);
    search.refine(&samples, &mut best, &[(0.5, 0.5), (0.25, 0.25)]);
    let (score, yaw, roll, c) = best;
    if score < MIN_SCORE {
        return Ok(Midline::not_found(
            format!("the skull is not symmetric enough: best mirror score {score:.2} < {MIN_SCORE}"),
            score,
        ));
    }
    let n = normal(yaw, roll);
    Ok(Midline { found: true, normal: n, offset_mm: c, point: n.map(|v| v * c), score, reason: None })
}

/// Unit normal turned by `yaw` about z and `roll` about y from world +x (x component > 0).
fn normal(yaw_deg: f64, roll_deg: f64) -> [f64; 3] {
    let (y, r) = (yaw_deg.to_radians(), roll_deg.to_radians());
    [y.cos() * r.cos(), y.sin() * r.cos(), r.sin()]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn median_projection(samples: &[[f64; 3]], n: [f64; 3]) -> f64 {
    let mut t: Vec<f64> = samples.iter().map(|&p| dot(n, p)).collect();
    let mid = t.len() / 2;
    *t.select_nth_unstable_by(mid, |a, b| a.total_cmp(b)).1
}

struct Search<'a> {
    target: &'a Array3<u8>,
    to_voxel: WorldToVoxel,
    pool: Option<&'a rayon::ThreadPool>,
}

impl Search<'_> {
    /// Pattern search from `best` (score, yaw, roll, offset): for each (angle step, offset step),
    /// move to the best of the 26 neighbours until none is better.
    fn refine(&self, samples: &[[f64; 3]], best: &mut (f64, f64, f64, f64), steps: &[(f64, f64)]) {
        for &(da, dc) in steps {
            for _ in 0..20 {
                let (_, y0, r0, c0) = *best;
                let mut neighbours = vec![];
                for sy in [-1.0, 0.0, 1.0] {
                    for sr in [-1.0, 0.0, 1.0] {
                        for sc in [-1.0, 0.0, 1.0] {
                            let (y, r, c) = (y0 + sy * da, r0 + sr * da, c0 + sc * dc);
                            if y.abs() <= MAX_YAW_DEG + 5.0 && r.abs() <= MAX_ROLL_DEG + 5.0 {
                                neighbours.push((y, r, c));
                            }
                        }
                    }
                }
                if !self.take_best(samples, &neighbours, best) {
                    break;
                }
            }
        }
    }

    /// Scores the `(yaw, roll, offset)` candidates (on the pool when there is one) and moves
    /// `best` to the highest score above it, the first of equals; whether it moved.
    fn take_best(&self, samples: &[[f64; 3]], candidates: &[(f64, f64, f64)], best: &mut (f64, f64, f64, f64)) -> bool {
        let score = |&(y, r, c): &(f64, f64, f64)| self.score(samples, normal(y, r), c);
        let scores: Vec<f64> = match self.pool {
            Some(pool) => {
                use rayon::prelude::*;
                pool.install(|| candidates.par_iter().map(score).collect())
            }
            None => candidates.iter().map(score).collect(),
        };
        let mut moved = false;
        for (&(y, r, c), s) in candidates.iter().zip(scores) {
            if s > best.0 {
                *best = (s, y, r, c);
                moved = true;
            }
        }
        moved
    }

    /// Fraction of samples whose mirror image through `n . p = c` lands on the target.
    fn score(&self, samples: &[[f64; 3]], n: [f64; 3], c: f64) -> f64 {
        let (nz, ny, nx) = self.target.dim();
        let hits = samples
            .iter()
            .filter(|&&p| {
                let d = 2.0 * (dot(n, p) - c);
                let q = [p[0] - d * n[0], p[1] - d * n[1], p[2] - d * n[2]];
                let [i, j, k] = self.to_voxel.apply(q).map(|v| v.round());
                // Out of the grid counts as a miss: half a head is not evidence of symmetry.
                if i < 0.0 || j < 0.0 || k < 0.0 || i >= nx as f64 || j >= ny as f64 || k >= nz as f64 {
                    return false;
                }
                self.target[[k as usize, j as usize, i as usize]] != 0
            })
            .count();
        hits as f64 / samples.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_point_right() {
        for (y, r) in [(0.0, 0.0), (-30.0, 20.0), (30.0, -20.0)] {
            let n = normal(y, r);
            assert!(n[0] > 0.0 && (dot(n, n) - 1.0).abs() < 1e-12);
        }
    }
}
