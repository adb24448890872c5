//! Cross-checks `metrics::evaluate` and `lesions::find_lesions` against an independent numpy /
//! scipy.ndimage computation (tests/fixtures/metrics, made by training/fixtures/metrics.py), the
//! scores by lesion size included.

use ichseg::lesions::find_lesions;
use ichseg::metrics::{evaluate, evaluate_sized, Scores, SizeBinScores};
use ndarray::Array3;
use serde_json::Value;
use std::path::{Path, PathBuf};

const TOL: f64 = 1e-12;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics")
}

fn load_mask(name: &str, shape: (usize, usize, usize)) -> Array3<u8> {
    let bytes = std::fs::read(fixture_dir().join(name)).unwrap();
    Array3::from_shape_vec(shape, bytes).unwrap()
}

fn assert_close(what: &str, got: f64, want: &Value) {
    let want = want.as_f64().unwrap_or_else(|| panic!("{what}: expected a number, fixture has {want}"));
    assert!((got - want).abs() <= TOL, "{what}: got {got}, numpy says {want}");
}

fn assert_close_opt(what: &str, got: Option<f64>, want: &Value) {
    match got {
        None => assert!(want.is_null(), "{what}: got None, numpy says {want}"),
        Some(g) => assert_close(what, g, want),
    }
}

fn check_scores(ctx: &str, got: &Scores, want: &Value) {
    assert_close(&format!("{ctx} iou_background"), got.iou_background, &want["iou_background"]);
    assert_close(&format!("{ctx} iou_hemorrhage"), got.iou_hemorrhage, &want["iou_hemorrhage"]);
    assert_close(&format!("{ctx} miou"), got.miou, &want["miou"]);
    assert_close(&format!("{ctx} dice"), got.dice, &want["dice"]);
    assert_close_opt(&format!("{ctx} cl"), got.cl, &want["cl"]);
    assert_close_opt(&format!("{ctx} ml"), got.ml, &want["ml"]);
    assert_close_opt(&format!("{ctx} fpl"), got.fpl, &want["fpl"]);
    let counts = [
        ("n_gt_sites", got.n_gt_sites),
        ("n_correct", got.n_correct),
        ("n_pred_sites", got.n_pred_sites),
        ("n_fp", got.n_fp),
        ("slices", got.slices),
    ];
    for (name, value) in counts {
        assert_eq!(Some(value as u64), want[name].as_u64(), "{ctx} {name}");
    }
}

struct Pair {
    pred: Array3<u8>,
    gt: Array3<u8>,
}

fn load() -> (Value, Vec<Pair>) {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("metrics.json")).unwrap()).unwrap();
    let pairs = doc["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let s: Vec<usize> = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            let shape = (s[0], s[1], s[2]);
            Pair {
                pred: load_mask(v["pred"].as_str().unwrap(), shape),
                gt: load_mask(v["gt"].as_str().unwrap(), shape),
            }
        })
        .collect();
    (doc, pairs)
}

#[test]
fn evaluate_matches_numpy_scipy() {
    let (doc, pairs) = load();
    assert!(pairs.len() >= 4);
    let views: Vec<_> = pairs.iter().map(|p| (p.pred.view(), p.gt.view())).collect();
    let eval = evaluate(&views).unwrap();
    check_scores("overall", &eval.overall, &doc["overall"]);
    assert_eq!(eval.per_volume.len(), pairs.len());
    for (i, got) in eval.per_volume.iter().enumerate() {
        check_scores(&format!("volume {i}"), got, &doc["volumes"][i]["scores"]);
    }
    // The fixture exercises every branch: missed sites, false positives, an empty ground truth.
    assert!(eval.overall.n_correct < eval.overall.n_gt_sites && eval.overall.n_fp > 0);
    assert!(eval.per_volume.iter().any(|s| s.cl.is_none()));
}

fn check_bins(ctx: &str, got: &[SizeBinScores], want: &Value) {
    let want = want.as_array().unwrap_or_else(|| panic!("{ctx}: no bins in the fixture"));
    assert_eq!(got.len(), want.len(), "{ctx}: bins");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let ctx = format!("{ctx} bin {k}");
        assert_close(&format!("{ctx} min_ml"), g.min_ml, &w["min_ml"]);
        assert_close_opt(&format!("{ctx} max_ml"), g.max_ml, &w["max_ml"]);
        assert_close_opt(&format!("{ctx} cl"), g.cl, &w["cl"]);
        assert_close_opt(&format!("{ctx} fpl"), g.fpl, &w["fpl"]);
        for (name, value) in [
            ("n_gt_sites", g.n_gt_sites),
            ("n_correct", g.n_correct),
            ("n_pred_sites", g.n_pred_sites),
            ("n_fp", g.n_fp),
        ] {
            assert_eq!(Some(value as u64), w[name].as_u64(), "{ctx} {name}");
        }
    }
}

#[test]
fn scores_by_lesion_size_match_numpy_scipy() {
    let (doc, pairs) = load();
    let views: Vec<_> = pairs.iter().map(|p| (p.pred.view(), p.gt.view())).collect();
    let voxel_ml: Vec<f64> =
        doc["volumes"].as_array().unwrap().iter().map(|v| v["voxel_ml"].as_f64().unwrap()).collect();
    let eval = evaluate_sized(&views, &voxel_ml).unwrap();
    check_bins("overall", eval.overall.by_size.as_ref().unwrap(), &doc["overall_by_size"]);
    check_scores("overall", &eval.overall, &doc["overall"]);
    for (i, got) in eval.per_volume.iter().enumerate() {
        check_bins(&format!("volume {i}"), got.by_size.as_ref().unwrap(), &doc["volumes"][i]["by_size"]);
    }
    // Every bin holds sites somewhere, and some bins miss sites: the fixture tests the binning.
    for (k, b) in eval.overall.by_size.unwrap().iter().enumerate() {
        assert!(b.n_gt_sites > 0, "bin {k} has no ground-truth site");
    }
}

#[test]
fn find_lesions_matches_scipy_label() {
    let (doc, pairs) = load();
    let eye = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
    for (i, pair) in pairs.iter().enumerate() {
        for (which, mask) in [("pred", &pair.pred), ("gt", &pair.gt)] {
            let ctx = format!("volume {i} {which}");
            let want = doc["volumes"][i][format!("{which}_lesions")].as_array().unwrap();
            let got = find_lesions(mask.view(), [1.0; 3], &eye);
            let got_voxels: Vec<u64> = got.iter().map(|l| l.voxels as u64).collect();
            let want_voxels: Vec<u64> = want.iter().map(|l| l["voxels"].as_u64().unwrap()).collect();
            assert_eq!(got_voxels, want_voxels, "{ctx}: voxel counts");
            // Centroids pin down the tie order (equal sizes: first voxel in raster order).
            for (k, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(g.id, k + 1);
                for d in 0..3 {
                    assert_close(
                        &format!("{ctx} lesion {k} centroid[{d}]"),
                        g.centroid_voxel[d],
                        &w["centroid_voxel"][d],
                    );
                }
            }
        }
    }
}
