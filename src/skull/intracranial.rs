//! The intracranial mask: the space the skull encloses, computed from the CT itself, so that
//! pseudo-labelling (before the dense CRF) and segmentation can keep their masks off the bone,
//! the scalp and whatever lies outside the head (docs/INTRACRANIAL.md).
//!
//! Per axial slice, with bone = voxels at or above [`super::BONE_HU`] ([`super::is_bone`]):
//!
//! 1. **Enclosed**: the non-bone pixels that cannot reach the slice's border without crossing
//!    bone (a flood fill of the outside, 4-connected, so a ring touching only diagonally
//!    still closes).
//! 2. **Hull, for an open ring**: when the enclosed area is below [`CLOSED_FRACTION`] of the
//!    area inside the convex hull of the slice's bone (a craniotomy or a fracture opens the
//!    ring and the outside floods in), the region is the hull's inside, not bone, instead,
//!    but only when the bone runs along the hull's outline (at least [`HULL_BONE_COVER`] of it
//!    within [`HULL_BONE_MM`] of bone), as an open skull does and the jaw and spine below the
//!    skull do not. A morphological closing was not used: bridging a gap of several
//!    centimetres in a ring a few millimetres thick needs a radius that also fills the narrow
//!    fossae of the skull base; the hull bridges a gap of any width along its chord.
//! 3. Holes of the region (calcifications) are filled, the region is **eroded** by the margin
//!    in millimetres (in-plane, with the pixel spacing: a pixel stays when its centre lies more
//!    than the margin plus half a pixel from the centre of every pixel outside the region, so
//!    the margin counts from the region's edge), and bone is removed.
//!
//! A slice with no bone, or whose bone encloses nothing and is not an open ring, gets an empty
//! mask: slices above the head or below the skull are not invented into brain.

use super::is_bone;
use crate::alloc::{try_array3, try_map3};
use crate::error::{Error, Result};
use crate::volume::Volume;
use ndarray::{Array2, Array3, ArrayView2, Axis};

/// The margin `ichseg` suggests (`--intracranial-margin-mm`): enough to drop the inner table's
/// partial-volume rim, which the bone threshold misses, while cutting little of a bleed that
/// lies against the bone.
pub const DEFAULT_MARGIN_MM: f64 = 2.0;
/// The largest margin accepted: beyond it the mask is mostly gone on an adult head.
pub const MAX_MARGIN_MM: f64 = 50.0;
/// A slice's ring counts as closed when the region it encloses is at least this fraction of the
/// non-bone area inside its bone's convex hull.
pub const CLOSED_FRACTION: f64 = 0.5;
/// An open ring is bridged by its convex hull only when at least this fraction of the hull's
/// outline lies within [`HULL_BONE_MM`] of bone.
pub const HULL_BONE_COVER: f64 = 0.7;
/// See [`HULL_BONE_COVER`].
pub const HULL_BONE_MM: f64 = 5.0;

/// How a slice's region was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SliceRegion {
    /// No bone, or bone that encloses nothing and is not an open ring: empty.
    None,
    /// The space the bone ring closes.
    Enclosed,
    /// An open ring, bridged by its convex hull.
    Hull,
}

/// The intracranial mask of a volume and how each slice got its part.
#[derive(Debug, Clone, PartialEq)]
pub struct IntracranialMask {
    /// 1 = inside the skull (after the margin), shape `[nz, ny, nx]`.
    pub mask: Array3<u8>,
    pub margin_mm: f64,
    /// One entry per axial slice.
    pub slices: Vec<SliceRegion>,
}

/// What a report says about the mask.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IntracranialSummary {
    pub margin_mm: f64,
    pub voxels: usize,
    pub volume_ml: f64,
    /// Slices whose region the ring encloses, bridged by the hull, and empty.
    pub slices_enclosed: usize,
    pub slices_hull: usize,
    pub slices_empty: usize,
}

