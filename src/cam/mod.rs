//! Class activation maps over one slice's tap activations (METHOD.md section 3).
//!
//! Every function takes the activations `A` (`[K, h, w]`) of one tap layer and, where needed,
//! the gradients `G = dy_c/dA` (same shape) of the target score `y_c` (the bleed logit, before
//! softmax). Capturing `A` and `G` from a network is not done here. Formulas, with
//! `ReLU(x) = max(x, 0)` and sums over channels `k`, element-wise over `h x w`:
//!
//! - [`layercam`]: `L = ReLU( sum_k ReLU(G_k) * A_k )`.
//! - [`normalize_max`]: `C = L / max(L)`, all zeros where `max(L) <= 0`.
//! - [`pc1`]: pixels are `h*w` samples of `K` features; centre each channel
//!   (`X_k = A_k - mean(A_k)`), take the top eigenvector `v` of the `K x K` covariance `X^T X`
//!   (power iteration in f64, deterministic), project `p = X v`, flip the sign so that `p`
//!   correlates positively with a reference map (the LayerCAM map), and min-max normalise to
//!   `[0, 1]` (zeros if `p` is constant). Same projection as pytorch-grad-cam's EigenCAM, which
//!   instead leaves the sign to the SVD.
//! - [`gradcam`]: `w_k = mean(G_k)`, `ReLU( sum_k w_k A_k )`, then [`normalize_max`].
//! - [`sfcam`]: `C = up(normalize_max(L))`, `P = up(pc1(A, L))`, `CAM = (C + P * C) / 2` at the
//!   input size, where `up` is [`crate::preprocess::resize_bilinear`] (PyTorch bilinear,
//!   `align_corners=False`); for the first tap `CAM = tanh(lambda * CAM / max(CAM))` (zeros where
//!   `max(CAM) = 0`), `lambda` = [`DEFAULT_LAMBDA`].
//!
//! Parity with pytorch-grad-cam 1.5.7 (LayerCAM, GradCAM, EigenCAM) is tested in `tests/cam.rs`
//! against `tests/fixtures/cam/` (written by `training/fixtures/cam.py`).
//!
//! ```
//! use ndarray::Array3;
//! # fn main() -> ichseg::Result<()> {
//! let a = Array3::from_shape_fn((4, 8, 8), |(k, y, x)| ((k + 1) * (y + x)) as f32);
//! let g = Array3::from_elem((4, 8, 8), 0.5f32);
//! let cam = ichseg::cam::sfcam(a.view(), g.view(), 32, 32, true, ichseg::cam::DEFAULT_LAMBDA)?;
//! assert_eq!(cam.dim(), (32, 32));
//! assert!(cam.iter().all(|&v| (0.0..=1.0).contains(&v)));
//! # Ok(()) }
//! ```

pub(crate) mod batch;
#[cfg(feature = "gpu")]
pub(crate) mod cuda;
#[cfg(any(feature = "gpu", test))]
pub(crate) mod device;
mod pca;

pub use pca::pc1;
#[cfg(any(feature = "gpu", test))]
pub(crate) use pca::top_eigenvector;

use crate::preprocess::resize_bilinear;
use crate::{Error, Result};
use ndarray::{Array2, ArrayView2, ArrayView3, Zip};

/// The layer-1 amplification factor `lambda` of METHOD.md section 3, step 5.
pub const DEFAULT_LAMBDA: f32 = 2.0;

/// Checks that `a` is non-empty and, if given, that `g` has the same shape.
fn check(a: ArrayView3<f32>, g: Option<ArrayView3<f32>>) -> Result<()> {
    if a.is_empty() {
        return Err(Error::arg(format!("cam: empty activations {:?}", a.dim())));
    }
    if let Some(g) = g {
        if g.dim() != a.dim() {
            return Err(Error::arg(format!("cam: gradients {:?} do not match activations {:?}", g.dim(), a.dim())));
        }
    }
    Ok(())
}

/// `ReLU( sum_k w_k(y, x) * A_k(y, x) )` accumulated in f64.
fn weighted_relu_sum(a: ArrayView3<f32>, weight: impl Fn(usize, usize, usize) -> f64) -> Array2<f32> {
    let (kk, h, w) = a.dim();
    let mut acc = Array2::<f64>::zeros((h, w));
    for k in 0..kk {
        for ((y, x), s) in acc.indexed_iter_mut() {
            *s += weight(k, y, x) * a[[k, y, x]] as f64;
        }
    }
    acc.mapv(|v| v.max(0.0) as f32)
}

