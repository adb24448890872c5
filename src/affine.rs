//! The inverse of a voxel-to-world affine, shared by every stage that maps millimetres back to
//! voxels (the midline search, reading a DICOM-SEG onto a grid).

/// World mm to fractional voxel indices: the inverse of an affine's 3x3 part and translation
/// (`None` when the 3x3 part is singular).
pub(crate) struct WorldToVoxel {
    m: [[f64; 3]; 3],
    t: [f64; 3],
}

impl WorldToVoxel {
    pub(crate) fn of(a: &[[f64; 4]; 4]) -> Option<WorldToVoxel> {
        let [r0, r1, r2] = [a[0], a[1], a[2]];
        let det = r0[0] * (r1[1] * r2[2] - r1[2] * r2[1]) - r0[1] * (r1[0] * r2[2] - r1[2] * r2[0])
            + r0[2] * (r1[0] * r2[1] - r1[1] * r2[0]);
        if !det.is_normal() {
            return None;
        }
        let m = [
            [
                (r1[1] * r2[2] - r1[2] * r2[1]) / det,
                (r0[2] * r2[1] - r0[1] * r2[2]) / det,
                (r0[1] * r1[2] - r0[2] * r1[1]) / det,
            ],
            [
                (r1[2] * r2[0] - r1[0] * r2[2]) / det,
                (r0[0] * r2[2] - r0[2] * r2[0]) / det,
                (r0[2] * r1[0] - r0[0] * r1[2]) / det,
            ],
            [
                (r1[0] * r2[1] - r1[1] * r2[0]) / det,
                (r0[1] * r2[0] - r0[0] * r2[1]) / det,
                (r0[0] * r1[1] - r0[1] * r1[0]) / det,
            ],
        ];
        Some(WorldToVoxel { m, t: [r0[3], r1[3], r2[3]] })
    }

    pub(crate) fn apply(&self, p: [f64; 3]) -> [f64; 3] {
        let d = [p[0] - self.t[0], p[1] - self.t[1], p[2] - self.t[2]];
        self.m.map(|row| row[0] * d[0] + row[1] * d[1] + row[2] * d[2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_undoes_the_affine() {
        let a = [[0.0, -0.8, 0.1, 10.0], [0.9, 0.0, 0.0, -20.0], [0.05, 0.0, 5.0, 3.0], [0.0, 0.0, 0.0, 1.0]];
        let inv = WorldToVoxel::of(&a).unwrap();
        let ijk = [3.0, 7.5, 2.0];
        let w: Vec<f64> = (0..3).map(|r| a[r][0] * ijk[0] + a[r][1] * ijk[1] + a[r][2] * ijk[2] + a[r][3]).collect();
        let back = inv.apply([w[0], w[1], w[2]]);
        for (b, e) in back.iter().zip(ijk) {
            assert!((b - e).abs() < 1e-9, "{back:?}");
        }
        let singular = [[1.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        assert!(WorldToVoxel::of(&singular).is_none());
    }
}
