//! ABC/2: the bedside ellipsoid estimate of a haematoma's volume (Kothari et al., Stroke 1996),
//! measured on the mask as a clinician measures it on the screen.
//!
//! - A: the largest diameter on the axial slice where the lesion has the most voxels;
//! - B: the largest extent perpendicular to A on that slice;
//! - C: the number of slices the lesion appears on times the slice thickness (every slice
//!   counts 1; Kothari's variant weighting slices by their area relative to the largest is not
//!   used);
//! - ABC/2 in mm^3, reported in mL.
//!
//! Diameters run between voxel *edges*, as calipers on the image do: the distance between the
//! two farthest voxel centres plus the width of one voxel along that direction
//! (`|u_x| s_x + |u_y| s_y` for a unit direction `u` and in-plane spacing `s`), and likewise for
//! B. The in-plane voxel axes are taken as orthogonal (true of every CT grid).

/// The three diameters (mm) and the ABC/2 volume (mL) of one lesion.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Abc2 {
    pub a_mm: f64,
    pub b_mm: f64,
    pub c_mm: f64,
    pub ml: f64,
}

/// ABC/2 from the lesion's voxels `(x, y)` on its largest axial slice, the voxel spacing
/// (x, y, z in mm) and the number of slices the lesion appears on. Empty input gives zeros.
pub fn abc2(largest_slice: &[(usize, usize)], spacing: [f64; 3], slices: usize) -> Abc2 {
    let [sx, sy, sz] = spacing;
    if largest_slice.is_empty() || slices == 0 {
        return Abc2 { a_mm: 0.0, b_mm: 0.0, c_mm: 0.0, ml: 0.0 };
    }
    let points: Vec<(f64, f64)> = largest_slice.iter().map(|&(x, y)| (x as f64 * sx, y as f64 * sy)).collect();
    let hull = crate::hull::convex_hull(points);
    // Diameter of the hull: quadratic in hull vertices, which number at most a few hundred.
    let (mut best, mut u) = (0.0f64, (1.0, 0.0));
    for (i, p) in hull.iter().enumerate() {
        for q in &hull[i + 1..] {
            let d = (q.0 - p.0).hypot(q.1 - p.1);
            if d > best {
                best = d;
                u = ((q.0 - p.0) / d, (q.1 - p.1) / d);
            }
        }
    }
    let width = |d: (f64, f64)| d.0.abs() * sx + d.1.abs() * sy;
    let a_mm = best + width(u);
    let v = (-u.1, u.0);
    let proj = hull.iter().map(|p| p.0 * v.0 + p.1 * v.1);
    let (lo, hi) = proj.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let b_mm = (hi - lo) + width(v);
    let c_mm = slices as f64 * sz;
    Abc2 { a_mm, b_mm, c_mm, ml: a_mm * b_mm * c_mm / 2.0 / 1000.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_voxel_is_one_voxel_wide() {
        let r = abc2(&[(3, 4)], [0.5, 0.8, 5.0], 1);
        assert_eq!((r.a_mm, r.b_mm, r.c_mm), (0.5, 0.8, 5.0));
        assert!((r.ml - 0.5 * 0.8 * 5.0 / 2.0 / 1000.0).abs() < 1e-12);
        assert_eq!(abc2(&[], [1.0; 3], 0).ml, 0.0);
    }

    #[test]
    fn rectangle_diameter_is_its_diagonal() {
        // 10 x 4 voxels of 1 x 2 mm: A = centre diagonal + a voxel's width along it.
        let pts: Vec<(usize, usize)> = (0..10).flat_map(|x| (0..4).map(move |y| (x, y))).collect();
        let r = abc2(&pts, [1.0, 2.0, 3.0], 2);
        let (dx, dy) = (9.0, 6.0);
        let d = f64::hypot(dx, dy);
        assert!((r.a_mm - (d + dx / d * 1.0 + dy / d * 2.0)).abs() < 1e-9, "{r:?}");
        assert_eq!(r.c_mm, 6.0);
        assert!(r.b_mm > 0.0 && r.b_mm < r.a_mm);
    }
}
