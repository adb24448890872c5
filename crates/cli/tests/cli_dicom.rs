//! The command line with DICOM: a series folder segmented to DICOM-SEG or NIfTI, `inspect` of a
//! series, `eval` of a DICOM-SEG, `pseudo-label` of a series, and the refusals (no output left).

mod common;
use common::*;

use std::path::PathBuf;
use std::process::Output;

fn dicom(name: &str) -> PathBuf {
    root().join("tests/fixtures/dicom").join(name)
}
fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}
fn unet() -> PathBuf {
    root().join("models/unet.onnx")
}

#[test]
fn a_series_segments_to_dicom_seg_and_nifti_that_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, prob, nii) = (dir.path().join("seg.dcm"), dir.path().join("prob.dcm"), dir.path().join("mask.nii.gz"));
    let series = dicom("series/explicit_le");
    let out = ichseg(&["segment", p(&series), "-m", p(&unet()), "-o", p(&seg), "--prob", p(&prob), "-q"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let out = ichseg(&["segment", p(&series), "-m", p(&unet()), "-o", p(&nii), "-q"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let bytes = std::fs::read(&seg).unwrap();
    assert_eq!(&bytes[128..132], b"DICM");
    // The SEG, read back onto the NIfTI's grid, is the NIfTI mask: 100 % agreement, and a
    // non-empty one (the fixture holds a bleed the model finds).
    let out = ichseg(&["eval", "--pred", p(&seg), "--gt", p(&nii), "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["overall"]["dice"].as_f64(), Some(1.0), "{stdout}");
    // The NIfTI written for a series carries the series' RAS geometry.
    let reference = dicom("reference/axial.nii.gz");
    let out = ichseg(&["eval", "--pred", p(&nii), "--gt", p(&reference)]);
    assert!(out.status.success(), "same grid as the nibabel reference: {:?}", text(&out));
}

#[test]
fn inspect_lists_the_series_and_the_grid() {
    let out = ichseg(&["inspect", p(&dicom("two_series"))]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.matches("series    ").count(), 3, "{stdout}");
    assert!(stdout.contains("112x128x8 voxels") && stdout.contains("MR, 3 slices"), "{stdout}");
    let out = ichseg(&["inspect", p(&dicom("two_series")), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["found"].as_array().unwrap().len(), 3);
    assert_eq!(v["read"]["dims"], serde_json::json!([112, 128, 8]));
    let out = ichseg(&["inspect", p(&dicom("bad/gap"))]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("missing slice") && stdout.contains("series    "), "{stderr}");
}

#[test]
fn pseudo_label_reads_a_series() {
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("pseudo.dcm");
    let classifier = root().join("models/classifier_slim34.onnx");
    let out = ichseg(&["pseudo-label", p(&dicom("series/rle")), "--classifier", p(&classifier), "-o", p(&seg), "-q"]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(&std::fs::read(&seg).unwrap()[128..132], b"DICM");
}

#[test]
fn impossible_requests_fail_before_work_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("seg.dcm");
    // A DICOM-SEG needs a DICOM source.
    let nifti = dicom("reference/axial.nii.gz");
    let out = ichseg(&["segment", p(&nifti), "-m", p(&unet()), "-o", p(&seg)]);
    assert!(!out.status.success() && text(&out).1.contains("the input is NIfTI"), "{:?}", text(&out));
    // Bad series: the reason, no output.
    for (series, why) in [
        ("bad/tilt", "gantry tilt"),
        ("bad/unsupported_ts", "JPEG 2000"),
        ("bad/mr", "no CT series"),
        ("bad/truncated", "truncated"),
        ("bad/empty", "no DICOM image"),
    ] {
        let out = ichseg(&["segment", p(&dicom(series)), "-m", p(&unet()), "-o", p(&seg)]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success() && stderr.contains(why), "{series}: {stderr}");
    }
    let out = ichseg(&["segment", p(&dicom("two_series")), "--series", "9.9.9", "-m", p(&unet()), "-o", p(&seg)]);
    assert!(text(&out).1.contains("no series 9.9.9"), "{:?}", text(&out));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
}
