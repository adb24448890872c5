//! `ichseg ablate` end to end on a two-volume BCIHM-layout fixture: each row scores exactly what
//! `ichseg pseudo-label` makes with the same settings (scored by `ichseg eval`), a grid of
//! thresholds equals separate runs, and bad splits or labels fail clearly.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Output;

const TINY_TAPS: &str = "/layer1/relu_1/Relu_output_0,/layer2/relu_1/Relu_output_0";
const RESNET_TAPS: &str = "/layer1/layer1.1/relu_1/Relu_output_0,/layer2/layer2.1/relu_1/Relu_output_0";
const TINY_L1: &str = "/layer1/relu_1/Relu_output_0";
const RESNET_L1: &str = "/layer1/layer1.1/relu_1/Relu_output_0";
// The fixtures have no ichseg.deep_tap: their deepest taps stand in for layer4.
const TINY_DEEP: &str = "/layer2/relu_1/Relu_output_0";
const RESNET_DEEP: &str = "/layer2/layer2.1/relu_1/Relu_output_0";

/// A BCIHM-layout dataset of two copies of the small CT (patients 1 and 2), ground-truth
/// masks, slice labels (patient 1 bleeds on slices 1-2 of 0..3, patient 2 nowhere) and a split.
fn dataset(dir: &Path) -> (PathBuf, PathBuf) {
    let ds = dir.join("bcihm");
    for sub in ["ct_scans", "masks"] {
        std::fs::create_dir_all(ds.join(sub)).unwrap();
    }
    let image = ichseg::io::nifti::read(&fixture("unet/ct_small.nii.gz")).unwrap();
    for (n, name) in [(1, "001.nii.gz"), (2, "002.nii.gz")] {
        std::fs::copy(fixture("unet/ct_small.nii.gz"), ds.join("ct_scans").join(name)).unwrap();
        let mut mask = ndarray::Array3::<u8>::zeros(image.volume.data().dim());
        if n == 1 {
            mask.slice_mut(ndarray::s![1..3, 20..40, 25..45]).fill(1);
        }
        ichseg::io::nifti::write_mask(&ds.join("masks").join(name), &image.header, &mask).unwrap();
    }
    let mut csv = String::from("PatientNumber,SliceNumber,No_Hemorrhage\n");
    for s in 1..=4 {
        csv += &format!("1,{s},{}\n2,{s},1\n", u8::from(!(2..=3).contains(&s)));
    }
    std::fs::write(ds.join("hemorrhage_diagnosis_raw_ct.csv"), csv).unwrap();
    let split = dir.join("split.json");
    std::fs::write(&split, r#"{"seed": 1, "splits": {"val": [1, 2], "test": [2]}}"#).unwrap();
    (ds, split)
}

/// `ichseg ablate --json` with both fixture classifiers and `args`.
fn ablate(ds: &Path, split: &Path, args: &[&str]) -> Output {
    let (tiny, resnet) = (fixture("classifier/tiny_classifier.onnx"), fixture("grad/resnet_basic_op17_fused.onnx"));
    let mut all = vec!["ablate", "--dataset", p(ds), "--split", p(split), "--json", "--threads", "2", "-q"];
    all.extend(["--classifier", p(&tiny), "--taps", TINY_TAPS, "--deep-tap", TINY_DEEP]);
    all.extend(["--classifier", p(&resnet), "--taps", RESNET_TAPS, "--deep-tap", RESNET_DEEP]);
    all.extend(args);
    ichseg(&all)
}

/// `ichseg pseudo-label --dataset` with `classifiers` (path, taps) and `args`, then `ichseg eval`
/// of both volumes: the pooled scores.
fn pseudo_scores(dir: &Path, ds: &Path, classifiers: &[(&str, &str)], args: &[&str]) -> serde_json::Value {
    let out = tempfile::tempdir_in(dir).unwrap();
    let paths: Vec<PathBuf> = classifiers.iter().map(|(m, _)| fixture(m)).collect();
    let mut all = vec!["pseudo-label", "--dataset", p(ds), "-o", p(out.path()), "--threads", "2", "-q"];
    for (path, (_, taps)) in paths.iter().zip(classifiers) {
        all.extend(["--classifier", p(path), "--taps", taps]);
    }
    all.extend(args);
    let run = ichseg(&all);
    assert!(run.status.success(), "{}", stderr(&run));
    let (pred, gt) = (out.path().to_path_buf(), ds.join("masks"));
    let (p1, p2, g1, g2) =
        (pred.join("001.nii.gz"), pred.join("002.nii.gz"), gt.join("001.nii.gz"), gt.join("002.nii.gz"));
    let eval = ichseg(&["eval", "--json", "--pred", p(&p1), "--gt", p(&g1), "--pred", p(&p2), "--gt", p(&g2)]);
    json(&eval)["overall"].clone()
}

const TINY: &str = "classifier/tiny_classifier.onnx";
const RESNET: &str = "grad/resnet_basic_op17_fused.onnx";

#[test]
fn rows_score_what_pseudo_label_makes() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, split) = dataset(dir.path());
    let report = json(&ablate(&ds, &split, &["--single-tap", "0", "--threshold", "0.2,0.35"]));
    assert_eq!((report["volumes"].as_u64(), report["slices"].as_u64()), (Some(2), Some(8)));
    assert_eq!(report["positive_slices"], 2);
    assert_eq!(report["single_tap"], TINY_L1);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "one run per threshold");
    assert_eq!(runs[1]["setting"]["threshold"], 0.35, "settings as typed");
    // rows: Grad-CAM, + SCF, each model alone, BME, + SCF, + BLA, + dCRF
    let row = |run: usize, index: usize, name: &str| -> serde_json::Value {
        let rows = runs[run]["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 8);
        assert_eq!(rows[index]["row"].as_str().unwrap(), name);
        rows[index]["scores"].clone()
    };
    let both = [(TINY, TINY_TAPS), (RESNET, RESNET_TAPS)];
    let both_l1 = [(TINY, TINY_L1), (RESNET, RESNET_L1)];
    let both_deep = [(TINY, TINY_DEEP), (RESNET, RESNET_DEEP)];
    let d = dir.path();
    let crf = pseudo_scores(d, &ds, &both, &[]);
    assert_eq!(row(0, 7, "+ dCRF"), crf);
    let bla = pseudo_scores(d, &ds, &both, &["--no-crf"]);
    assert_eq!(row(0, 6, "+ BLA (all taps, OR)"), bla);
    assert_ne!(crf, bla, "the fixture must tell the CRF row from the BLA row");
    assert_eq!(row(1, 7, "+ dCRF"), pseudo_scores(d, &ds, &both, &["--threshold", "0.35"]));
    assert_eq!(row(1, 6, "+ BLA (all taps, OR)"), pseudo_scores(d, &ds, &both, &["--threshold", "0.35", "--no-crf"]));
    // the single-tap rows: tap 0 of each model
    let bme = row(0, 4, &format!("SF-CAM {TINY_L1}, ensemble (BME)"));
    assert_eq!(bme, pseudo_scores(d, &ds, &both_l1, &["--no-scf", "--no-crf"]));
    assert_eq!(row(0, 5, "+ SCF"), pseudo_scores(d, &ds, &both_l1, &["--no-crf"]));
    let alone = format!("SF-CAM {TINY_L1}, tiny_classifier.onnx alone");
    assert_eq!(row(0, 2, &alone), pseudo_scores(d, &ds, &both_l1[..1], &["--no-scf", "--no-crf"]));
    let alone = format!("SF-CAM {TINY_L1}, resnet_basic_op17_fused.onnx alone");
    assert_eq!(row(0, 3, &alone), pseudo_scores(d, &ds, &both_l1[1..], &["--no-scf", "--no-crf"]));
    // Grad-CAM rows
    let grad = ["--cam", "grad", "--no-crf"];
    let no_scf = [&grad[..], &["--no-scf"]].concat();
    assert_eq!(row(0, 0, "Grad-CAM deep tap, ensemble"), pseudo_scores(d, &ds, &both_deep, &no_scf));
    assert_eq!(row(0, 1, "+ SCF"), pseudo_scores(d, &ds, &both_deep, &grad));
    // the ground truth is pooled over all slices of the subset
    assert_eq!(crf["slices"], 8);
}

