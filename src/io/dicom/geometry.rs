//! A series' geometry from its slices' ImagePositionPatient / ImageOrientationPatient: the
//! order of the slices along the normal, checks that they form one regular volume, and the
//! voxel-to-RAS affine (docs/DICOM.md).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Largest difference between two slices' direction cosines still read as one orientation.
pub const ORIENTATION_TOLERANCE: f64 = 1e-4;
/// Largest difference between a gap and the series' step (its smallest gap), as a fraction of
/// the step (with [`SPACING_TOLERANCE_MM`] as a floor): scanners write positions rounded to a few
/// decimals, a missing slice doubles a gap.
pub const SPACING_TOLERANCE: f64 = 0.01;
/// Floor of the gap tolerance, and the distance under which two positions are one.
pub const SPACING_TOLERANCE_MM: f64 = 0.01;
/// Largest angle, in degrees, between the line through the slices' positions and the slice
/// normal before the series counts as acquired with a tilted gantry.
pub const TILT_TOLERANCE_DEG: f64 = 0.1;

/// What geometry needs of one slice.
#[derive(Debug, Clone)]
pub struct SlicePlacement {
    pub path: PathBuf,
    /// ImagePositionPatient: the centre of the first transmitted pixel, LPS mm.
    pub position: [f64; 3],
    /// ImageOrientationPatient: row direction then column direction cosines, LPS.
    pub orientation: [f64; 6],
    /// PixelSpacing: (between rows, between columns) in mm.
    pub pixel_spacing: [f64; 2],
}

/// The regular grid a series' sorted slices make.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Indices into the slices given, in increasing position along the normal.
    pub order: Vec<usize>,
    /// Voxel size along columns (x), rows (y) and slices (z), mm.
    pub spacing: [f64; 3],
    /// Voxel (i = column, j = row, k = sorted slice) to RAS mm.
    pub affine_ras: [[f64; 4]; 4],
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}
fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}
fn name(p: &Path) -> String {
    p.display().to_string()
}

/// Unit row and column directions of an ImageOrientationPatient, refusing ones that are not
/// two orthogonal unit vectors.
fn directions(s: &SlicePlacement) -> Result<([f64; 3], [f64; 3])> {
    let o = s.orientation;
    let (row, col) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    if (norm(row) - 1.0).abs() > 1e-3 || (norm(col) - 1.0).abs() > 1e-3 || dot(row, col).abs() > 1e-3 {
        return Err(Error::image(&s.path, format!("ImageOrientationPatient {o:?} is not two orthogonal unit vectors")));
    }
    let (nr, nc) = (norm(row), norm(col));
    Ok((row.map(|v| v / nr), col.map(|v| v / nc)))
}

