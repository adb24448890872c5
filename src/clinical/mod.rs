//! Clinical findings per lesion and for the whole scan (docs/FINDINGS.md): ABC/2 beside the
//! voxel-counted volume, HU density, side relative to the midsagittal plane, the >= 30 mL and
//! inner-table flags, totals and a one-line summary.
//!
//! One pass over the volume per step, so the cost stays linear in voxels: the skull (largest
//! component of bone, [`crate::skull`]), the plane ([`midline`]), a dilation of the skull for the inner-table
//! flag, then one pass over the lesion labels.

pub mod abc2;
pub mod midline;

use crate::error::{Error, Result};
use crate::lesions::{lesion_ids, total_volume_ml, Lesion};
use crate::skull::{dilate_box, skull};
use crate::volume::Volume;
use abc2::Abc2;
use midline::Midline;
use ndarray::ArrayView3;

/// Bone threshold, shared with the intracranial mask ([`crate::skull`]).
pub use crate::skull::BONE_HU;
/// A lesion touches the inner table when one of its voxels lies within this distance of a
/// skull voxel along each axis (and at least one voxel).
pub const INNER_TABLE_MM: f64 = 1.5;
/// The volume flag of the ICH score.
pub const LARGE_ML: f64 = 30.0;
/// A lesion crosses the midline when at least this fraction of its voxels lies on each side.
pub const CROSSING_FRACTION: f64 = 0.1;

/// Side of a lesion relative to the midsagittal plane (patient's left and right).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Left,
    Right,
    /// At least [`CROSSING_FRACTION`] of the voxels on each side.
    Crossing,
    /// No plane was found ([`Midline::reason`]) or the orientation is unknown.
    Unknown,
}

impl Side {
    /// How the summary line says it.
    fn phrase(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
            Side::Crossing => "crossing the midline",
            Side::Unknown => "(side unknown)",
        }
    }
}

/// HU statistics over a lesion's voxels, from the original volume.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Density {
    pub mean_hu: f64,
    /// The middle value (mean of the two middle ones for an even count).
    pub median_hu: f64,
    pub max_hu: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Flags {
    /// Voxel-counted volume >= [`LARGE_ML`].
    pub ge_30_ml: bool,
    /// Within [`INNER_TABLE_MM`] of the skull: a hint that the bleed may be extra-axial.
    pub touches_inner_table: bool,
}

/// The findings of one lesion; `Findings::lesions[i]` belongs to the i-th lesion (id i + 1).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LesionFindings {
    pub abc2_ml: f64,
    pub abc2: Abc2,
    pub density: Density,
    pub side: Side,
    pub flags: Flags,
}

/// The findings of one scan.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Findings {
    pub lesions: Vec<LesionFindings>,
    pub midline: Midline,
    pub total_volume_ml: f64,
    pub total_abc2_ml: f64,
    /// Volume of the largest lesion (0 when none).
    pub largest_lesion_ml: f64,
    /// e.g. "2 lesions, 34.2 mL total (ABC/2 31.0 mL), largest 30.1 mL left, >= 30 mL".
    pub summary: String,
}

impl Findings {
    /// Findings for `lesions`, the result of [`crate::lesions::find_lesions`] on `mask` (shape
    /// `[nz, ny, nx]` as `volume`), with HU and geometry from `volume`.
    pub fn new(volume: &Volume, mask: ArrayView3<u8>, lesions: &[Lesion]) -> Result<Findings> {
        Self::on_pool(volume, mask, lesions, None)
    }