#[test]
fn table_output_and_the_default_single_tap() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, split) = dataset(dir.path());
    let out = ablate(&ds, &split, &["--subset", "test"]);
    let report = json(&out);
    assert_eq!(report["volumes"], 1);
    assert_eq!(report["single_tap"], TINY_DEEP, "default: the last (deepest) tap");
    let mut args: Vec<&str> = vec![];
    let (tiny, resnet) = (fixture(TINY), fixture(RESNET));
    args.extend(["ablate", "--dataset", p(&ds), "--split", p(&split), "--threads", "2"]);
    args.extend(["--classifier", p(&tiny), "--taps", TINY_TAPS, "--deep-tap", TINY_DEEP]);
    args.extend(["--classifier", p(&resnet), "--taps", RESNET_TAPS, "--deep-tap", RESNET_DEEP]);
    let out = ichseg(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("subset    val of") && text.contains("2 volumes, 8 slices, 2 positive (labels)"), "{text}");
    assert!(text.contains("  + dCRF") && text.contains("mIoU"), "{text}");
    assert!(stderr(&out).contains("ablate    2/2  002"), "progress on stderr: {}", stderr(&out));
}

#[test]
fn bad_splits_and_labels_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, split) = dataset(dir.path());
    let err = |o: Output| {
        assert!(!o.status.success());
        stderr(&o)
    };
    let missing = dir.path().join("nope.json");
    let e = err(ablate(&ds, &missing, &[]));
    assert!(e.contains("nope.json"), "{e}");
    let e = err(ablate(&ds, &split, &["--subset", "holdout"]));
    assert!(e.contains("no subset \"holdout\"") && e.contains("test, val"), "{e}");
    let e = err(ablate(&ds, &split, &["--single-tap", "2"]));
    assert!(e.contains("--single-tap 2"), "{e}");
    let e = err(ablate(&ds, &split, &["--threshold", "1.5"]));
    assert!(e.contains("--threshold"), "{e}");
    // a patient the dataset lacks
    let bad_split = dir.path().join("bad.json");
    std::fs::write(&bad_split, r#"{"splits": {"val": [1, 9]}}"#).unwrap();
    let e = err(ablate(&ds, &bad_split, &[]));
    assert!(e.contains("patient 9"), "{e}");
    // labels that do not cover every slice
    let csv = ds.join("hemorrhage_diagnosis_raw_ct.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&csv, text.replace("2,4,1\n", "")).unwrap();
    let e = err(ablate(&ds, &split, &[]));
    assert!(e.contains("no label for slice 3") && e.contains("patient 2"), "{e}");
    // without the CSV, predictions still work
    std::fs::remove_file(&csv).unwrap();
    let e = err(ablate(&ds, &split, &[]));
    assert!(e.contains("--use-predictions"), "{e}");
    let report = json(&ablate(&ds, &split, &["--use-predictions"]));
    assert_eq!(report["slice_decision"], "predictions");
}

#[test]
fn max_hu_adds_the_bone_cut_row_of_pseudo_label() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, split) = dataset(dir.path());
    let report = json(&ablate(&ds, &split, &["--max-hu", "40"]));
    let rows = report["runs"][0]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 9, "the bone cut comes after the dCRF row");
    assert_eq!(rows[8]["row"], "+ bone cut (> 40 HU)");
    let both = [(TINY, TINY_TAPS), (RESNET, RESNET_TAPS)];
    assert_eq!(rows[8]["scores"], pseudo_scores(dir.path(), &ds, &both, &["--max-hu", "40"]));
    assert_eq!(rows[7]["scores"], pseudo_scores(dir.path(), &ds, &both, &[]));
    assert_ne!(rows[8]["scores"], rows[7]["scores"], "40 HU must cut some of the fixture's mask");
    for bad in ["nan", "inf"] {
        let o = ablate(&ds, &split, &["--max-hu", bad]);
        assert!(!o.status.success() && stderr(&o).contains("--max-hu must be a finite HU value"), "{}", stderr(&o));
    }
}