impl IntracranialMask {
    /// Counts for a report; `voxel_ml` is the volume of one voxel.
    pub fn summary(&self, voxel_ml: f64) -> IntracranialSummary {
        let voxels = self.mask.iter().filter(|&&v| v != 0).count();
        let count = |r| self.slices.iter().filter(|&&s| s == r).count();
        IntracranialSummary {
            margin_mm: self.margin_mm,
            voxels,
            volume_ml: voxels as f64 * voxel_ml,
            slices_enclosed: count(SliceRegion::Enclosed),
            slices_hull: count(SliceRegion::Hull),
            slices_empty: count(SliceRegion::None),
        }
    }
}

/// A margin in millimetres: finite, in `0..=MAX_MARGIN_MM`.
pub fn check_margin_mm(margin_mm: f64) -> Result<()> {
    if margin_mm.is_finite() && (0.0..=MAX_MARGIN_MM).contains(&margin_mm) {
        Ok(())
    } else {
        Err(Error::arg(format!(
            "the intracranial margin must be a finite number of millimetres in 0..={MAX_MARGIN_MM}, got {margin_mm}"
        )))
    }
}

/// The intracranial mask of `volume`, eroded by `margin_mm` (see the [module docs](self)).
pub fn intracranial_mask(volume: &Volume, margin_mm: f64) -> Result<IntracranialMask> {
    check_margin_mm(margin_mm)?;
    let [sx, sy, _] = volume.spacing();
    let mut mask = try_array3(volume.data().dim(), 0u8, "the intracranial mask")?;
    let mut slices = Vec::with_capacity(volume.num_slices());
    for z in 0..volume.num_slices() {
        let (region, kind) = slice_mask(volume.slice(z), [sx, sy], margin_mm);
        mask.index_axis_mut(Axis(0), z).assign(&region);
        slices.push(kind);
    }
    Ok(IntracranialMask { mask, margin_mm, slices })
}

/// Zeroes every element of `values` outside `mask` (same shape; checked).
pub fn zero_outside<T: Copy + Default>(values: &mut Array3<T>, mask: &Array3<u8>) -> Result<()> {
    fill_outside(values, mask, T::default())
}

/// Sets every element of `values` outside `mask` to `fill` (same shape; checked).
pub fn fill_outside<T: Copy>(values: &mut Array3<T>, mask: &Array3<u8>, fill: T) -> Result<()> {
    if values.dim() != mask.dim() {
        return Err(Error::arg(format!(
            "intracranial mask is {:?} but the array is {:?} ([nz, ny, nx])",
            mask.shape(),
            values.shape()
        )));
    }
    ndarray::Zip::from(values).and(mask).for_each(|v, &m| {
        if m == 0 {
            *v = fill;
        }
    });
    Ok(())
}

/// What a skull-stripped CT holds outside the intracranial mask: air, as around the head.
pub const AIR_HU: f32 = -1000.0;

/// `volume`'s intracranial mask at `margin_mm` and the copy of `volume` stripped to it
/// ([`strip_outside`]).
pub fn skull_strip(volume: &Volume, margin_mm: f64) -> Result<(IntracranialMask, Volume)> {
    let mask = intracranial_mask(volume, margin_mm)?;
    let stripped = strip_outside(volume, &mask.mask)?;
    Ok((mask, stripped))
}

/// A copy of `volume` with air ([`AIR_HU`]) outside `mask`: what a classifier trained on
/// skull-stripped CTs (`ichseg.skull_strip_mm`) sees, and what `ichseg skull-strip` writes.
pub fn strip_outside(volume: &Volume, mask: &Array3<u8>) -> Result<Volume> {
    let mut hu = try_map3(volume.data(), "the skull-stripped volume", |&v| v)?;
    fill_outside(&mut hu, mask, AIR_HU)?;
    Ok(Volume::from_array(hu, volume.spacing(), Some(volume.affine()))?.with_oriented(volume.oriented()))
}

