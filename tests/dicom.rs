//! The DICOM reader and the DICOM-SEG writer against the fixtures of
//! scripts/make_dicom_fixtures.py (pydicom-written series, nibabel references): the same volume
//! as the reference NIfTI for every transfer syntax and layout, the same masks from both, the
//! refusals of bad series, and SEG round trips. The independent readers' view of our SEG
//! (dciodvfy, highdicom, dcmqi) is checked by tests/dicom/validate_seg.py in scripts/test.sh.
#![cfg(feature = "dicom")]

use ichseg::alloc::MemoryLimit;
use ichseg::io::dicom::{self, seg, ReadOptions};
use ichseg::io::nifti;
use ichseg::{Engine, EngineOptions, Error, OnnxModel, Segmenter, SegmenterOptions};
use ndarray::Array3;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom")
}

fn manifest() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root().join("manifest.json")).unwrap()).unwrap()
}

fn read(path: &str) -> ichseg::Result<dicom::DicomSeries> {
    dicom::read_series(&[root().join(path)], &ReadOptions::default())
}

#[test]
fn every_series_reads_to_its_reference_volume() {
    let m = manifest();
    let series = m["series"].as_object().unwrap();
    assert!(series.len() >= 10, "the fixtures cover the transfer syntaxes and layouts");
    for (name, s) in series {
        let got = read(s["path"].as_str().unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let reference = nifti::read(&root().join(s["reference"].as_str().unwrap())).unwrap();
        let (g, r) = (&got.volume, &reference.volume);
        assert_eq!(g.dims(), r.dims(), "{name}");
        // A series' geometry gives the patient's orientation (side findings need it).
        assert!(g.oriented() && r.oriented(), "{name}");
        let tolerance = s["tolerance_hu"].as_f64().unwrap() as f32;
        let worst = g.data().iter().zip(r.data().iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= tolerance, "{name}: HU differ by up to {worst}, tolerance {tolerance}");
        for (row_g, row_r) in g.affine().iter().zip(r.affine().iter()) {
            for (a, b) in row_g.iter().zip(row_r) {
                assert!((a - b).abs() < 1e-4, "{name}: affine {:?} vs reference {:?}", g.affine(), r.affine());
            }
        }
        let expected: Vec<f64> = s["spacing"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (a, b) in g.spacing().iter().zip(&expected) {
            assert!((a - b).abs() < 1e-6, "{name}: spacing {:?} vs {expected:?}", g.spacing());
        }
        assert_eq!(got.series.uid, s["series_instance_uid"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn the_ct_series_with_most_slices_is_chosen_and_another_can_be_asked_for() {
    let got = read("two_series").unwrap();
    assert_eq!(got.found.len(), 3, "{:?}", got.found);
    assert_eq!((got.series.modality.as_str(), got.series.slices), ("CT", 8));
    let small = got.found.iter().find(|s| s.modality == "CT" && s.slices == 4).unwrap();
    let options = ReadOptions { series_uid: Some(small.uid.clone()), ..Default::default() };
    let chosen = dicom::read_series(&[root().join("two_series")], &options).unwrap();
    assert_eq!(chosen.volume.dims()[2], 4);
    let mr = got.found.iter().find(|s| s.modality == "MR").unwrap();
    let options = ReadOptions { series_uid: Some(mr.uid.clone()), ..Default::default() };
    let e = dicom::read_series(&[root().join("two_series")], &options).unwrap_err().to_string();
    assert!(e.contains("not CT"), "{e}");
    let options = ReadOptions { series_uid: Some("1.2.3".into()), ..Default::default() };
    let e = dicom::read_series(&[root().join("two_series")], &options).unwrap_err().to_string();
    assert!(e.contains("no series 1.2.3") && e.contains(&mr.uid) && e.contains("MR, 3 slices"), "{e}");
    assert_eq!(dicom::list_series(&[root().join("two_series")]).unwrap(), got.found);
}

#[test]
fn a_list_of_files_reads_like_their_folder() {
    let folder = root().join("series/explicit_le");
    let mut files = Vec::new();
    for entry in walk(&folder) {
        files.push(entry);
    }
    files.reverse();
    let from_files = dicom::read_series(&files, &ReadOptions::default()).unwrap();
    assert_eq!(from_files.volume, read("series/explicit_le").unwrap().volume);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn bad_series_are_refused_with_the_reason() {
    let m = manifest();
    let bad = m["bad"].as_object().unwrap();
    assert!(bad.len() >= 10);
    for (name, b) in bad {
        let e = match read(b["path"].as_str().unwrap()) {
            Ok(_) => panic!("{name}: read without error"),
            Err(e) => e,
        };
        let keyword = b["keyword"].as_str().unwrap().to_lowercase();
        // The reason, not the fixture's path, must say it.
        let message = e.to_string().replace(&root().join(b["path"].as_str().unwrap()).display().to_string(), "");
        assert!(message.to_lowercase().contains(&keyword), "{name}: {message:?} lacks {keyword:?}");
    }
    // The unsupported syntax is named and is its own kind of error.
    let e = read("bad/unsupported_ts").unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)) && e.to_string().contains("1.2.840.10008.1.2.4."), "{e}");
}

#[test]
fn the_memory_limit_is_checked_before_decoding() {
    let options = ReadOptions { memory_limit: MemoryLimit(1000), ..Default::default() };
    let e = dicom::read_series(&[root().join("series/explicit_le")], &options).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory(_)), "{e}");
}

#[test]
fn a_series_and_its_nifti_segment_to_identical_masks() {
    let engine = Engine::new(&EngineOptions { threads: 2, ..Default::default() }).unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/unet.onnx");
    let segmenter = Segmenter::new(&engine, OnnxModel::load(&model).unwrap(), &SegmenterOptions::default()).unwrap();
    let m = manifest();
    for name in ["jpeg_lossless", "oblique"] {
        let s = &m["series"][name];
        let series = read(s["path"].as_str().unwrap()).unwrap();
        let reference = nifti::read(&root().join(s["reference"].as_str().unwrap())).unwrap();
        let a = segmenter.segment(&series.volume).unwrap();
        let b = segmenter.segment(&reference.volume).unwrap();
        assert_eq!(a.mask, b.mask, "{name}");
        // The same geometry and HU give the same findings (sides included).
        assert_eq!(a.findings.summary, b.findings.summary, "{name}");
        assert!(a.mask.iter().any(|&v| v == 1), "{name}: the fixture holds a bleed the model finds");
    }
}

fn algorithm() -> seg::Algorithm {
    seg::Algorithm { name: "unet".into(), trained_on: Some("phantoms".into()) }
}

#[test]
fn a_seg_reads_back_onto_its_source_grid() {
    let m = manifest();
    for name in ["explicit_le", "oblique"] {
        let s = &m["series"][name];
        let series = read(s["path"].as_str().unwrap()).unwrap();
        let (_, mask) = nifti::read_mask(&root().join(s["mask"].as_str().unwrap())).unwrap();
        assert!(mask.iter().any(|&v| v == 1));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg.dcm");
        seg::write(&path, &series.source, seg::Content::Binary(&mask), &algorithm()).unwrap();
        let back = dicom::read_mask_on(&path, series.volume.dims(), &series.volume.affine()).unwrap();
        assert_eq!(back, mask, "{name}");

        // Probabilities: FRACTIONAL, read back as foreground from one half.
        let prob = mask.mapv(|v| if v == 1 { 0.9f32 } else { 0.2 });
        seg::write(&path, &series.source, seg::Content::Fractional(&prob), &algorithm()).unwrap();
        let back = dicom::read_mask_on(&path, series.volume.dims(), &series.volume.affine()).unwrap();
        assert_eq!(back, mask, "{name} (fractional)");
    }
}

#[test]
fn an_empty_mask_is_a_valid_seg_with_one_empty_frame() {
    let series = read("series/explicit_le").unwrap();
    let [nx, ny, nz] = series.volume.dims();
    let empty = Array3::<u8>::zeros((nz, ny, nx));
    let bytes = seg::to_bytes(&series.source, seg::Content::Binary(&empty), &algorithm()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.dcm");
    std::fs::write(&path, &bytes).unwrap();
    let back = dicom::read_mask_on(&path, series.volume.dims(), &series.volume.affine()).unwrap();
    assert!(back.iter().all(|&v| v == 0));
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("Hemorrhage") && text.contains("50960005") && text.contains("49755003"));
}

#[test]
fn seg_inputs_that_do_not_fit_are_refused_and_nothing_is_written() {
    let series = read("series/explicit_le").unwrap();
    let [nx, ny, nz] = series.volume.dims();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg.dcm");
    let wrong = Array3::<u8>::zeros((nz - 1, ny, nx));
    let e = seg::write(&path, &series.source, seg::Content::Binary(&wrong), &algorithm()).unwrap_err();
    assert!(e.to_string().contains("does not lie on the source series"), "{e}");
    let nan = Array3::<f32>::from_elem((nz, ny, nx), f32::NAN);
    let e = seg::write(&path, &series.source, seg::Content::Fractional(&nan), &algorithm()).unwrap_err();
    assert!(e.to_string().contains("[0, 1]"), "{e}");
    let missing_dir = dir.path().join("no/such/dir/seg.dcm");
    let ok = Array3::<u8>::zeros((nz, ny, nx));
    assert!(matches!(
        seg::write(&missing_dir, &series.source, seg::Content::Binary(&ok), &algorithm()),
        Err(Error::Io { .. })
    ));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file, no temporary left");
    // A SEG placed on a grid it does not lie on is refused, not misplaced.
    std::fs::write(&path, seg::to_bytes(&series.source, seg::Content::Binary(&ok), &algorithm()).unwrap()).unwrap();
    let mut shifted = series.volume.affine();
    shifted[0][3] += 0.5 * shifted[0][0];
    let e = dicom::read_mask_on(&path, series.volume.dims(), &shifted).unwrap_err();
    assert!(e.to_string().contains("does not lie on a slice"), "{e}");
    let e = dicom::read_mask_on(&root().join("series/explicit_le/README.txt"), [1, 1, 1], &shifted).unwrap_err();
    assert!(e.to_string().contains("DICOM"), "{e}");
}
