//! Lesions: the 3D connected components of a binary hemorrhage mask, with size and position.
//!
//! One labelling routine serves both uses in the crate: 3D with 26-connectivity (lesions, METHOD.md
//! section 5) and 2D with 8-connectivity (the per-slice sites of the localisation metrics, section 6).
//! It is a two-pass raster scan with union-find over provisional labels, entirely iterative, so a
//! 512x512x40 volume holding one huge lesion cannot overflow the stack.

use crate::error::{Error, Result};
use ndarray::{Array2, Array3, ArrayView2, ArrayView3};

/// One 3D connected component of a mask.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Lesion {
    /// 1-based rank: by decreasing voxel count, ties by first voxel in x-fastest (raster) order.
    pub id: usize,
    /// Number of voxels.
    pub voxels: usize,
    /// `voxels` times the voxel volume (mm^3), in millilitres.
    pub volume_ml: f64,
    /// Smallest voxel index along x, y, z.
    pub bbox_min: [usize; 3],
    /// Largest voxel index along x, y, z (inclusive).
    pub bbox_max: [usize; 3],
    /// Mean voxel index (x, y, z).
    pub centroid_voxel: [f64; 3],
    /// `centroid_voxel` mapped through the affine, in mm.
    pub centroid_world_mm: [f64; 3],
    /// First axial slice (z index) the lesion appears on; equals `bbox_min[2]`.
    pub first_slice: usize,
    /// Last axial slice (z index) the lesion appears on; equals `bbox_max[2]`.
    pub last_slice: usize,
}

/// Finds the lesions of `mask` (shape `[nz, ny, nx]`, any nonzero voxel is foreground) with
/// 26-connectivity, largest first.
///
/// `spacing` is the voxel size in mm along x, y, z; `affine` (row-major) maps voxel indices
/// (x, y, z, 1) to world millimetres. An empty mask gives an empty list.
///
/// ```
/// use ichseg::lesions::{find_lesions, total_volume_ml};
/// let mut mask = ndarray::Array3::<u8>::zeros((2, 4, 4)); // [nz, ny, nx]
/// mask[[0, 1, 1]] = 1;
/// mask[[1, 2, 2]] = 1; // touches the first voxel diagonally: same lesion
/// mask[[0, 3, 0]] = 1; // separate
/// let eye = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
/// let lesions = find_lesions(mask.view(), [1.0, 1.0, 5.0], &eye);
/// assert_eq!(lesions.len(), 2);
/// assert_eq!((lesions[0].voxels, lesions[0].first_slice, lesions[0].last_slice), (2, 0, 1));
/// assert_eq!(total_volume_ml(&lesions), 3.0 * 5.0 / 1000.0);
/// ```
pub fn find_lesions(mask: ArrayView3<u8>, spacing: [f64; 3], affine: &[[f64; 4]; 4]) -> Vec<Lesion> {
    let (nz, ny, nx) = mask.dim();
    let dims = [nz, ny, nx];
    if mask.len() < u32::MAX as usize {
        let (labels, k) = label_3d::<u32>(mask);
        lesion_stats(&labels, k, dims, spacing, affine)
    } else {
        let (labels, k) = label_3d::<usize>(mask);
        lesion_stats(&labels, k, dims, spacing, affine)
    }
}

/// Clears every lesion (3D, 26-connected, as [`find_lesions`]) of `mask` smaller than `min_ml`
/// millilitres, with `spacing` the voxel size in mm along x, y, z; returns how many were
/// cleared. `min_ml` 0 keeps every lesion. Not in METHOD.md: on the phantoms, most false
/// components of the pseudo masks and of the U-Nets' masks are specks of a few voxels
/// (docs/RESULTS.md).
///
/// ```
/// let mut mask = ndarray::Array3::<u8>::zeros((2, 4, 4)); // [nz, ny, nx]
/// mask[[0, 0, 0]] = 1; // one voxel: 0.005 mL at 1 x 1 x 5 mm
/// mask.slice_mut(ndarray::s![.., 2.., 2..]).fill(1); // 8 voxels: 0.04 mL
/// assert_eq!(ichseg::lesions::remove_small_lesions(&mut mask, [1.0, 1.0, 5.0], 0.01).unwrap(), 1);
/// assert_eq!((mask[[0, 0, 0]], mask.iter().filter(|&&v| v != 0).count()), (0, 8));
/// ```
pub fn remove_small_lesions(mask: &mut Array3<u8>, spacing: [f64; 3], min_ml: f64) -> Result<usize> {
    check_min_lesion_ml(min_ml)?;
    if min_ml == 0.0 {
        return Ok(0);
    }
    let voxel_ml = spacing.iter().product::<f64>() / 1000.0;
    Ok(if mask.len() < u32::MAX as usize {
        let (labels, k) = label_3d::<u32>(mask.view());
        clear_small(mask, &labels, k, voxel_ml, min_ml)
    } else {
        let (labels, k) = label_3d::<usize>(mask.view());
        clear_small(mask, &labels, k, voxel_ml, min_ml)
    })
}

