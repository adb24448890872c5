//! The review PNGs end to end: `segment --overlay`, `pseudo-label --overlay/--cam-overlay`, the
//! demo's picture, and a non-PNG path refused before any work.

mod common;
use common::*;

use std::path::Path;

/// Width, height and RGB pixels of a PNG.
fn decode(path: &Path) -> (usize, usize, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

const RED: [u8; 3] = [255, 48, 48];

#[test]
fn segment_writes_a_montage_of_the_lesion_slices() {
    let dir = tempfile::tempdir().unwrap();
    let (mask, png_path) = (dir.path().join("m.nii.gz"), dir.path().join("o.png"));
    let ct = fixture("unet/ct_small.nii.gz");
    let model = fixture("unet/unet_transpose.onnx");
    let out = ichseg(&["segment", "--model", p(&model), p(&ct), "-o", p(&mask), "--overlay", p(&png_path), "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let input = ichseg::io::nifti::read(&ct).unwrap();
    let (_, m) = ichseg::io::nifti::read_mask(&mask).unwrap();
    let v = &input.volume;
    let (nz, ny, nx) = v.data().dim();
    let s = v.spacing();
    let with = (0..nz).filter(|&z| m.index_axis(ndarray::Axis(0), z).iter().any(|&x| x != 0)).count();
    assert!(with > 0);
    // Square pixels of the finer in-plane spacing (the fixture is far below 256 px a side).
    let px = s[0].min(s[1]);
    let (tw, th) = ((nx as f64 * s[0] / px).round() as usize, (ny as f64 * s[1] / px).round() as usize);
    let cols = with.min(4);
    let (w, h, pixels) = decode(&png_path);
    assert_eq!((w, h), (cols * (tw + 4) + 4, with.div_ceil(cols) * (th + 4) + 4));
    assert!(pixels.chunks(3).any(|c| c == RED), "the mask is outlined");
}

#[test]
fn a_non_png_overlay_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let mask = dir.path().join("m.nii.gz");
    let ct = fixture("unet/ct_small.nii.gz");
    let model = fixture("unet/unet_transpose.onnx");
    let jpg = dir.path().join("o.jpg");
    let out = ichseg(&["segment", "--model", p(&model), p(&ct), "-o", p(&mask), "--overlay", p(&jpg), "--quiet"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("must name a .png file"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
}

#[test]
fn pseudo_label_writes_both_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let (mask, ov, cams) = (dir.path().join("m.nii.gz"), dir.path().join("o.png"), dir.path().join("c.png"));
    let tiny = fixture("classifier/tiny_classifier.onnx");
    let resnet = fixture("grad/resnet_basic_op17_fused.onnx");
    let out = ichseg(&[
        "pseudo-label",
        "--classifier",
        p(&tiny),
        "--taps",
        "/layer1/relu_1/Relu_output_0,/layer2/relu_1/Relu_output_0",
        "--classifier",
        p(&resnet),
        "--taps",
        "/layer1/layer1.1/relu_1/Relu_output_0,/layer2/layer2.1/relu_1/Relu_output_0",
        p(&fixture("unet/ct_small.nii.gz")),
        "-o",
        p(&mask),
        "--use-predictions",
        "--overlay",
        p(&ov),
        "--cam-overlay",
        p(&cams),
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for f in [&ov, &cams] {
        let (w, h, _) = decode(f);
        assert!(w > 0 && h > 0);
    }
}

#[test]
fn demo_writes_its_overlay_and_prints_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = ichseg(&["demo", "--out", p(dir.path()), "--threads", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = dir.path().join("overlay.png");
    assert!(String::from_utf8_lossy(&out.stdout).contains(p(&path)));
    let (w, h, _) = decode(&path);
    assert!(w > 0 && h > 0);
}
