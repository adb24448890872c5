//! `ichseg pseudo-label` end to end: one scan (predictions, a labels CSV, the CAM output), a
//! BCIHM-layout dataset that resumes, and bad input that fails clearly and writes nothing.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TINY_TAPS: &str = "/layer1/relu_1/Relu_output_0,/layer2/relu_1/Relu_output_0";
const RESNET_TAPS: &str = "/layer1/layer1.1/relu_1/Relu_output_0,/layer2/layer2.1/relu_1/Relu_output_0";

/// `ichseg pseudo-label` with both fixture classifiers (taps named) and `args`.
fn pseudo(args: &[&str]) -> Output {
    let tiny = fixture("classifier/tiny_classifier.onnx");
    let resnet = fixture("grad/resnet_basic_op17_fused.onnx");
    let mut all = vec!["pseudo-label", "--classifier", p(&tiny), "--taps", TINY_TAPS];
    all.extend(["--classifier", p(&resnet), "--taps", RESNET_TAPS, "--threads", "2"]);
    all.extend(args);
    Command::new(env!("CARGO_BIN_EXE_ichseg")).args(&all).output().expect("run ichseg")
}
fn ct() -> PathBuf {
    fixture("unet/ct_small.nii.gz")
}
fn voxels(mask: &Path) -> usize {
    ichseg::io::nifti::read_mask(mask).unwrap().1.iter().filter(|&&v| v == 1).count()
}