    /// [`Findings::new`], with the midline search's candidate planes scored on `pool` (a
    /// segmenter passes its engine's threads); the result is the same.
    pub fn on_pool(
        volume: &Volume,
        mask: ArrayView3<u8>,
        lesions: &[Lesion],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<Findings> {
        let dim = volume.data().dim();
        if mask.dim() != dim {
            return Err(Error::arg(format!("mask is {:?} but the volume is {dim:?} ([nz, ny, nx])", mask.dim())));
        }
        let spacing = volume.spacing();
        let (midline, near_skull) = if lesions.is_empty() {
            // Nothing to place: skip the skull work.
            (Midline::not_found("no lesions", 0.0), None)
        } else {
            let skull = skull(volume)?;
            let midline = midline::estimate(volume, &skull, pool)?;
            let r = spacing.map(|s| ((INNER_TABLE_MM / s).ceil() as usize).max(1));
            (midline, Some(dilate_box(&skull, r)?))
        };
        let ids = lesion_ids(mask);
        let (_, ny, nx) = dim;
        let k = lesions.len();
        struct Acc {
            hu: Vec<f32>,
            per_slice: Vec<usize>,
            left: usize,
            right: usize,
            touches: bool,
        }
        let mut acc: Vec<Acc> = lesions
            .iter()
            .map(|l| Acc {
                hu: Vec::new(),
                per_slice: vec![0; l.last_slice + 1 - l.first_slice],
                left: 0,
                right: 0,
                touches: false,
            })
            .collect();
        // indexed_iter runs in logical (raster) order, as the labels do
        for (i, ((z, y, x), &hu)) in volume.data().indexed_iter().enumerate() {
            let id = ids[i] as usize;
            if id == 0 {
                continue;
            }
            let lesion = lesions.get(id - 1).filter(|l| (l.first_slice..=l.last_slice).contains(&z));
            let (Some(l), Some(a)) = (lesion, acc.get_mut(id - 1)) else {
                return Err(Error::arg(format!("the mask does not match its {k} lesion(s)")));
            };
            a.hu.push(hu);
            a.per_slice[z - l.first_slice] += 1;
            if midline.found {
                let d = midline.signed_distance(volume.voxel_to_world([x as f64, y as f64, z as f64]));
                if d > 0.0 {
                    a.right += 1;
                } else if d < 0.0 {
                    a.left += 1;
                }
            }
            if near_skull.as_ref().is_some_and(|n| n[[z, y, x]] != 0) {
                a.touches = true;
            }
        }
        let mut out = Vec::with_capacity(k);
        for (l, a) in lesions.iter().zip(acc) {
            if a.hu.len() != l.voxels {
                return Err(Error::arg(format!("the mask does not match its {k} lesion(s)")));
            }
            // The first slice with the most voxels (max_by_key would take the last).
            let (best, _) = a.per_slice.iter().enumerate().fold((0, 0), |b, (z, &n)| if n > b.1 { (z, n) } else { b });
            let z = l.first_slice + best;
            let mut on_slice = Vec::with_capacity(a.per_slice[best]);
            for y in l.bbox_min[1]..=l.bbox_max[1] {
                for x in l.bbox_min[0]..=l.bbox_max[0] {
                    if ids[(z * ny + y) * nx + x] as usize == l.id {
                        on_slice.push((x, y));
                    }
                }
            }
            let slices = a.per_slice.iter().filter(|&&n| n > 0).count();
            let abc2 = abc2::abc2(&on_slice, spacing, slices);
            let side = if !midline.found {
                Side::Unknown
            } else {
                let n = l.voxels as f64;
                if a.left as f64 >= CROSSING_FRACTION * n && a.right as f64 >= CROSSING_FRACTION * n {
                    Side::Crossing
                } else if a.right > a.left {
                    Side::Right
                } else {
                    Side::Left
                }
            };
            out.push(LesionFindings {
                abc2_ml: abc2.ml,
                abc2,
                density: density(a.hu),
                side,
                flags: Flags { ge_30_ml: l.volume_ml >= LARGE_ML, touches_inner_table: a.touches },
            });
        }
        let total_volume_ml = total_volume_ml(lesions);
        let total_abc2_ml = out.iter().map(|f| f.abc2_ml).fold(0.0, |a, b| a + b);
        let largest_lesion_ml = lesions.first().map_or(0.0, |l| l.volume_ml);
        let summary = summary(lesions, &out, total_volume_ml, total_abc2_ml);
        Ok(Findings { lesions: out, midline, total_volume_ml, total_abc2_ml, largest_lesion_ml, summary })
    }
}

/// The one-line summary, e.g. "2 lesions, 34.2 mL total (ABC/2 31.0 mL), largest 30.1 mL left,
/// >= 30 mL"; "no hemorrhage found" when there is no lesion.
pub fn summary(lesions: &[Lesion], findings: &[LesionFindings], total_ml: f64, total_abc2_ml: f64) -> String {
    let (Some(l), Some(f)) = (lesions.first(), findings.first()) else {
        return "no hemorrhage found".to_string();
    };
    let n = lesions.len();
    let mut s = format!(
        "{n} lesion{}, {total_ml:.1} mL total (ABC/2 {total_abc2_ml:.1} mL), largest {:.1} mL {}",
        if n == 1 { "" } else { "s" },
        l.volume_ml,
        f.side.phrase()
    );
    if f.flags.ge_30_ml {
        s.push_str(", >= 30 mL");
    }
    s
}

fn density(mut hu: Vec<f32>) -> Density {
    if hu.is_empty() {
        return Density { mean_hu: 0.0, median_hu: 0.0, max_hu: 0.0 };
    }
    let n = hu.len();
    let mean_hu = hu.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let max_hu = hu.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let (lower, &mut upper, _) = hu.select_nth_unstable_by(n / 2, |a, b| a.total_cmp(b));
    let median_hu = if n % 2 == 1 {
        upper as f64
    } else {
        // the largest of the lower half is the other middle value
        let below = lower.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        (below as f64 + upper as f64) / 2.0
    };
    Density { mean_hu, median_hu, max_hu }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn density_mean_median_max() {
        let d = density(vec![60.0, 40.0, 80.0, 50.0]);
        assert_eq!((d.mean_hu, d.median_hu, d.max_hu), (57.5, 55.0, 80.0));
        let d = density(vec![70.0, 30.0, 45.0]);
        assert_eq!((d.median_hu, d.max_hu), (45.0, 70.0));
    }

    #[test]
    fn summary_says_count_totals_and_largest() {
        let lesion = |id, ml| Lesion {
            id,
            voxels: 1,
            volume_ml: ml,
            bbox_min: [0; 3],
            bbox_max: [0; 3],
            centroid_voxel: [0.0; 3],
            centroid_world_mm: [0.0; 3],
            first_slice: 0,
            last_slice: 0,
        };
        let f = |side, big| LesionFindings {
            abc2_ml: 1.0,
            abc2: Abc2 { a_mm: 1.0, b_mm: 1.0, c_mm: 1.0, ml: 1.0 },
            density: Density { mean_hu: 60.0, median_hu: 60.0, max_hu: 70.0 },
            side,
            flags: Flags { ge_30_ml: big, touches_inner_table: false },
        };
        let s = summary(&[lesion(1, 30.1), lesion(2, 4.1)], &[f(Side::Left, true), f(Side::Right, false)], 34.2, 31.0);
        assert_eq!(s, "2 lesions, 34.2 mL total (ABC/2 31.0 mL), largest 30.1 mL left, >= 30 mL");
        let s = summary(&[lesion(1, 2.0)], &[f(Side::Unknown, false)], 2.0, 1.5);
        assert_eq!(s, "1 lesion, 2.0 mL total (ABC/2 1.5 mL), largest 2.0 mL (side unknown)");
        assert_eq!(summary(&[], &[], 0.0, 0.0), "no hemorrhage found");
    }
}