/// Sorts the slices along their normal and checks they make one regular volume: one
/// orientation and pixel spacing, no duplicate position, equal gaps, no gantry tilt.
pub fn grid(slices: &[SlicePlacement]) -> Result<Grid> {
    let first = slices.first().ok_or_else(|| Error::arg("a series without slices has no geometry"))?;
    if slices.len() < 2 {
        return Err(Error::image(&first.path, "the series has one slice: a volume needs at least two"));
    }
    for s in slices {
        let differs = s.orientation.iter().zip(first.orientation).any(|(a, b)| (a - b).abs() > ORIENTATION_TOLERANCE);
        if differs {
            return Err(Error::image(
                &s.path,
                format!(
                    "mixed orientations: ImageOrientationPatient {:?} here, {:?} in {}",
                    s.orientation,
                    first.orientation,
                    name(&first.path)
                ),
            ));
        }
        let spacing_differs = s.pixel_spacing.iter().zip(first.pixel_spacing).any(|(a, b)| (a - b).abs() > 1e-4 * b);
        if spacing_differs {
            return Err(Error::image(
                &s.path,
                format!(
                    "mixed pixel spacings: {:?} here, {:?} in {}",
                    s.pixel_spacing,
                    first.pixel_spacing,
                    name(&first.path)
                ),
            ));
        }
    }
    let (row, col) = directions(first)?;
    let normal = cross(row, col);
    let mut order: Vec<usize> = (0..slices.len()).collect();
    let along = |i: usize| dot(slices[i].position, normal);
    order.sort_by(|&a, &b| along(a).total_cmp(&along(b)));

    let gaps: Vec<f64> = order.windows(2).map(|w| along(w[1]) - along(w[0])).collect();
    for (w, gap) in order.windows(2).zip(&gaps) {
        if *gap < SPACING_TOLERANCE_MM {
            return Err(Error::image(
                &slices[w[1]].path,
                format!("duplicate slice: same position along the normal as {}", name(&slices[w[0]].path)),
            ));
        }
    }
    // The smallest gap is the series' step: a missing slice only ever widens a gap.
    let step = gaps.iter().copied().fold(f64::INFINITY, f64::min);
    let tolerance = (SPACING_TOLERANCE * step).max(SPACING_TOLERANCE_MM);
    for (w, gap) in order.windows(2).zip(&gaps) {
        if gap - step > tolerance {
            let what = if *gap > 1.5 * step { "a gap (a missing slice?)" } else { "uneven slice spacing" };
            return Err(Error::image(
                &slices[w[1]].path,
                format!("{what}: {gap:.4} mm from {} where the series steps {step:.4} mm", name(&slices[w[0]].path)),
            ));
        }
    }

    let p0 = slices[order[0]].position;
    for &i in &order[1..] {
        let d = sub(slices[i].position, p0);
        let along_d = dot(d, normal);
        let off = norm(sub(d, normal.map(|v| v * along_d)));
        let angle = off.atan2(along_d).to_degrees();
        if angle > TILT_TOLERANCE_DEG {
            return Err(Error::image(
                &slices[i].path,
                format!(
                    "gantry tilt: slice positions leave the slice normal by {angle:.2} degrees; resample the \
                     series to an untilted grid first (ichseg does not resample)"
                ),
            ));
        }
    }

    let n = order.len();
    let step = (along(order[n - 1]) - along(order[0])) / (n - 1) as f64;
    let [dr, dc] = first.pixel_spacing;
    let spacing = [dc, dr, step];
    // LPS columns: i along the row direction by the column spacing, j along the column direction
    // by the row spacing, k along the normal by the slice step; RAS flips x and y.
    let lps = [row.map(|v| v * dc), col.map(|v| v * dr), normal.map(|v| v * step), p0];
    let mut affine_ras = [[0.0; 4]; 4];
    for (axis, column) in lps.iter().enumerate() {
        for r in 0..3 {
            let flip = if r < 2 { -1.0 } else { 1.0 };
            affine_ras[r][axis] = flip * column[r] + 0.0; // + 0.0: no -0 in printed affines
        }
    }
    affine_ras[3][3] = 1.0;
    Ok(Grid { order, spacing, affine_ras })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AXIAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];

    fn series(positions: &[[f64; 3]], orientation: [f64; 6]) -> Vec<SlicePlacement> {
        positions
            .iter()
            .enumerate()
            .map(|(i, &position)| SlicePlacement {
                path: PathBuf::from(format!("s{i}.dcm")),
                position,
                orientation,
                pixel_spacing: [0.5, 0.25],
            })
            .collect()
    }

    #[test]
    fn sorts_by_position_along_the_normal_and_builds_the_ras_affine() {
        let g = grid(&series(&[[-10.0, -20.0, 5.0], [-10.0, -20.0, -5.0], [-10.0, -20.0, 0.0]], AXIAL)).unwrap();
        assert_eq!(g.order, vec![1, 2, 0]);
        assert_eq!(g.spacing, [0.25, 0.5, 5.0]);
        let expected = [[-0.25, 0.0, 0.0, 10.0], [0.0, -0.5, 0.0, 20.0], [0.0, 0.0, 5.0, -5.0], [0.0, 0.0, 0.0, 1.0]];
        assert_eq!(g.affine_ras, expected);
    }

    #[test]
    fn an_oblique_series_keeps_its_directions() {
        let (s, c) = (30f64.to_radians().sin(), 30f64.to_radians().cos());
        // Rows along x, columns turned 30 degrees from y towards z: the normal is (0, -s, c).
        let o = [1.0, 0.0, 0.0, 0.0, c, s];
        let n = [0.0, -s, c];
        let g = grid(&series(&[[0.0; 3], n.map(|v| 2.0 * v), n.map(|v| 4.0 * v)], o)).unwrap();
        assert!((g.spacing[2] - 2.0).abs() < 1e-12);
        assert!((g.affine_ras[1][2] - 2.0 * s).abs() < 1e-12 && (g.affine_ras[2][2] - 2.0 * c).abs() < 1e-12);
        assert!((g.affine_ras[1][1] + 0.5 * c).abs() < 1e-12, "column direction flipped to RAS");
    }

    #[test]
    fn refuses_duplicates_gaps_tilt_mixed_orientations_and_one_slice() {
        let z = |zs: &[f64]| zs.iter().map(|&z| [0.0, 0.0, z]).collect::<Vec<_>>();
        let e = grid(&series(&z(&[0.0, 2.0, 2.0, 4.0]), AXIAL)).unwrap_err().to_string();
        assert!(e.contains("duplicate slice"), "{e}");
        let e = grid(&series(&z(&[0.0, 2.0, 4.0, 8.0, 10.0]), AXIAL)).unwrap_err().to_string();
        assert!(e.contains("missing slice") && e.contains("s3.dcm") && e.contains("s2.dcm"), "{e}");
        let tilted: Vec<_> = (0..4).map(|k| [0.0, 0.3 * k as f64, 2.0 * k as f64]).collect();
        let e = grid(&series(&tilted, AXIAL)).unwrap_err().to_string();
        assert!(e.contains("gantry tilt") && e.contains("8.53 degrees"), "{e}");
        let mut mixed = series(&z(&[0.0, 2.0, 4.0]), AXIAL);
        mixed[2].orientation = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0];
        let e = grid(&mixed).unwrap_err().to_string();
        assert!(e.contains("mixed orientations") && e.contains("s2.dcm") && e.contains("s0.dcm"), "{e}");
        let e = grid(&series(&z(&[0.0]), AXIAL)).unwrap_err().to_string();
        assert!(e.contains("one slice"), "{e}");
        let e = grid(&series(&z(&[0.0, 2.0]), [1.0, 0.0, 0.0, 1.0, 0.0, 0.0])).unwrap_err().to_string();
        assert!(e.contains("orthogonal"), "{e}");
    }

    #[test]
    fn rounding_in_positions_is_not_a_gap() {
        let g = grid(&series(&[[0.0, 0.0, 0.0], [0.0, 0.0, 2.5004], [0.0, 0.0, 4.9999], [0.0, 0.0, 7.5]], AXIAL));
        assert!((g.unwrap().spacing[2] - 2.5).abs() < 1e-9);
    }
}
