//! CAM parity with pytorch-grad-cam (fixtures from training/fixtures/cam.py; the comparisons are
//! the ones documented in tests/fixtures/cam/cam.json) and SF-CAM properties.

use ichseg::cam::{gradcam, layercam, normalize_max, pc1, sfcam, DEFAULT_LAMBDA};
use ichseg::preprocess::resize_bilinear;
use ndarray::{Array2, Array3, ArrayD, IxDyn};
use serde_json::Value;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cam")
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("cam.json")).unwrap()).unwrap()
}

fn load(name: &str) -> ArrayD<f32> {
    let shape: Vec<usize> =
        meta()["shapes"][name].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let bytes = std::fs::read(dir().join(format!("{name}.bin"))).unwrap();
    let data: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap()
}

fn load2(name: &str) -> Array2<f32> {
    load(name).into_dimensionality().unwrap()
}

fn load3(name: &str) -> Array3<f32> {
    load(name).into_dimensionality().unwrap()
}

/// pytorch-grad-cam's `scale_cam_image` without resizing: `x -= min; x /= 1e-7 + max`.
fn scale(x: &Array2<f32>) -> Array2<f32> {
    let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
    let y = x.mapv(|v| v - lo);
    let hi = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    y.mapv(|v| v / (1e-7 + hi))
}

/// What the library's `__call__` returns for one tap map: scale(resize(scale(map))).
fn full(x: &Array2<f32>, rows: usize, cols: usize) -> Array2<f32> {
    scale(&resize_bilinear(scale(x).view(), rows, cols).view().to_owned())
}

fn max_err(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn layercam_matches_pytorch_grad_cam() {
    let (a, g) = (load3("a"), load3("g"));
    let l = layercam(a.view(), g.view()).unwrap();
    let tap = max_err(&scale(&l), &load2("layercam_tap"));
    let fl = max_err(&full(&l, 32, 32), &load2("layercam_full"));
    // normalize_max differs from scale() by min(L) / max(L) and the library's 1e-7 epsilon
    let nm = max_err(&scale(&normalize_max(l.view())), &load2("layercam_tap"));
    eprintln!("layercam max abs err: tap {tap:.2e}, full {fl:.2e}, normalize_max {nm:.2e}");
    assert!(tap <= 1e-3 && fl <= 1e-3 && nm <= 1e-3);
}

#[test]
fn gradcam_matches_pytorch_grad_cam() {
    let (a, g) = (load3("a"), load3("g"));
    // gradcam() is already divided by its max, so the library's epsilon (1e-7 in raw units,
    // where max is ~5e-4 here) no longer matches exactly at the tap: ~2e-4 there, exact after
    // the library's second (unit-range) scaling of the full-size map.
    let c = gradcam(a.view(), g.view()).unwrap();
    let tap = max_err(&scale(&c), &load2("gradcam_tap"));
    let fl = max_err(&full(&c, 32, 32), &load2("gradcam_full"));
    eprintln!("gradcam max abs err: tap {tap:.2e}, full {fl:.2e}");
    assert!(tap <= 1e-3 && fl <= 1e-3);
}

#[test]
fn pc1_matches_eigencam_projection() {
    let (a, g) = (load3("a"), load3("g"));
    let l = layercam(a.view(), g.view()).unwrap();
    let p = pc1(a.view(), l.view()).unwrap();
    let err = max_err(&p, &load2("pc1_ref"));
    // the other orientation must give the other sign of the library's projection
    let proj = load2("eigen_proj");
    let s = meta()["pc1_sign"].as_f64().unwrap() as f32;
    let q = pc1(a.view(), l.mapv(|v| -v).view()).unwrap();
    let err_flip = max_err(&q, &scale(&proj.mapv(|v| -s * v)));
    // EigenCAM itself = scale(relu(proj)): take whichever of our two orientations equals
    // minmax(+proj), and clip it where proj crosses zero.
    let ours_pos = if s > 0.0 { &p } else { &q };
    let (lo, hi) = proj.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    let relu = ours_pos.mapv(|v| (v + lo / (hi - lo)).max(0.0));
    let err_eig = max_err(&scale(&relu), &load2("eigencam_tap"));
    eprintln!(
        "pc1 max abs err: vs oriented EigenCAM projection {err:.2e}, flipped {err_flip:.2e}, EigenCAM {err_eig:.2e}"
    );
    assert!(err <= 1e-3 && err_flip <= 1e-3 && err_eig <= 1e-3);
}

#[test]
fn sfcam_shape_range_and_amplification() {
    let (a, g) = (load3("a"), load3("g"));
    for first in [false, true] {
        let cam = sfcam(a.view(), g.view(), 40, 28, first, DEFAULT_LAMBDA).unwrap();
        assert_eq!(cam.dim(), (40, 28));
        assert!(cam.iter().all(|&v| (0.0..=1.0).contains(&v)));
        assert!(cam.iter().any(|&v| v > 0.0));
    }
    // Hand case, K = 1, 1x2 tap, size kept: A = [1, 3], G = [1, 1].
    // L = [1, 3]; C = [1/3, 1]; PC1: centred [-1, 1], oriented by L -> P = [0, 1];
    // CAM = (C + P C) / 2 = [1/6, 1]; first layer: tanh(2 * CAM / 1) = [tanh(1/3), tanh(2)].
    let a = Array3::from_shape_vec((1, 1, 2), vec![1.0f32, 3.0]).unwrap();
    let g = Array3::from_elem((1, 1, 2), 1.0f32);
    let plain = sfcam(a.view(), g.view(), 1, 2, false, DEFAULT_LAMBDA).unwrap();
    assert!((plain[[0, 0]] - 1.0 / 6.0).abs() < 1e-6 && (plain[[0, 1]] - 1.0).abs() < 1e-6);
    let amp = sfcam(a.view(), g.view(), 1, 2, true, DEFAULT_LAMBDA).unwrap();
    assert!((amp[[0, 0]] - (1.0f32 / 3.0).tanh()).abs() < 1e-6);
    assert!((amp[[0, 1]] - 2.0f32.tanh()).abs() < 1e-6);
    let amp4 = sfcam(a.view(), g.view(), 1, 2, true, 4.0).unwrap();
    assert!((amp4[[0, 1]] - 4.0f32.tanh()).abs() < 1e-6);
    // zero gradients -> zero LayerCAM -> zero SF-CAM, amplified or not
    let z = sfcam(a.view(), (&g * 0.0).view(), 4, 4, true, DEFAULT_LAMBDA).unwrap();
    assert!(z.iter().all(|&v| v == 0.0));
}