/// `Ok` when `min_ml` is a volume [`remove_small_lesions`] takes (finite, >= 0): the segmenter's
/// and the pseudo-labeller's options check their `min_lesion_ml` with it before any work.
pub(crate) fn check_min_lesion_ml(min_ml: f64) -> Result<()> {
    if min_ml.is_finite() && min_ml >= 0.0 {
        Ok(())
    } else {
        Err(Error::arg(format!("min_lesion_ml must be finite and >= 0, got {min_ml}")))
    }
}

/// The 26-connected components of a mask's nonzero voxels: one label per voxel in raster order
/// (see [`label_raster`]) and their count. u32 labels halve the memory of the label map; only
/// grids of 2^32 voxels or more need usize.
fn label_3d<L: Label>(mask: ArrayView3<u8>) -> (Vec<L>, usize) {
    let (nz, ny, nx) = mask.dim();
    let data = standard_bytes(mask.as_slice(), || mask.iter().copied().collect());
    label_raster::<L>(&data, [nz, ny, nx], &BACKWARD_26)
}

/// Clears the voxels of components `1..=k` of `labels` (raster order, as `mask.iter()`) smaller
/// than `min_ml`; returns how many components that was.
fn clear_small<L: Label>(mask: &mut Array3<u8>, labels: &[L], k: usize, voxel_ml: f64, min_ml: f64) -> usize {
    let mut voxels = vec![0usize; k + 1];
    for l in labels {
        voxels[l.index()] += 1;
    }
    let small: Vec<bool> = voxels.iter().enumerate().map(|(l, &n)| l != 0 && (n as f64 * voxel_ml) < min_ml).collect();
    for (v, l) in mask.iter_mut().zip(labels) {
        if small[l.index()] {
            *v = 0;
        }
    }
    small.iter().filter(|&&s| s).count()
}

/// One label per voxel of `mask` (raster order, x fastest): 0 for background, else the `id` that
/// [`find_lesions`] gives the voxel's lesion (1 = largest). Volumes hold at most 2^31 voxels
/// ([`crate::volume::MAX_VOXELS`]), so u32 labels always fit.
pub(crate) fn lesion_ids(mask: ArrayView3<u8>) -> Vec<u32> {
    let (mut labels, k) = label_3d::<u32>(mask);
    let mut voxels = vec![0usize; k + 1];
    for l in &labels {
        voxels[l.index()] += 1;
    }
    // Same order as lesion_stats: by size, ties by raster order of the first voxel (= label).
    let mut order: Vec<usize> = (1..=k).collect();
    order.sort_by_key(|&l| std::cmp::Reverse(voxels[l]));
    let mut rank = vec![0u32; k + 1];
    for (r, &l) in order.iter().enumerate() {
        rank[l] = (r + 1) as u32;
    }
    for l in labels.iter_mut() {
        *l = rank[l.index()];
    }
    labels
}

/// Each voxel's lesion size in voxels (0 for background), raster order (x fastest): the size of
/// the 3D, 26-connected component it belongs to, as [`find_lesions`] counts it.
pub(crate) fn lesion_sizes(mask: ArrayView3<u8>) -> Vec<u32> {
    let (labels, k) = label_3d::<u32>(mask);
    let mut voxels = vec![0u32; k + 1];
    for l in &labels {
        voxels[l.index()] += 1;
    }
    voxels[0] = 0;
    labels.iter().map(|l| voxels[l.index()]).collect()
}

/// Sum of the lesions' volumes in millilitres.
pub fn total_volume_ml(lesions: &[Lesion]) -> f64 {
    // f64's Sum starts at -0.0: an empty list would print as "-0.00 mL"
    lesions.iter().map(|l| l.volume_ml).fold(0.0, |a, b| a + b)
}