#[test]
fn min_hu_adds_the_blood_density_row_of_pseudo_label() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, split) = dataset(dir.path());
    let both = [(TINY, TINY_TAPS), (RESNET, RESNET_TAPS)];
    let flags = ["--max-hu", "100", "--min-hu", "40"];
    let report = json(&ablate(&ds, &split, &flags));
    let rows = report["runs"][0]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 10, "the blood-density cut comes after the bone cut row");
    assert_eq!(rows[9]["row"], "+ blood-density cut (< 40 HU)");
    assert_eq!(rows[9]["scores"], pseudo_scores(dir.path(), &ds, &both, &flags));
    assert_ne!(rows[9]["scores"], rows[8]["scores"], "40 HU must cut some of the fixture's mask");
    for bad in ["nan", "-inf"] {
        let o = ablate(&ds, &split, &[&format!("--min-hu={bad}")]);
        assert!(!o.status.success() && stderr(&o).contains("--min-hu must be a finite HU value"), "{}", stderr(&o));
    }
}

#[test]
fn min_lesion_ml_adds_the_small_lesion_row_of_pseudo_label() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, split) = dataset(dir.path());
    let both = [(TINY, TINY_TAPS), (RESNET, RESNET_TAPS)];
    let flags = ["--max-hu", "40", "--min-lesion-ml", "0.05"];
    let report = json(&ablate(&ds, &split, &flags));
    let rows = report["runs"][0]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 10, "the filter comes after the bone cut row");
    assert_eq!(rows[9]["row"], "+ small-lesion filter (< 0.05 mL)");
    assert_eq!(rows[9]["scores"], pseudo_scores(dir.path(), &ds, &both, &flags));
    // Without the bone cut the filter follows the dCRF row; a filter larger than any lesion
    // empties the masks.
    let report = json(&ablate(&ds, &split, &["--min-lesion-ml", "1e6"]));
    let rows = report["runs"][0]["rows"].as_array().unwrap();
    assert_eq!((rows.len(), rows[8]["row"].as_str()), (9, Some("+ small-lesion filter (< 1000000 mL)")));
    assert_eq!(rows[8]["scores"], pseudo_scores(dir.path(), &ds, &both, &["--min-lesion-ml", "1e6"]));
    assert_ne!(rows[8]["scores"], rows[7]["scores"]);
    for bad in ["--min-lesion-ml=nan", "--min-lesion-ml=-1"] {
        let o = ablate(&ds, &split, &[bad]);
        assert!(
            !o.status.success() && stderr(&o).contains("--min-lesion-ml must be finite and >= 0"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn intracranial_margin_adds_the_rows_of_pseudo_label_with_the_intracranial_mask() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, split) = dataset(dir.path());
    let both = [(TINY, TINY_TAPS), (RESNET, RESNET_TAPS)];
    let report = json(&ablate(&ds, &split, &["--intracranial-margin-mm", "3", "--min-lesion-ml", "0.05"]));
    let rows = report["runs"][0]["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["row"].as_str().unwrap()).collect();
    assert_eq!(
        names[8..],
        [
            "+ small-lesion filter (< 0.05 mL)",
            "+ BLA inside the intracranial mask (3 mm), no bone cut",
            "+ dCRF inside the intracranial mask",
            "+ small-lesion filter (< 0.05 mL), intracranial mask",
        ]
    );
    let d = dir.path();
    let mask = ["--intracranial-mask", "--intracranial-margin-mm", "3"];
    let bla = pseudo_scores(d, &ds, &both, &[&mask[..], &["--no-crf"]].concat());
    assert_eq!(rows[9]["scores"], bla);
    let crf = pseudo_scores(d, &ds, &both, &mask);
    assert_eq!(rows[10]["scores"], crf);
    assert_eq!(rows[11]["scores"], pseudo_scores(d, &ds, &both, &[&mask[..], &["--min-lesion-ml", "0.05"]].concat()));
    assert_ne!(rows[10]["scores"], rows[7]["scores"], "the mask must change the fixture's dCRF row");
    let o = ablate(&ds, &split, &["--intracranial-margin-mm=-1"]);
    assert!(!o.status.success() && stderr(&o).contains("intracranial margin must be"), "{}", stderr(&o));
}