/// LayerCAM: `L = ReLU( sum_k ReLU(G_k) * A_k )`, shape `[h, w]`.
///
/// Errors if `a` is empty or `g` has another shape.
pub fn layercam(a: ArrayView3<f32>, g: ArrayView3<f32>) -> Result<Array2<f32>> {
    check(a, Some(g))?;
    Ok(weighted_relu_sum(a, |k, y, x| g[[k, y, x]].max(0.0) as f64))
}

/// Grad-CAM: `w_k = mean(G_k)`, `normalize_max( ReLU( sum_k w_k A_k ) )`, shape `[h, w]`.
///
/// Errors if `a` is empty or `g` has another shape.
pub fn gradcam(a: ArrayView3<f32>, g: ArrayView3<f32>) -> Result<Array2<f32>> {
    check(a, Some(g))?;
    let n = (a.dim().1 * a.dim().2) as f64;
    let weights: Vec<f64> = g.outer_iter().map(|gk| gk.iter().map(|&v| v as f64).sum::<f64>() / n).collect();
    let cam = weighted_relu_sum(a, |k, _, _| weights[k]);
    Ok(normalize_max(cam.view()))
}

/// `C = map / max(map)`; all zeros where `max(map) <= 0` (or the map is empty).
pub fn normalize_max(map: ArrayView2<f32>) -> Array2<f32> {
    let max = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max > 0.0 && max.is_finite() {
        map.mapv(|v| v / max)
    } else {
        Array2::zeros(map.dim())
    }
}

/// SF-CAM of one tap at the input size `[out_rows, out_cols]`, values in `[0, 1]`:
/// `CAM = (C + P * C) / 2` with `C = up(normalize_max(layercam(a, g)))` and
/// `P = up(pc1(a, layercam(a, g)))`; if `first_layer`, `CAM = tanh(lambda * CAM / max(CAM))`
/// (zeros where `max(CAM) = 0`). `lambda` is usually [`DEFAULT_LAMBDA`].
///
/// Errors on empty or mismatched `a`/`g`, a zero output size, or a non-finite or negative
/// `lambda`.
pub fn sfcam(
    a: ArrayView3<f32>,
    g: ArrayView3<f32>,
    out_rows: usize,
    out_cols: usize,
    first_layer: bool,
    lambda: f32,
) -> Result<Array2<f32>> {
    if out_rows == 0 || out_cols == 0 {
        return Err(Error::arg(format!("sfcam: empty output size {out_rows}x{out_cols}")));
    }
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(Error::arg(format!("sfcam: lambda must be finite and >= 0, got {lambda}")));
    }
    let l = layercam(a, g)?;
    let c = resize_bilinear(normalize_max(l.view()).view(), out_rows, out_cols);
    let p = resize_bilinear(pc1(a, l.view())?.view(), out_rows, out_cols);
    let mut cam = Array2::<f32>::zeros((out_rows, out_cols));
    Zip::from(&mut cam).and(&c).and(&p).for_each(|o, &c, &p| *o = (c + p * c) / 2.0);
    if first_layer {
        let max = cam.iter().copied().fold(0.0f32, f32::max);
        if max > 0.0 {
            cam.mapv_inplace(|v| (lambda * v / max).tanh());
        } else {
            cam.fill(0.0);
        }
    }
    Ok(cam)
}

/// Which class activation map each tap yields (METHOD.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CamMethod {
    /// SF-CAM: `(C + P * C) / 2` from LayerCAM `C` and the PC1 projection `P`; the first tap
    /// amplified by `tanh(lambda * CAM / max(CAM))` ([`sfcam`]).
    #[default]
    Sf,
    /// LayerCAM alone: `C = normalize_max(layercam(A, G))` (steps 1-2 of section 3).
    Layer,
    /// Grad-CAM, the paper's baseline ([`gradcam`]); taps default to `ichseg.deep_tap`.
    Grad,
}

impl std::str::FromStr for CamMethod {
    type Err = Error;
    /// `sf`, `layer` or `grad`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sf" => Ok(CamMethod::Sf),
            "layer" => Ok(CamMethod::Layer),
            "grad" => Ok(CamMethod::Grad),
            _ => Err(Error::arg(format!("unknown CAM method {s:?}: expected sf, layer or grad"))),
        }
    }
}