/// Labels the 8-connected components of the nonzero pixels of a 2D image (shape `[ny, nx]`).
///
/// Returns the label image (0 = background, components numbered 1..=k in raster order of their
/// first pixel) and k. Images of 2^32 pixels or more could in principle hold more than `u32::MAX`
/// components; their labels saturate at `u32::MAX` while k stays exact.
///
/// ```
/// let img = ndarray::array![[1u8, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0]];
/// let (labels, k) = ichseg::lesions::label_2d(img.view());
/// assert_eq!(k, 2);
/// assert_eq!(labels, ndarray::array![[1u32, 0, 0], [0, 1, 0], [0, 0, 0], [2, 2, 0]]);
/// ```
pub fn label_2d(slice: ArrayView2<u8>) -> (Array2<u32>, usize) {
    let (ny, nx) = slice.dim();
    let data = standard_bytes(slice.as_slice(), || slice.iter().copied().collect());
    let dims = [1, ny, nx];
    let (labels, k) = if data.len() < u32::MAX as usize {
        label_raster::<u32>(&data, dims, &BACKWARD_26[9..])
    } else {
        let (wide, k) = label_raster::<usize>(&data, dims, &BACKWARD_26[9..]);
        (wide.into_iter().map(|l| u32::try_from(l).unwrap_or(u32::MAX)).collect(), k)
    };
    (Array2::from_shape_vec((ny, nx), labels).expect("one label per pixel"), k)
}

/// The 13 neighbours (dz, dy, dx) of a voxel that precede it in raster order (26-connectivity).
/// The last 4 (dz = 0) are the 8-connectivity half-neighbourhood of a 2D image.
const BACKWARD_26: [(isize, isize, isize); 13] = [
    (-1, -1, -1),
    (-1, -1, 0),
    (-1, -1, 1),
    (-1, 0, -1),
    (-1, 0, 0),
    (-1, 0, 1),
    (-1, 1, -1),
    (-1, 1, 0),
    (-1, 1, 1),
    (0, -1, -1),
    (0, -1, 0),
    (0, -1, 1),
    (0, 0, -1),
];

/// The mask as a contiguous x-fastest buffer, borrowed when the view already is one.
fn standard_bytes<'a>(slice: Option<&'a [u8]>, copy: impl FnOnce() -> Vec<u8>) -> std::borrow::Cow<'a, [u8]> {
    match slice {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(copy()),
    }
}

/// Integer types used as component labels (0 = background).
trait Label: Copy + Eq + Ord {
    const ZERO: Self;
    /// Only called with values no larger than the number of voxels, which the caller has checked
    /// fits the type.
    fn from_usize(n: usize) -> Self;
    fn index(self) -> usize;
}

impl Label for u32 {
    const ZERO: Self = 0;
    fn from_usize(n: usize) -> Self {
        n as u32
    }
    fn index(self) -> usize {
        self as usize
    }
}

impl Label for usize {
    const ZERO: Self = 0;
    fn from_usize(n: usize) -> Self {
        n
    }
    fn index(self) -> usize {
        self
    }
}

/// Labels the nonzero voxels of `data` (dims `[nz, ny, nx]`, x fastest) into components joined
/// through `backward`, the half of the neighbourhood that precedes a voxel in raster order.
///
/// Returns one label per voxel (0 = background, components 1..=k numbered in raster order of
/// their first voxel) and k.
fn label_raster<L: Label>(
    data: &[u8],
    [nz, ny, nx]: [usize; 3],
    backward: &[(isize, isize, isize)],
) -> (Vec<L>, usize) {
    let mut labels = vec![L::ZERO; data.len()];
    // parent[l] of provisional label l; index 0 is background. Each root is the smallest label of
    // its set, i.e. the label created at the component's first voxel in raster order.
    let mut parent: Vec<L> = vec![L::ZERO];
    let mut i = 0;
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                if data[i] != 0 {
                    let mut root: Option<L> = None;
                    for &(dz, dy, dx) in backward {
                        let (Some(zz), Some(yy), Some(xx)) =
                            (z.checked_add_signed(dz), y.checked_add_signed(dy), x.checked_add_signed(dx))
                        else {
                            continue;
                        };
                        if yy >= ny || xx >= nx {
                            continue;
                        }
                        let l = labels[(zz * ny + yy) * nx + xx];
                        if l != L::ZERO {
                            let r = find(&mut parent, l);
                            root = Some(match root {
                                None => r,
                                Some(c) => union(&mut parent, c, r),
                            });
                        }
                    }
                    labels[i] = root.unwrap_or_else(|| {
                        let l = L::from_usize(parent.len());
                        parent.push(l);
                        l
                    });
                }
                i += 1;
            }
        }
    }
    // Final labels: roots numbered in increasing provisional order (= raster order of first voxel);
    // a non-root's root is smaller, so it is already numbered.
    let mut final_label = vec![L::ZERO; parent.len()];
    let mut k = 0;
    for l in 1..parent.len() {
        let r = find(&mut parent, L::from_usize(l));
        final_label[l] = if r.index() == l {
            k += 1;
            L::from_usize(k)
        } else {
            final_label[r.index()]
        };
    }
    for l in labels.iter_mut() {
        *l = final_label[l.index()];
    }
    (labels, k)
}