/// One slice's mask (`[ny, nx]`, HU) and how it was found; `spacing` is `[sx, sy]` in mm.
pub fn slice_mask(hu: ArrayView2<f32>, spacing: [f64; 2], margin_mm: f64) -> (Array2<u8>, SliceRegion) {
    let bone = hu.mapv(is_bone);
    let empty = || (Array2::zeros(hu.dim()), SliceRegion::None);
    if !bone.iter().any(|&b| b) {
        return empty();
    }
    let outside = flood_from_border(&bone.mapv(|b| !b));
    let enclosed = ndarray::Zip::from(&bone).and(&outside).map_collect(|&b, &o| !b && !o);
    let enclosed_area = enclosed.iter().filter(|&&v| v).count();
    let hull = convex_hull(&bone);
    let inside_hull =
        hull.as_ref().map(|h| fill_polygon(h, bone.dim())).unwrap_or_else(|| Array2::from_elem(bone.dim(), false));
    let hull_area = ndarray::Zip::from(&inside_hull).and(&bone).fold(0usize, |n, &h, &b| n + usize::from(h && !b));
    let (region, kind) = if enclosed_area > 0 && enclosed_area as f64 >= CLOSED_FRACTION * hull_area as f64 {
        (enclosed, SliceRegion::Enclosed)
    } else if hull_area > 0 && hull.as_ref().is_some_and(|h| outline_cover(h, &bone, spacing) >= HULL_BONE_COVER) {
        (ndarray::Zip::from(&inside_hull).and(&bone).map_collect(|&h, &b| h && !b), SliceRegion::Hull)
    } else {
        return empty();
    };
    // Fill holes (calcifications inside), erode by the margin, then drop bone.
    let filled = flood_from_border(&region.mapv(|r| !r)).mapv(|o| !o);
    let d2 = distance2(&filled.mapv(|f| !f), spacing);
    // Centre-to-centre distances are half a pixel longer than the distance to the region's edge.
    let limit = (margin_mm + 0.5 * spacing[0].min(spacing[1])).powi(2);
    let out = ndarray::Zip::from(&filled).and(&d2).and(&bone).map_collect(|&f, &d, &b| u8::from(f && !b && d > limit));
    if out.iter().all(|&v| v == 0) {
        return empty();
    }
    (out, kind)
}

/// The pixels of `passable` reachable from the slice's border through passable pixels
/// (4-connected).
fn flood_from_border(passable: &Array2<bool>) -> Array2<bool> {
    let (ny, nx) = passable.dim();
    let mut seen = Array2::from_elem((ny, nx), false);
    let mut stack = Vec::new();
    let push = |y: usize, x: usize, seen: &mut Array2<bool>, stack: &mut Vec<(usize, usize)>| {
        if passable[[y, x]] && !seen[[y, x]] {
            seen[[y, x]] = true;
            stack.push((y, x));
        }
    };
    for x in 0..nx {
        push(0, x, &mut seen, &mut stack);
        push(ny - 1, x, &mut seen, &mut stack);
    }
    for y in 0..ny {
        push(y, 0, &mut seen, &mut stack);
        push(y, nx - 1, &mut seen, &mut stack);
    }
    while let Some((y, x)) = stack.pop() {
        if y > 0 {
            push(y - 1, x, &mut seen, &mut stack);
        }
        if y + 1 < ny {
            push(y + 1, x, &mut seen, &mut stack);
        }
        if x > 0 {
            push(y, x - 1, &mut seen, &mut stack);
        }
        if x + 1 < nx {
            push(y, x + 1, &mut seen, &mut stack);
        }
    }
    seen
}

/// The convex hull of the set pixels' centres as `(x, y)` vertices, counter-clockwise in
/// pixel coordinates (Andrew's monotone chain over each row's leftmost and rightmost pixel,
/// which have the same hull); `None` when it has no area.
fn convex_hull(set: &Array2<bool>) -> Option<Vec<(f64, f64)>> {
    let mut points = Vec::new();
    for (y, row) in set.axis_iter(Axis(0)).enumerate() {
        let first = row.iter().position(|&b| b);
        let last = row.iter().rposition(|&b| b);
        if let (Some(a), Some(b)) = (first, last) {
            points.push((a as f64, y as f64));
            if b != a {
                points.push((b as f64, y as f64));
            }
        }
    }
    // Pixel centres are small integers: the f64 cross products are exact.
    let hull = crate::hull::convex_hull(points);
    (hull.len() >= 3).then_some(hull)
}

