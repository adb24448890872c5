//! CT volumes in Hounsfield units on their native voxel grid.

use crate::error::{Error, Result};
use ndarray::{Array3, ArrayView2, Axis};

/// Largest number of voxels a volume may hold (2^31): far above any CT series, far below
/// what would exhaust memory when a corrupted header declares absurd dimensions.
pub const MAX_VOXELS: usize = 1 << 31;

/// A CT volume: voxel values in HU, the voxel size and the voxel-to-world transform.
///
/// Voxels are stored as an `ndarray` of shape `[nz, ny, nx]` (x varies fastest, as in NIfTI
/// and in a C buffer of axial slices), so `slice(k)` is the k-th axial image with rows along y.
///
/// ```
/// use ichseg::Volume;
/// let v = Volume::from_hu(vec![40.0; 4 * 3 * 2], [4, 3, 2], [0.5, 0.5, 5.0]).unwrap();
/// assert_eq!(v.dims(), [4, 3, 2]);
/// assert_eq!(v.voxel_volume_ml(), 0.5 * 0.5 * 5.0 / 1000.0);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    data: Array3<f32>,
    spacing: [f64; 3],
    affine: [[f64; 4]; 4],
    /// Whether the affine is a real patient orientation (RAS+). Left/right findings are only
    /// made for oriented volumes: a plain scaling affine says nothing about which side is which.
    oriented: bool,
}

impl Volume {
    /// Builds a volume from HU values in x-fastest order with dims `[nx, ny, nz]` and spacing in
    /// mm. The affine defaults to a pure scaling by the spacing.
    pub fn from_hu(values: Vec<f32>, dims: [usize; 3], spacing: [f64; 3]) -> Result<Self> {
        let n = checked_voxel_count(dims)?;
        if values.len() != n {
            return Err(Error::arg(format!(
                "volume of {}x{}x{} needs {n} voxels, got {}",
                dims[0],
                dims[1],
                dims[2],
                values.len()
            )));
        }
        let data =
            Array3::from_shape_vec((dims[2], dims[1], dims[0]), values).map_err(|e| Error::arg(e.to_string()))?;
        Self::from_array(data, spacing, None)
    }

    /// Builds a volume from an array of shape `[nz, ny, nx]`; `affine` maps voxel (i, j, k, 1)
    /// to world millimetres in RAS+ (+x towards the patient's right, +y anterior, +z superior),
    /// `None` meaning a scaling by the spacing and an unknown orientation ([`Volume::oriented`]).
    pub fn from_array(data: Array3<f32>, spacing: [f64; 3], affine: Option<[[f64; 4]; 4]>) -> Result<Self> {
        let (nz, ny, nx) = data.dim();
        checked_voxel_count([nx, ny, nz])?;
        check_spacing(spacing)?;
        let oriented = affine.is_some();
        let affine = affine.unwrap_or_else(|| scaling_affine(spacing));
        if affine.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::arg("affine contains a non-finite value"));
        }
        check_finite(&data)?;
        Ok(Volume { data, spacing, affine, oriented })
    }

    /// `[nx, ny, nz]`.
    pub fn dims(&self) -> [usize; 3] {
        let (nz, ny, nx) = self.data.dim();
        [nx, ny, nz]
    }
    /// Voxel size in mm along x, y, z.
    pub fn spacing(&self) -> [f64; 3] {
        self.spacing
    }
    /// Voxel index (i, j, k, 1) to world coordinates in mm.
    pub fn affine(&self) -> [[f64; 4]; 4] {
        self.affine
    }
    /// Whether the affine gives the patient's orientation (RAS+: world +x towards the patient's
    /// right); false for a volume built without an affine. Side findings need it.
    pub fn oriented(&self) -> bool {
        self.oriented
    }
    /// The same volume with its orientation marked known or unknown (a NIfTI whose qform and
    /// sform codes are both 0 has an affine that is only a scaling).
    pub fn with_oriented(mut self, oriented: bool) -> Self {
        self.oriented = oriented;
        self
    }
    /// HU values, shape `[nz, ny, nx]`.
    pub fn data(&self) -> &Array3<f32> {
        &self.data
    }
    /// Number of axial slices.
    pub fn num_slices(&self) -> usize {
        self.data.len_of(Axis(0))
    }
    /// Axial slice `k` as a `[ny, nx]` view.
    pub fn slice(&self, k: usize) -> ArrayView2<'_, f32> {
        self.data.index_axis(Axis(0), k)
    }
    /// Volume of one voxel in millilitres.
    pub fn voxel_volume_ml(&self) -> f64 {
        self.spacing.iter().product::<f64>() / 1000.0
    }
    /// World coordinates (mm) of a point given in (fractional) voxel indices.
    pub fn voxel_to_world(&self, ijk: [f64; 3]) -> [f64; 3] {
        let a = &self.affine;
        let mut out = [0.0; 3];
        for (r, o) in out.iter_mut().enumerate() {
            *o = a[r][0] * ijk[0] + a[r][1] * ijk[1] + a[r][2] * ijk[2] + a[r][3];
        }
        out
    }
}

/// Voxel sizes accepted, in mm: from a micro-CT's micrometre to a metre. Outside it a spacing is
/// a unit or header error, and voxel volumes would overflow or vanish.
pub const SPACING_RANGE_MM: (f64, f64) = (1e-3, 1e3);

/// Each of the three voxel sizes must lie in [`SPACING_RANGE_MM`].
pub fn check_spacing(spacing: [f64; 3]) -> Result<()> {
    let (lo, hi) = SPACING_RANGE_MM;
    for (axis, s) in ["x", "y", "z"].iter().zip(spacing) {
        if !(lo..=hi).contains(&s) {
            return Err(Error::arg(format!("voxel spacing along {axis} must be {lo}..={hi} mm, got {s:?}")));
        }
    }
    Ok(())
}