/// One tap's CAM at the input size `[rows, cols]`, values in `[0, 1]`, from its activations
/// `a` and gradients `g` (`[K, h, w]`): SF-CAM ([`sfcam`], amplified when `first_layer`),
/// LayerCAM (`normalize_max(layercam)`) or Grad-CAM, upsampled bilinearly.
pub fn tap_cam(
    method: CamMethod,
    a: ArrayView3<f32>,
    g: ArrayView3<f32>,
    (rows, cols): (usize, usize),
    first_layer: bool,
    lambda: f32,
) -> Result<Array2<f32>> {
    match method {
        CamMethod::Sf => sfcam(a, g, rows, cols, first_layer, lambda),
        CamMethod::Layer => Ok(resize_bilinear(normalize_max(layercam(a, g)?.view()).view(), rows, cols)),
        CamMethod::Grad => Ok(resize_bilinear(gradcam(a, g)?.view(), rows, cols)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array3};

    #[test]
    fn layercam_hand_2x2x2() {
        // A_0 = [[1, 2], [3, 4]], A_1 = [[5, 6], [7, 8]]
        let a = array![[[1.0f32, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]];
        // G_0 = [[1, -1], [0.5, 2]], G_1 = [[-2, 1], [0, -1]]
        let g = array![[[1.0f32, -1.0], [0.5, 2.0]], [[-2.0, 1.0], [0.0, -1.0]]];
        // ReLU(G) * A summed: [[1*1 + 0, 0 + 1*6], [0.5*3 + 0, 2*4 + 0]]
        let l = layercam(a.view(), g.view()).unwrap();
        assert_eq!(l, array![[1.0f32, 6.0], [1.5, 8.0]]);
        // all-negative gradients -> zero map
        let l = layercam(a.view(), g.mapv(|v| -v.abs()).view()).unwrap();
        assert!(l.iter().all(|&v| v == 0.0));
        // negative activations with positive gradients are clipped by the outer ReLU
        let l = layercam(a.mapv(|v| -v).view(), g.mapv(f32::abs).view()).unwrap();
        assert!(l.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn normalize_max_cases() {
        let z = normalize_max(Array2::<f32>::zeros((3, 4)).view());
        assert_eq!(z.dim(), (3, 4));
        assert!(z.iter().all(|&v| v == 0.0));
        let n = normalize_max(array![[0.0f32, 2.0], [1.0, 4.0]].view());
        assert_eq!(n, array![[0.0f32, 0.5], [0.25, 1.0]]);
    }

    #[test]
    fn gradcam_hand() {
        let a = array![[[1.0f32, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]];
        // w = [1, -0.5]: 1*A_0 - 0.5*A_1 = [[-1.5, -1], [-0.5, 0]] -> ReLU -> zeros
        let g = array![[[1.0f32, 1.0], [1.0, 1.0]], [[-0.5, -0.5], [-0.5, -0.5]]];
        assert!(gradcam(a.view(), g.view()).unwrap().iter().all(|&v| v == 0.0));
        // w = [1, -0.25]: [[-0.25, 0.5], [1.25, 2]] -> [[0, 0.25], [0.625, 1]]
        let g = array![[[2.0f32, 0.0], [1.0, 1.0]], [[-0.25, -0.25], [-0.5, 0.0]]];
        let c = gradcam(a.view(), g.view()).unwrap();
        assert_eq!(c, array![[0.0f32, 0.25], [0.625, 1.0]]);
    }

    #[test]
    fn shape_errors() {
        let a = Array3::<f32>::zeros((2, 3, 3));
        let g = Array3::<f32>::zeros((2, 3, 4));
        assert!(layercam(a.view(), g.view()).is_err());
        assert!(gradcam(a.view(), g.view()).is_err());
        assert!(sfcam(a.view(), g.view(), 8, 8, false, DEFAULT_LAMBDA).is_err());
        let e = Array3::<f32>::zeros((0, 3, 3));
        assert!(layercam(e.view(), e.view()).is_err());
        assert!(pc1(e.view(), Array2::zeros((3, 3)).view()).is_err());
        assert!(pc1(a.view(), Array2::zeros((3, 4)).view()).is_err());
        assert!(sfcam(a.view(), a.view(), 0, 8, false, DEFAULT_LAMBDA).is_err());
        assert!(sfcam(a.view(), a.view(), 8, 8, true, f32::NAN).is_err());
    }
}
