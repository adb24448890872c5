//! Cross-checks `crf::refine` against pydensecrf (tests/fixtures/crf, made by
//! training/fixtures/crf.py with the METHOD.md defaults).

use ichseg::crf::{refine, CrfParams};
use ndarray::Array2;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Fraction of pixels on which our map must equal pydensecrf's.
const MIN_AGREEMENT: f64 = 0.99;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crf")
}

fn load(name: &Value, shape: (usize, usize)) -> Array2<u8> {
    let bytes = std::fs::read(fixture_dir().join(name.as_str().unwrap())).unwrap();
    Array2::from_shape_vec(shape, bytes).unwrap()
}

fn params(doc: &Value) -> CrfParams {
    let p = &doc["params"];
    let f = |k: &str| p[k].as_f64().unwrap_or_else(|| panic!("params.{k}")) as f32;
    CrfParams {
        gaussian_sxy: f("gaussian_sxy"),
        gaussian_compat: f("gaussian_compat"),
        bilateral_sxy: f("bilateral_sxy"),
        bilateral_srgb: f("bilateral_srgb"),
        bilateral_compat: f("bilateral_compat"),
        iterations: p["iterations"].as_u64().unwrap() as usize,
        label_confidence: f("label_confidence"),
    }
}

#[test]
fn matches_pydensecrf() {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("crf.json")).unwrap()).unwrap();
    let params = params(&doc);
    assert_eq!(params, CrfParams::default(), "fixtures use the METHOD.md defaults");
    let cases = doc["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for (i, case) in cases.iter().enumerate() {
        let shape = (case["shape"][0].as_u64().unwrap() as usize, case["shape"][1].as_u64().unwrap() as usize);
        let image = load(&case["image"], shape);
        let labels = load(&case["labels"], shape);
        let want = load(&case["crf"], shape);
        let got = refine(image.view(), labels.view(), &params).unwrap();
        let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
        let agreement = same as f64 / want.len() as f64;
        let changed = labels.iter().zip(&want).filter(|(a, b)| a != b).count();
        println!(
            "case {i} {shape:?}: agreement {:.4}% ({} of {} pixels differ; pydensecrf changed {changed}, \
             foreground ours {} pydensecrf {})",
            100.0 * agreement,
            want.len() - same,
            want.len(),
            got.iter().map(|&v| v as usize).sum::<usize>(),
            want.iter().map(|&v| v as usize).sum::<usize>(),
        );
        assert!(agreement >= MIN_AGREEMENT, "case {i}: agreement {agreement:.4} below {MIN_AGREEMENT}");
    }
}
