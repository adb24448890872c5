//! Slice preprocessing: windowing, bilinear resizing to and from the model grid.
//!
//! Resizing follows PyTorch's `F.interpolate(mode="bilinear", align_corners=False,
//! antialias=False)` (= ONNX Resize linear/half_pixel), the convention the models are trained
//! with, so that pipelines match their Python references voxel for voxel.

use crate::volume::Window;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// Per-output-coordinate source indices and weights along one axis.
struct AxisMap {
    lo: Vec<usize>,
    hi: Vec<usize>,
    frac: Vec<f32>,
}

impl AxisMap {
    fn new(src_len: usize, dst_len: usize) -> Self {
        let scale = src_len as f64 / dst_len as f64;
        let (mut lo, mut hi, mut frac) = (vec![], vec![], vec![]);
        for d in 0..dst_len {
            // half-pixel centres; PyTorch clamps negative source coordinates to 0
            let s = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(src_len - 1);
            lo.push(i0);
            hi.push((i0 + 1).min(src_len - 1));
            frac.push((s - i0 as f64) as f32);
        }
        AxisMap { lo, hi, frac }
    }
}

/// Bilinear resize of a `[rows, cols]` image into `out` (whose shape sets the target size).
pub fn resize_bilinear_into(src: ArrayView2<f32>, mut out: ArrayViewMut2<f32>) {
    let (sh, sw) = src.dim();
    let (dh, dw) = out.dim();
    if (sh, sw) == (dh, dw) {
        out.assign(&src);
        return;
    }
    let ym = AxisMap::new(sh, dh);
    let xm = AxisMap::new(sw, dw);
    for y in 0..dh {
        let (r0, r1, fy) = (src.row(ym.lo[y]), src.row(ym.hi[y]), ym.frac[y]);
        let mut orow = out.row_mut(y);
        for x in 0..dw {
            let (c0, c1, fx) = (xm.lo[x], xm.hi[x], xm.frac[x]);
            let top = r0[c0] + (r0[c1] - r0[c0]) * fx;
            let bottom = r1[c0] + (r1[c1] - r1[c0]) * fx;
            orow[x] = top + (bottom - top) * fy;
        }
    }
}

/// Bilinear resize returning a new `[rows, cols]` array.
pub fn resize_bilinear(src: ArrayView2<f32>, rows: usize, cols: usize) -> Array2<f32> {
    let mut out = Array2::zeros((rows, cols));
    resize_bilinear_into(src, out.view_mut());
    out
}

/// Windows a HU slice into `[0, 1]` and resizes it to the model's `[rows, cols]`.
pub fn window_and_resize(hu: ArrayView2<f32>, window: Window, rows: usize, cols: usize) -> Array2<f32> {
    let windowed = hu.mapv(|v| window.apply(v));
    resize_bilinear(windowed.view(), rows, cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn identity_when_sizes_match() {
        let a = array![[1.0f32, 2.0], [3.0, 4.0]];
        assert_eq!(resize_bilinear(a.view(), 2, 2), a);
    }

    #[test]
    fn upsample_2x_matches_pytorch() {
        // torch.nn.functional.interpolate(torch.tensor([[[[1.,2.],[3.,4.]]]]), size=(4,4),
        //   mode="bilinear", align_corners=False)
        let a = array![[1.0f32, 2.0], [3.0, 4.0]];
        let expected =
            array![[1.0f32, 1.25, 1.75, 2.0], [1.5, 1.75, 2.25, 2.5], [2.5, 2.75, 3.25, 3.5], [3.0, 3.25, 3.75, 4.0]];
        let out = resize_bilinear(a.view(), 4, 4);
        for (o, e) in out.iter().zip(expected.iter()) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn downsample_2x_averages_pairs() {
        // half-pixel downsampling by 2 samples exactly between source pixels
        let a = array![[0.0f32, 2.0, 4.0, 6.0]];
        let out = resize_bilinear(a.view(), 1, 2);
        assert_eq!(out, array![[1.0f32, 5.0]]);
    }
}