/// The pixels whose centres lie in the convex polygon `hull` (`(x, y)` vertices), as
/// `[ny, nx]`: per row, the span between the outline's crossings.
fn fill_polygon(hull: &[(f64, f64)], (ny, nx): (usize, usize)) -> Array2<bool> {
    let mut inside = Array2::from_elem((ny, nx), false);
    const EPS: f64 = 1e-9;
    for y in 0..ny {
        let yf = y as f64;
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (i, &a) in hull.iter().enumerate() {
            let b = hull[(i + 1) % hull.len()];
            if yf < a.1.min(b.1) - EPS || yf > a.1.max(b.1) + EPS {
                continue;
            }
            if (b.1 - a.1).abs() < EPS {
                lo = lo.min(a.0.min(b.0));
                hi = hi.max(a.0.max(b.0));
            } else {
                let x = a.0 + (yf - a.1) * (b.0 - a.0) / (b.1 - a.1);
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
        if lo > hi {
            continue;
        }
        let first = (lo - EPS).ceil().max(0.0) as usize;
        let last = ((hi + EPS).floor() as usize).min(nx - 1);
        for x in first..=last {
            inside[[y, x]] = true;
        }
    }
    inside
}

/// Fraction of the hull's outline (sampled every pixel) within [`HULL_BONE_MM`] of bone.
fn outline_cover(hull: &[(f64, f64)], bone: &Array2<bool>, [sx, sy]: [f64; 2]) -> f64 {
    let d2 = distance2(bone, [sx, sy]);
    let (ny, nx) = bone.dim();
    let (mut near, mut total) = (0usize, 0usize);
    for (i, &a) in hull.iter().enumerate() {
        let b = hull[(i + 1) % hull.len()];
        let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as usize;
        for k in 0..steps {
            let t = k as f64 / steps as f64;
            let x = ((a.0 + t * (b.0 - a.0)).round() as usize).min(nx - 1);
            let y = ((a.1 + t * (b.1 - a.1)).round() as usize).min(ny - 1);
            total += 1;
            near += usize::from(d2[[y, x]] <= HULL_BONE_MM * HULL_BONE_MM);
        }
    }
    near as f64 / total.max(1) as f64
}

/// Squared distance in mm² from each pixel's centre to the nearest centre of a `sites` pixel
/// (infinite when there is none): the exact Euclidean distance transform of Felzenszwalb and
/// Huttenlocher, along x then y, with the pixel spacing `[sx, sy]`.
fn distance2(sites: &Array2<bool>, [sx, sy]: [f64; 2]) -> Array2<f64> {
    let (ny, nx) = sites.dim();
    let mut d = sites.mapv(|s| if s { 0.0 } else { f64::INFINITY });
    let mut buf = vec![0.0; ny.max(nx)];
    for mut row in d.axis_iter_mut(Axis(0)) {
        let f: Vec<f64> = row.to_vec();
        edt_1d(&f, sx, &mut buf[..nx]);
        row.iter_mut().zip(&buf[..nx]).for_each(|(o, &v)| *o = v);
    }
    for mut col in d.axis_iter_mut(Axis(1)) {
        let f: Vec<f64> = col.to_vec();
        edt_1d(&f, sy, &mut buf[..ny]);
        col.iter_mut().zip(&buf[..ny]).for_each(|(o, &v)| *o = v);
    }
    d
}

/// One pass of the transform: `out[i] = min_j ((i - j) s)^2 + f[j]` over the finite `f[j]`,
/// by the lower envelope of the parabolas rooted at them.
fn edt_1d(f: &[f64], s: f64, out: &mut [f64]) {
    let sq = |v: f64| v * v;
    let mut roots: Vec<usize> = Vec::with_capacity(f.len());
    // bounds[k]: where parabola roots[k] starts to be the lowest
    let mut bounds: Vec<f64> = Vec::with_capacity(f.len());
    for (q, &fq) in f.iter().enumerate() {
        if !fq.is_finite() {
            continue;
        }
        let hq = fq + sq(q as f64 * s);
        while let Some(&p) = roots.last() {
            let hp = f[p] + sq(p as f64 * s);
            let x = (hq - hp) / (2.0 * s * (q - p) as f64);
            if x <= *bounds.last().unwrap_or(&f64::NEG_INFINITY) && roots.len() > 1 {
                roots.pop();
                bounds.pop();
            } else {
                roots.push(q);
                bounds.push(x);
                break;
            }
        }
        if roots.is_empty() {
            roots.push(q);
            bounds.push(f64::NEG_INFINITY);
        }
    }
    if roots.is_empty() {
        out.fill(f64::INFINITY);
        return;
    }
    let mut k = 0;
    for (i, o) in out.iter_mut().enumerate() {
        let x = i as f64 * s;
        while k + 1 < roots.len() && bounds[k + 1] < x {
            k += 1;
        }
        *o = sq(x - roots[k] as f64 * s) + f[roots[k]];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_transform_matches_brute_force() {
        let mut sites = Array2::from_elem((9, 13), false);
        for &(y, x) in &[(0, 0), (4, 7), (8, 12), (5, 2), (4, 8)] {
            sites[[y, x]] = true;
        }
        let (sx, sy) = (0.7, 1.9);
        let d = distance2(&sites, [sx, sy]);
        for ((y, x), &v) in d.indexed_iter() {
            let want = sites
                .indexed_iter()
                .filter(|(_, &s)| s)
                .map(|((yy, xx), _)| {
                    let (dx, dy) = ((x as f64 - xx as f64) * sx, (y as f64 - yy as f64) * sy);
                    dx * dx + dy * dy
                })
                .fold(f64::INFINITY, f64::min);
            assert!((v - want).abs() < 1e-9, "({y}, {x}): {v} vs {want}");
        }
        assert!(distance2(&Array2::from_elem((3, 4), false), [1.0, 1.0]).iter().all(|v| v.is_infinite()));
    }

    #[test]
    fn hull_of_an_l_covers_its_triangle() {
        let mut set = Array2::from_elem((6, 6), false);
        for i in 0..6 {
            set[[5, i]] = true; // bottom row
            set[[i, 0]] = true; // left column
        }
        let hull = convex_hull(&set).unwrap();
        let inside = fill_polygon(&hull, set.dim());
        for ((y, x), &v) in inside.indexed_iter() {
            assert_eq!(v, x <= y, "({y}, {x})");
        }
        let mut line = Array2::from_elem((4, 4), false);
        line[[2, 0]] = true;
        line[[2, 3]] = true;
        assert!(convex_hull(&line).is_none(), "a line has no area");
    }

    #[test]
    fn margins_are_checked() {
        assert!(check_margin_mm(0.0).is_ok() && check_margin_mm(MAX_MARGIN_MM).is_ok());
        for bad in [-0.1, f64::NAN, f64::INFINITY, MAX_MARGIN_MM + 1.0] {
            let e = check_margin_mm(bad).unwrap_err();
            assert!(e.to_string().contains("intracranial margin"), "{e}");
        }
    }

    #[test]
    fn strip_puts_air_outside_the_mask_and_keeps_the_geometry() {
        let hu = Array3::from_shape_fn((2, 3, 4), |(z, y, x)| (z * 100 + y * 10 + x) as f32);
        let affine = [[-0.5, 0.0, 0.0, 10.0], [0.0, 0.5, 0.0, -3.0], [0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 0.0, 1.0]];
        let volume = Volume::from_array(hu, [0.5, 0.5, 2.0], Some(affine)).unwrap();
        let mask = Array3::from_shape_fn((2, 3, 4), |(_, y, x)| u8::from(y == 1 && x > 0));
        let stripped = strip_outside(&volume, &mask).unwrap();
        assert_eq!((stripped.spacing(), stripped.affine(), stripped.oriented()), ([0.5, 0.5, 2.0], affine, true));
        for ((z, y, x), &v) in stripped.data().indexed_iter() {
            let want = if mask[[z, y, x]] == 1 { volume.data()[[z, y, x]] } else { AIR_HU };
            assert_eq!(v, want, "({z}, {y}, {x})");
        }
        let e = strip_outside(&volume, &Array3::zeros((2, 3, 3))).unwrap_err();
        assert!(e.to_string().contains("intracranial mask is [2, 3, 3]"), "{e}");
    }
}