/// `nx*ny*nz`, refusing zero sizes and counts beyond [`MAX_VOXELS`] (or that overflow).
pub fn checked_voxel_count(dims: [usize; 3]) -> Result<usize> {
    if dims.contains(&0) {
        return Err(Error::arg(format!("volume dimensions must be non-zero, got {}x{}x{}", dims[0], dims[1], dims[2])));
    }
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= MAX_VOXELS).ok_or_else(|| {
        Error::arg(format!(
            "volume dimensions {}x{}x{} exceed the limit of {MAX_VOXELS} voxels",
            dims[0], dims[1], dims[2]
        ))
    })
}

fn scaling_affine(s: [f64; 3]) -> [[f64; 4]; 4] {
    [[s[0], 0.0, 0.0, 0.0], [0.0, s[1], 0.0, 0.0], [0.0, 0.0, s[2], 0.0], [0.0, 0.0, 0.0, 1.0]]
}

fn check_finite(data: &Array3<f32>) -> Result<()> {
    let count = data.iter().filter(|v| !v.is_finite()).count();
    if count == 0 {
        return Ok(());
    }
    let ((z, y, x), _) = data.indexed_iter().find(|(_, v)| !v.is_finite()).expect("counted above");
    Err(Error::NonFiniteVoxels { count, first: [x, y, z] })
}

/// A CT intensity window (level and width in HU), mapping `[L - W/2, L + W/2]` to `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Window {
    pub level: f32,
    pub width: f32,
}

impl Default for Window {
    /// The brain window of METHOD.md section 2: level 50 HU, width 130 HU.
    fn default() -> Self {
        Window { level: 50.0, width: 130.0 }
    }
}

impl Window {
    /// Maps one HU value into `[0, 1]`.
    #[inline]
    pub fn apply(&self, hu: f32) -> f32 {
        let lo = self.level - self.width / 2.0;
        ((hu - lo) / self.width).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacings_outside_the_physical_range_are_refused() {
        for bad in [1e300, 1e-9, 0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = Volume::from_hu(vec![0.0; 8], [2, 2, 2], [1.0, bad, 1.0]).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("along y"), "{e}");
        }
        let e = Volume::from_hu(vec![0.0; 8], [2, 2, 2], [1e300, 1.0, 1.0]).unwrap_err();
        assert!(e.to_string().contains("0.001..=1000 mm, got 1e300"), "{e}");
        for ok in [SPACING_RANGE_MM.0, 0.45, 5.0, SPACING_RANGE_MM.1] {
            let v = Volume::from_hu(vec![0.0; 8], [2, 2, 2], [ok; 3]).unwrap();
            assert!(v.voxel_volume_ml().is_finite() && v.voxel_volume_ml() > 0.0);
        }
    }

    #[test]
    fn rejects_nan_with_position() {
        let mut v = vec![0.0f32; 2 * 2 * 2];
        v[5] = f32::NAN; // x=1, y=0, z=1
        v[6] = f32::INFINITY;
        match Volume::from_hu(v, [2, 2, 2], [1.0; 3]) {
            Err(Error::NonFiniteVoxels { count, first }) => {
                assert_eq!(count, 2);
                assert_eq!(first, [1, 0, 1]);
            }
            other => panic!("expected NonFiniteVoxels, got {other:?}"),
        }
    }

    #[test]
    fn rejects_zero_absurd_and_mismatched_dims() {
        assert!(Volume::from_hu(vec![], [0, 1, 1], [1.0; 3]).unwrap_err().to_string().contains("non-zero"));
        assert!(checked_voxel_count([100_000; 3]).unwrap_err().to_string().contains("exceed"));
        assert!(checked_voxel_count([usize::MAX, 2, 1]).is_err());
        assert!(Volume::from_hu(vec![0.0; 7], [2, 2, 2], [1.0; 3]).unwrap_err().to_string().contains("needs 8"));
        assert!(Volume::from_hu(vec![0.0; 8], [2, 2, 2], [1.0, 0.0, 1.0]).is_err());
    }

    #[test]
    fn orientation_is_known_only_with_an_affine() {
        let data = || Array3::<f32>::zeros((2, 2, 2));
        assert!(!Volume::from_array(data(), [1.0; 3], None).unwrap().oriented());
        assert!(!Volume::from_hu(vec![0.0; 8], [2, 2, 2], [1.0; 3]).unwrap().oriented());
        let v = Volume::from_array(data(), [1.0; 3], Some(scaling_affine([1.0; 3]))).unwrap();
        assert!(v.oriented());
        assert!(!v.with_oriented(false).oriented());
    }

    #[test]
    fn window_maps_brain_range() {
        let w = Window::default();
        assert_eq!(w.apply(-15.0), 0.0);
        assert_eq!(w.apply(115.0), 1.0);
        assert!((w.apply(50.0) - 0.5).abs() < 1e-6);
        assert_eq!(w.apply(-1000.0), 0.0);
        assert_eq!(w.apply(2000.0), 1.0);
    }

    #[test]
    fn layout_is_x_fastest() {
        let v = Volume::from_hu((0..24).map(|i| i as f32).collect(), [4, 3, 2], [1.0; 3]).unwrap();
        assert_eq!(v.slice(1)[[0, 0]], 12.0);
        assert_eq!(v.slice(0)[[1, 2]], 6.0);
        assert_eq!(v.voxel_to_world([1.0, 2.0, 1.0]), [1.0, 2.0, 1.0]);
    }
}