/// Root of `l`, halving the path on the way.
fn find<L: Label>(parent: &mut [L], mut l: L) -> L {
    while parent[l.index()] != l {
        let grandparent = parent[parent[l.index()].index()];
        parent[l.index()] = grandparent;
        l = grandparent;
    }
    l
}

/// Joins the sets with roots `a` and `b`; the smaller label stays root and is returned.
fn union<L: Label>(parent: &mut [L], a: L, b: L) -> L {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    parent[hi.index()] = lo;
    lo
}

/// Size, bounding box and centroid of components 1..=k of a label map, largest first.
fn lesion_stats<L: Label>(
    labels: &[L],
    k: usize,
    [nz, ny, nx]: [usize; 3],
    spacing: [f64; 3],
    affine: &[[f64; 4]; 4],
) -> Vec<Lesion> {
    struct Acc {
        voxels: usize,
        min: [usize; 3],
        max: [usize; 3],
        // u128: the index sums cannot overflow whatever the volume size.
        sum: [u128; 3],
    }
    let mut acc: Vec<Acc> = (0..k).map(|_| Acc { voxels: 0, min: [usize::MAX; 3], max: [0; 3], sum: [0; 3] }).collect();
    let mut i = 0;
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let l = labels[i].index();
                i += 1;
                if l == 0 {
                    continue;
                }
                let a = &mut acc[l - 1];
                a.voxels += 1;
                for (d, v) in [x, y, z].into_iter().enumerate() {
                    a.min[d] = a.min[d].min(v);
                    a.max[d] = a.max[d].max(v);
                    a.sum[d] += v as u128;
                }
            }
        }
    }
    // Stable sort: equal sizes keep raster order of their first voxel.
    acc.sort_by_key(|a| std::cmp::Reverse(a.voxels));
    let voxel_ml = spacing.iter().product::<f64>() / 1000.0;
    acc.into_iter()
        .enumerate()
        .map(|(rank, a)| {
            let n = a.voxels as f64;
            let c = [a.sum[0] as f64 / n, a.sum[1] as f64 / n, a.sum[2] as f64 / n];
            let mut world = [0.0; 3];
            for (r, w) in world.iter_mut().enumerate() {
                *w = affine[r][0] * c[0] + affine[r][1] * c[1] + affine[r][2] * c[2] + affine[r][3];
            }
            Lesion {
                id: rank + 1,
                voxels: a.voxels,
                volume_ml: n * voxel_ml,
                bbox_min: a.min,
                bbox_max: a.max,
                centroid_voxel: c,
                centroid_world_mm: world,
                first_slice: a.min[2],
                last_slice: a.max[2],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lesion_ids_follow_find_lesions_ranks() {
        // Small lesion first in raster order, large one later: ids must rank by size.
        let m = mask(2, 4, 5, &[[0, 0, 0], [3, 2, 0], [4, 2, 0], [4, 3, 1], [0, 3, 1], [1, 3, 1]]);
        let ids = lesion_ids(m.view());
        let lesions = find_lesions(m.view(), [1.0; 3], &EYE);
        for l in &lesions {
            let n = ids.iter().filter(|&&i| i as usize == l.id).count();
            assert_eq!(n, l.voxels, "lesion {}", l.id);
        }
        assert_eq!(ids[0], 3); // the single voxel at (0, 0, 0) is the smallest
        assert_eq!(ids.iter().filter(|&&i| i == 0).count(), m.len() - 6);
    }

    #[test]
    fn no_lesions_total_plus_zero() {
        let t = total_volume_ml(&[]);
        assert!(t == 0.0 && t.is_sign_positive(), "{t}");
        assert_eq!(format!("{t:.2}"), "0.00");
    }
    use ndarray::{s, Array3};

    const EYE: [[f64; 4]; 4] = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];

    /// Mask of shape [nz, ny, nx] with the given (x, y, z) voxels set.
    fn mask(nz: usize, ny: usize, nx: usize, on: &[[usize; 3]]) -> Array3<u8> {
        let mut m = Array3::zeros((nz, ny, nx));
        for &[x, y, z] in on {
            m[[z, y, x]] = 1;
        }
        m
    }

    #[test]
    fn empty_mask_has_no_lesions() {
        assert!(find_lesions(mask(3, 4, 5, &[]).view(), [1.0; 3], &EYE).is_empty());
        assert!(find_lesions(Array3::<u8>::zeros((0, 4, 5)).view(), [1.0; 3], &EYE).is_empty());
        assert_eq!(total_volume_ml(&[]), 0.0);
    }

    #[test]
    fn single_voxel() {
        let l = find_lesions(mask(2, 3, 4, &[[3, 2, 1]]).view(), [0.5, 0.5, 4.0], &EYE);
        assert_eq!(
            l,
            vec![Lesion {
                id: 1,
                voxels: 1,
                volume_ml: 0.001,
                bbox_min: [3, 2, 1],
                bbox_max: [3, 2, 1],
                centroid_voxel: [3.0, 2.0, 1.0],
                centroid_world_mm: [3.0, 2.0, 1.0],
                first_slice: 1,
                last_slice: 1,
            }]
        );
    }

    #[test]
    fn corner_touching_voxels_are_one_lesion() {
        // Only a shared corner, across slices: 26-connected.
        let l = find_lesions(mask(2, 2, 2, &[[0, 0, 0], [1, 1, 1]]).view(), [1.0; 3], &EYE);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].voxels, 2);
        // Anti-diagonal, the case a forward-only scan would miss.
        let l = find_lesions(mask(2, 2, 2, &[[1, 0, 0], [0, 1, 1]]).view(), [1.0; 3], &EYE);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn separated_voxels_are_two_lesions() {
        let l = find_lesions(mask(1, 1, 3, &[[0, 0, 0], [2, 0, 0]]).view(), [1.0; 3], &EYE);
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].id, l[0].bbox_min), (1, [0, 0, 0]));
        assert_eq!((l[1].id, l[1].bbox_min), (2, [2, 0, 0]));
        // Two slices apart in z is not touching either.
        assert_eq!(find_lesions(mask(3, 1, 1, &[[0, 0, 0], [0, 0, 2]]).view(), [1.0; 3], &EYE).len(), 2);
    }

    #[test]
    fn u_shape_merges_labels_from_both_arms() {
        // Two arms that only join on a later row: the union-find must merge them.
        let mut m = Array3::<u8>::zeros((1, 4, 5));
        m.slice_mut(s![0, 0..3, 0]).fill(1);
        m.slice_mut(s![0, 0..3, 4]).fill(1);
        m.slice_mut(s![0, 3, ..]).fill(1);
        let l = find_lesions(m.view(), [1.0; 3], &EYE);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].voxels, 11);
    }

    #[test]
    fn lesion_spanning_slices_with_bbox_centroid_and_world() {
        let on = [[1, 1, 0], [2, 1, 0], [2, 2, 1], [2, 2, 2], [3, 3, 3]];
        let m = mask(5, 5, 5, &on);
        // Rotation about z by 90 degrees, scaling and translation: x_w = -2y + 10, y_w = 0.5x - 3,
        // z_w = 5z + 7.
        let affine = [[0.0, -2.0, 0.0, 10.0], [0.5, 0.0, 0.0, -3.0], [0.0, 0.0, 5.0, 7.0], [0.0, 0.0, 0.0, 1.0]];
        let l = find_lesions(m.view(), [0.5, 2.0, 5.0], &affine);
        assert_eq!(l.len(), 1);
        let l = &l[0];
        assert_eq!(l.voxels, 5);
        assert_eq!(l.volume_ml, 5.0 * 5.0 / 1000.0);
        assert_eq!((l.bbox_min, l.bbox_max), ([1, 1, 0], [3, 3, 3]));
        assert_eq!((l.first_slice, l.last_slice), (0, 3));
        let c = [10.0 / 5.0, 9.0 / 5.0, 6.0 / 5.0];
        assert_eq!(l.centroid_voxel, c);
        let w = [-2.0 * c[1] + 10.0, 0.5 * c[0] - 3.0, 5.0 * c[2] + 7.0];
        for d in 0..3 {
            assert!((l.centroid_world_mm[d] - w[d]).abs() < 1e-12, "{:?} vs {w:?}", l.centroid_world_mm);
        }
    }

    #[test]
    fn ordered_by_size_then_raster_order() {
        // Raster order of first voxels: A (1 voxel), B (3), C (1), D (3).
        let on = [
            [0, 0, 0], // A
            [4, 0, 0], // B
            [5, 0, 0],
            [6, 0, 0],
            [0, 2, 0], // C
            [4, 2, 1], // D
            [4, 3, 1],
            [4, 4, 1],
        ];
        let l = find_lesions(mask(2, 5, 8, &on).view(), [1.0; 3], &EYE);
        let got: Vec<_> = l.iter().map(|l| (l.id, l.voxels, l.bbox_min)).collect();
        assert_eq!(got, vec![(1, 3, [4, 0, 0]), (2, 3, [4, 2, 1]), (3, 1, [0, 0, 0]), (4, 1, [0, 2, 0])]);
    }

    #[test]
    fn any_nonzero_value_is_foreground_and_views_may_be_strided() {
        let mut m = mask(1, 3, 3, &[[0, 0, 0], [1, 1, 0]]);
        m[[0, 0, 0]] = 255;
        let l = find_lesions(m.view(), [1.0; 3], &EYE);
        assert_eq!(l.len(), 1);
        // A reversed (negative-stride) view is labelled as the array it shows.
        let flipped = m.slice(s![.., .., ..;-1]);
        let l = find_lesions(flipped, [1.0; 3], &EYE);
        assert_eq!((l.len(), l[0].bbox_min, l[0].bbox_max), (1, [1, 0, 0], [2, 1, 0]));
    }

    #[test]
    fn label_2d_uses_8_connectivity_in_raster_order() {
        let img = ndarray::array![[0u8, 1, 0, 0, 1], [1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 0, 1, 1, 1]];
        let (labels, k) = label_2d(img.view());
        assert_eq!(k, 3);
        assert_eq!(labels, ndarray::array![[0u32, 1, 0, 0, 2], [1, 0, 0, 2, 0], [0, 0, 0, 0, 0], [0, 0, 3, 3, 3]]);
        let (labels, k) = label_2d(Array2::<u8>::zeros((0, 3)).view());
        assert_eq!((labels.dim(), k), ((0, 3), 0));
    }

    #[test]
    fn large_lesion_is_iterative() {
        // One 1.6-million-voxel lesion: a recursive flood fill would overflow the test thread's stack.
        let m = Array3::<u8>::ones((40, 200, 200));
        let l = find_lesions(m.view(), [0.5, 0.5, 5.0], &EYE);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].voxels, 40 * 200 * 200);
        assert_eq!(l[0].centroid_voxel, [99.5, 99.5, 19.5]);
    }

    #[test]
    fn small_lesions_are_cleared_by_volume_and_the_rest_kept_as_they_were() {
        // A 2-voxel lesion joined diagonally across slices (26-connectivity), a 1-voxel speck
        // and a 6-voxel lesion whose value 255 must survive unchanged; voxels of 2 x 2 x 5 mm =
        // 0.02 mL.
        let mut m = mask(3, 6, 6, &[[0, 0, 0], [1, 1, 1], [5, 0, 2]]);
        for y in 3..6 {
            for x in 4..6 {
                m[[0, y, x]] = 255;
            }
        }
        let spacing = [2.0, 2.0, 5.0];
        let before = m.clone();
        assert_eq!(remove_small_lesions(&mut m, spacing, 0.0).unwrap(), 0);
        assert_eq!(m, before);
        // 0.04 mL keeps the 2-voxel lesion (exactly 0.04) and the 6-voxel one.
        assert_eq!(remove_small_lesions(&mut m, spacing, 0.04).unwrap(), 1);
        assert_eq!((m[[2, 0, 5]], m[[0, 0, 0]], m[[1, 1, 1]]), (0, 1, 1));
        assert_eq!(m.iter().filter(|&&v| v == 255).count(), 6);
        assert_eq!(remove_small_lesions(&mut m, spacing, 0.05).unwrap(), 1);
        assert_eq!(m.iter().filter(|&&v| v != 0).count(), 6);
        assert_eq!(remove_small_lesions(&mut m, spacing, 1.0).unwrap(), 1);
        assert!(m.iter().all(|&v| v == 0));
        for bad in [f64::NAN, f64::INFINITY, -0.01] {
            assert!(remove_small_lesions(&mut before.clone(), spacing, bad).is_err(), "{bad}");
        }
    }
}