#[test]
fn single_scan_with_predictions_and_cam_output() {
    let dir = tempfile::tempdir().unwrap();
    let (mask, cams) = (dir.path().join("m.nii.gz"), dir.path().join("cams.nii"));
    let out = pseudo(&[p(&ct()), "-o", p(&mask), "--cam-out", p(&cams), "--use-predictions"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("(predicted)"), "{}", stdout(&out));
    let input = ichseg::io::nifti::read(&ct()).unwrap();
    let (header, m) = ichseg::io::nifti::read_mask(&mask).unwrap();
    assert!(header.same_geometry(&input.header));
    assert_eq!(header.datatype(), 2);
    assert_eq!(m.dim(), input.volume.data().dim());
    // the CAM file: float32, 4D, one volume per tap layer
    let raw = std::fs::read(&cams).unwrap();
    let dim: Vec<i16> = (0..5).map(|i| i16::from_le_bytes([raw[40 + 2 * i], raw[41 + 2 * i]])).collect();
    assert_eq!(dim, [4, 80, 70, 4, 2]);
    assert_eq!(i16::from_le_bytes([raw[70], raw[71]]), 16);
    assert_eq!(raw.len(), 352 + 80 * 70 * 4 * 2 * 4);
}

#[test]
fn labels_csv_decides_the_slices() {
    let dir = tempfile::tempdir().unwrap();
    let (neg, pos) = (dir.path().join("neg.csv"), dir.path().join("pos.csv"));
    std::fs::write(&neg, "slice,label\n0,0\n1,0\n2,0\n3,0\n").unwrap();
    std::fs::write(&pos, "slice,label\n0,1\n1,1\n2,1\n3,1\n").unwrap();
    let empty = dir.path().join("empty.nii.gz");
    let out = pseudo(&[p(&ct()), "-o", p(&empty), "--labels", p(&neg), "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "--quiet prints nothing");
    assert_eq!(voxels(&empty), 0, "all slices negative: empty mask");
    let full = dir.path().join("full.nii.gz");
    let out = pseudo(&[p(&ct()), "-o", p(&full), "--labels", p(&pos)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("4 of 4 positive (labels)"), "{}", stdout(&out));
    let with_crf = voxels(&full);
    assert!(with_crf > 0);
    // switching modules off changes the mask
    let plain = dir.path().join("plain.nii.gz");
    let out = pseudo(&[p(&ct()), "-o", p(&plain), "--labels", p(&pos), "--no-crf", "--no-scf", "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(voxels(&plain), with_crf);

    // a BCIHM CSV: the patient comes from the scan's file name
    let scan = dir.path().join("007.nii.gz");
    std::fs::copy(ct(), &scan).unwrap();
    let bcihm = dir.path().join("hemorrhage_diagnosis_raw_ct.csv");
    let mut text = String::from("PatientNumber,SliceNumber,Intraventricular,No_Hemorrhage,Fracture_Yes_No\n");
    for s in 1..=4 {
        text += &format!("7,{s},1,0,0\n8,{s},0,1,0\n");
    }
    std::fs::write(&bcihm, text).unwrap();
    let from_bcihm = dir.path().join("bcihm.nii.gz");
    let out = pseudo(&[p(&scan), "-o", p(&from_bcihm), "--labels", p(&bcihm), "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(voxels(&from_bcihm), with_crf, "patient 7 is bleeding on every slice");
    let out = pseudo(&[p(&scan), "-o", p(&from_bcihm), "--labels", p(&bcihm), "--patient", "8", "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(voxels(&from_bcihm), 0, "patient 8 has no bleeding");
}

#[test]
fn bad_labels_fail_clearly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mask = dir.path().join("m.nii.gz");
    let csv = dir.path().join("l.csv");
    std::fs::write(&csv, "slice,label\n0,1\n1,yes\n2,0\n3,0\n").unwrap();
    let out = pseudo(&[p(&ct()), "-o", p(&mask), "--labels", p(&csv)]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("l.csv line 3") && err.contains("\"yes\""), "{err}");
    std::fs::write(&csv, "slice,label\n0,1\n1,1\n2,0\n").unwrap();
    let out = pseudo(&[p(&ct()), "-o", p(&mask), "--labels", p(&csv)]);
    assert!(stderr(&out).contains("no label for slice 3"), "{}", stderr(&out));
    assert!(!mask.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary files left");
    let out = pseudo(&[p(&ct()), "-o", p(&mask), "--labels", p(&csv), "--use-predictions"]);
    assert!(!out.status.success(), "--labels and --use-predictions conflict");
}

#[test]
fn dataset_mode_writes_every_volume_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("bcihm");
    std::fs::create_dir_all(ds.join("ct_scans")).unwrap();
    for n in ["049.nii.gz", "050.nii.gz"] {
        std::fs::copy(ct(), ds.join("ct_scans").join(n)).unwrap();
    }
    let mut text = String::from("PatientNumber,SliceNumber,No_Hemorrhage\n");
    for s in 1..=4 {
        text += &format!("49,{s},0\n50,{s},1\n");
    }
    std::fs::write(ds.join("hemorrhage_diagnosis_raw_ct.csv"), text).unwrap();
    let out_dir = dir.path().join("pseudo");
    let run = || pseudo(&["--dataset", p(&ds), "-o", p(&out_dir)]);

    let out = run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("volumes   2: labelled 2, skipped 0"), "{}", stdout(&out));
    assert!(voxels(&out_dir.join("049.nii.gz")) > 0);
    assert_eq!(voxels(&out_dir.join("050.nii.gz")), 0);

    let out = run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("labelled 0, skipped 2"), "{}", stdout(&out));

    std::fs::remove_file(out_dir.join("050.nii.gz")).unwrap();
    let out = run();
    assert!(stdout(&out).contains("labelled 1, skipped 1"), "{}", stdout(&out));
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 2, "only the masks, no temporary files");

    // a volume the CSV does not cover fails alone; the others are still written
    std::fs::copy(ct(), ds.join("ct_scans").join("051.nii.gz")).unwrap();
    std::fs::remove_dir_all(&out_dir).unwrap();
    let out = run();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no slice labels for patient 51"), "{}", stderr(&out));
    assert!(stdout(&out).contains("labelled 2, skipped 0 (output exists), failed 1"), "{}", stdout(&out));
    assert!(!out_dir.join("051.nii.gz").exists());
}

#[test]
fn report_carries_slices_mask_size_and_timings() {
    let dir = tempfile::tempdir().unwrap();
    let (mask, rep, pos) = (dir.path().join("m.nii.gz"), dir.path().join("r.json"), dir.path().join("pos.csv"));
    std::fs::write(&pos, "slice,label\n0,0\n1,1\n2,1\n3,0\n").unwrap();
    let out = pseudo(&[p(&ct()), "-o", p(&mask), "--labels", p(&pos), "--report", p(&rep), "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&rep).unwrap()).unwrap();
    assert_eq!(r["positive_slices"], serde_json::json!([1, 2]));
    assert_eq!(r["mask_voxels"].as_u64().unwrap() as usize, voxels(&mask));
    assert_eq!(r["models"].as_array().unwrap().len(), 2);
    assert_eq!(r["slice_probabilities"].as_array().unwrap().len(), 2);
    assert_eq!(r["device"], "cpu");
    // on the CPU nothing is computed on a GPU, let alone read in place there
    assert_eq!(
        (&r["cam_device"], &r["taps_on_device"], &r["crf_device"]),
        (&"cpu".into(), &false.into(), &"cpu".into())
    );
    let t = &r["timings"];
    assert!(t["total_s"].as_f64().unwrap() > 0.0 && t["load_s"].as_f64().unwrap() > 0.0, "{t}");
}

#[test]
fn shards_together_label_every_volume_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("bcihm");
    std::fs::create_dir_all(ds.join("ct_scans")).unwrap();
    let names: Vec<String> = (49..54).map(|k| format!("{k:03}.nii.gz")).collect();
    for n in &names {
        std::fs::copy(ct(), ds.join("ct_scans").join(n)).unwrap();
    }
    let whole = dir.path().join("whole");
    let out = pseudo(&["--dataset", p(&ds), "-o", p(&whole), "--use-predictions"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut seen = Vec::new();
    for i in 0..3 {
        let part = dir.path().join(format!("shard{i}"));
        let shard = format!("{i}/3");
        let out = pseudo(&["--dataset", p(&ds), "-o", p(&part), "--use-predictions", "--shard", &shard]);
        assert!(out.status.success(), "{}", stderr(&out));
        let written: Vec<String> = std::fs::read_dir(&part)
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        assert!(stdout(&out).contains(&format!("shard     {i}/3: {} of the dataset's 5 volumes", written.len())));
        for n in &written {
            let a = ichseg::io::nifti::read_mask(&part.join(n)).unwrap().1;
            let b = ichseg::io::nifti::read_mask(&whole.join(n)).unwrap().1;
            assert_eq!(a, b, "{n}: a shard's mask equals the whole run's");
        }
        seen.extend(written);
    }
    seen.sort();
    assert_eq!(seen, names, "every volume in exactly one shard");

    for bad in ["3/3", "1/0", "x"] {
        let out = pseudo(&["--dataset", p(&ds), "-o", p(&dir.path().join("bad")), "--use-predictions", "--shard", bad]);
        assert!(!out.status.success() && stderr(&out).contains("expected I/N"), "{bad}: {}", stderr(&out));
        assert!(!dir.path().join("bad").exists(), "refused before any output");
    }
    let out = pseudo(&[p(&ct()), "-o", p(&dir.path().join("one.nii.gz")), "--use-predictions", "--shard", "0/2"]);
    assert!(!out.status.success() && stderr(&out).contains("--dataset"), "{}", stderr(&out));
}

/// The shipped classifiers carry tuned settings (`ichseg.pseudo.*`): `pseudo-label` applies them
/// with no flags, says so and reports each setting's source; a flag wins; `--preset paper` runs
/// METHOD.md's defaults.
#[test]
fn shipped_classifiers_bring_their_tuned_settings() {
    let dir = tempfile::tempdir().unwrap();
    let models = root().join("models");
    let (slim34, slim50) = (models.join("classifier_slim34.onnx"), models.join("classifier_slim50.onnx"));
    let sample = models.join("samples/sample.nii.gz");
    let labels = models.join("samples/sample_slices.csv");
    let run = |name: &str, extra: &[&str]| {
        let (mask, report) = (dir.path().join(format!("{name}.nii.gz")), dir.path().join(format!("{name}.json")));
        let mut args = vec!["pseudo-label", p(&sample), "--classifier", p(&slim34), "--classifier", p(&slim50)];
        args.extend([
            "--labels",
            p(&labels),
            "--threads",
            "2",
            "--device",
            "cpu",
            "-o",
            p(&mask),
            "--report",
            p(&report),
        ]);
        args.extend(extra);
        let out = ichseg(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        (ichseg::io::nifti::read_mask(&mask).unwrap().1, r, stdout(&out))
    };
    let (tuned, r, text) = run("tuned", &[]);
    let s = &r["settings"];
    let from_both = "model: classifier_slim34.onnx, classifier_slim50.onnx";
    assert_eq!(
        (s["threshold"]["value"].as_f64(), s["threshold"]["source"].as_str()),
        (Some(0.2f32 as f64), Some(from_both))
    );
    assert_eq!((s["max_hu"]["value"].as_f64(), s["max_hu"]["source"].as_str()), (Some(100.0), Some(from_both)));
    assert_eq!(s["min_lesion_ml"]["value"].as_f64(), Some(0.1));
    assert_eq!(s["intracranial_margin_mm"]["source"], "default");
    assert_eq!((s["min_hu"]["value"].as_f64(), s["min_hu"]["source"].as_str()), (Some(42.0), Some(from_both)));
    assert_eq!(r["method"]["max_hu"].as_f64(), Some(100.0));
    assert_eq!(r["method"]["min_hu"].as_f64(), Some(42.0));
    assert!(
        text.contains(
            "settings  threshold, bone cut, blood-density cut, small-lesion filter, CRF label confidence, CRF \
             bilateral weight from the classifiers' metadata"
        ),
        "{text}"
    );

    let (paper, r, text) = run("paper", &["--preset", "paper"]);
    assert_eq!(r["settings"]["max_hu"]["source"], "default");
    assert!(r["settings"]["max_hu"]["value"].is_null() && !text.contains("settings  "), "{text}");
    let (flags, r, _) = run("flags", &["--max-hu", "100", "--min-hu", "42", "--min-lesion-ml", "0.1"]);
    assert_eq!(r["settings"]["max_hu"]["source"], "option");
    assert_eq!(r["settings"]["min_hu"]["source"], "option");
    let (no_density, r, _) = run("no_density", &["--no-min-hu"]);
    assert!(r["settings"]["min_hu"]["value"].is_null() && r["settings"]["min_hu"]["source"] == "option");
    let methods = ["--crf-confidence", "0.7", "--crf-bilateral-compat", "10"];
    let (off, _, _) = run("off", &[&["--no-bone-cut", "--no-min-hu", "--min-lesion-ml", "0"][..], &methods].concat());
    let (crf, r, text) = run("crf", &methods);
    let s = &r["settings"];
    assert_eq!(
        (s["crf_confidence"]["value"].as_f64(), s["crf_confidence"]["source"].as_str()),
        (Some(0.7f32 as f64), Some("option"))
    );
    assert_eq!(s["crf_bilateral_compat"]["value"].as_f64(), Some(10.0));
    assert!(text.contains("CRF on (label confidence 0.7, bilateral weight 10)"), "{text}");
    assert_ne!(crf, tuned, "the CRF's settings reach the CRF");
    let (crf_tuned, _, _) = run("crf_tuned", &["--crf-confidence", "0.9", "--crf-bilateral-compat", "3"]);
    let count = |m: &ndarray::Array3<u8>| m.iter().filter(|&&v| v != 0).count();
    assert_eq!(flags, tuned, "the metadata gives what the flags give");
    assert!(count(&no_density) > count(&tuned), "the blood-density cut removes voxels on the sample");
    assert_eq!(crf_tuned, tuned, "the metadata's CRF settings are the flags' 0.9 / 3");
    assert_eq!(off, paper, "with the cut, the filter and the tuned CRF off, the metadata's threshold is the paper's");
    // On the sample METHOD.md's CRF (0.7 / 10) votes the bleed away; the tuned one keeps it.
    assert!(count(&tuned) > 0 && tuned != paper, "{} voxels vs {}", count(&tuned), count(&paper));

    let out = dir.path().join("refused.nii.gz");
    for (extra, expected) in [
        (&["--preset", "best"][..], "expected model or paper"),
        (&["--no-crf", "--crf-confidence", "0.9"], "--crf-confidence"),
        (&["--min-hu", "nan"], "min_hu must be a finite HU value"),
        (&["--min-hu", "40", "--no-min-hu"], "--no-min-hu"),
    ] {
        let mut args = vec!["pseudo-label", p(&sample), "--classifier", p(&slim34), "-o", p(&out)];
        args.extend(extra);
        let bad = ichseg(&args);
        assert!(!bad.status.success() && stderr(&bad).contains(expected), "{}", stderr(&bad));
        assert!(!out.exists(), "nothing written");
    }
}
