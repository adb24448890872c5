//! Slice preprocessing: windowing, bilinear resizing to and from the model grid.
//!
//! Resizing follows PyTorch's `F.interpolate(mode="bilinear", align_corners=False,
//! antialias=False)` (= ONNX Resize linear/half_pixel), the convention the models are trained
//! with, so that pipelines match their Python references voxel for voxel.

use crate::volume::{Volume, Window};
use ndarray::{s, Array2, Array4, ArrayView2, ArrayViewMut2};

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

/// How slices become a network input: the CT window, the model's `rows x cols`, its channel
/// count (the windowed slice repeated) and an optional `(mean, std)` normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputSpec {
    pub window: Window,
    pub rows: usize,
    pub cols: usize,
    pub channels: usize,
    pub normalize: Option<(f32, f32)>,
}

/// Slices `first..first + count` of `volume`, windowed, resized, normalised and repeated over
/// the channels, as a `[batch, C, rows, cols]` tensor; rows `count..batch` stay zero (padding
/// for models with a fixed batch size). `batch` must be at least `count`.
pub fn model_input(volume: &Volume, first: usize, count: usize, batch: usize, spec: &InputSpec) -> Array4<f32> {
    let mut input = Array4::<f32>::zeros((batch.max(count), spec.channels, spec.rows, spec.cols));
    for i in 0..count {
        let mut img = window_and_resize(volume.slice(first + i), spec.window, spec.rows, spec.cols);
        if let Some((mean, std)) = spec.normalize {
            img.mapv_inplace(|v| (v - mean) / std);
        }
        for ch in 0..spec.channels {
            input.slice_mut(s![i, ch, .., ..]).assign(&img);
        }
    }
    input
}

/// A HU slice windowed to grey levels `0..=255` (`round(255 * window(v))`), the image the dense
/// CRF sees (METHOD.md section 4 item 5).
pub fn window_u8(hu: ArrayView2<f32>, window: Window) -> Array2<u8> {
    hu.mapv(|v| (window.apply(v) * 255.0).round() as u8)
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
    fn window_u8_maps_the_window_to_grey_levels() {
        let hu = array![[-100.0f32, -15.0, 50.0, 115.0, 500.0]];
        assert_eq!(window_u8(hu.view(), Window::default()), array![[0u8, 0, 128, 255, 255]]);
    }

    #[test]
    fn model_input_repeats_channels_and_pads_the_batch() {
        let v = Volume::from_hu(vec![50.0; 4 * 4 * 3], [4, 4, 3], [1.0; 3]).unwrap();
        let spec = InputSpec { window: Window::default(), rows: 2, cols: 2, channels: 3, normalize: Some((0.5, 0.25)) };
        let x = model_input(&v, 1, 2, 4, &spec);
        assert_eq!(x.dim(), (4, 3, 2, 2));
        assert!(x.slice(s![..2, .., .., ..]).iter().all(|&v| v.abs() < 1e-6), "(0.5 - 0.5) / 0.25 = 0");
        let v = Volume::from_hu(vec![115.0; 4 * 4 * 3], [4, 4, 3], [1.0; 3]).unwrap();
        let x = model_input(&v, 0, 2, 4, &InputSpec { normalize: None, ..spec });
        assert!(x.slice(s![..2, .., .., ..]).iter().all(|&v| v == 1.0));
        assert!(x.slice(s![2.., .., .., ..]).iter().all(|&v| v == 0.0), "padding rows stay zero");
    }

    #[test]
    fn downsample_2x_averages_pairs() {
        // half-pixel downsampling by 2 samples exactly between source pixels
        let a = array![[0.0f32, 2.0, 4.0, 6.0]];
        let out = resize_bilinear(a.view(), 1, 2);
        assert_eq!(out, array![[1.0f32, 5.0]]);
    }
}
