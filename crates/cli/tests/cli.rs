//! The `ichseg` command line end to end: outputs, reports, and bad input that must fail with a
//! specific message and leave no output file behind.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

fn unet(name: &str) -> PathBuf {
    fixture("unet").join(name)
}
fn nifti_fixture(name: &str) -> PathBuf {
    fixture("nifti").join(name)
}
#[test]
fn segment_writes_mask_probability_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let (mask, prob, report) = (dir.path().join("m.nii.gz"), dir.path().join("p.nii"), dir.path().join("r.json"));
    let ct = unet("ct_small.nii.gz");
    let out = ichseg(&[
        "segment",
        "--model",
        p(&unet("unet_transpose.onnx")),
        p(&ct),
        "-o",
        p(&mask),
        "--prob",
        p(&prob),
        "--report",
        p(&report),
        "--threads",
        "2",
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "--quiet prints nothing");
    let input = ichseg::io::nifti::read(&ct).unwrap();
    let (mh, m) = ichseg::io::nifti::read_mask(&mask).unwrap();
    assert!(mh.same_geometry(&input.header));
    assert_eq!(mh.datatype(), 2, "uint8 mask");
    assert_eq!(m.iter().filter(|&&v| v == 1).count(), 610);
    let prob_img = ichseg::io::nifti::read(&prob).unwrap();
    assert!(prob_img.header.same_geometry(&input.header));
    assert_eq!(prob_img.header.datatype(), 16, "float32 probabilities");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["lesion_count"], 3);
    assert_eq!(r["lesions"][0]["voxels"], 408);
    assert_eq!(r["device"], "cpu");
    assert_eq!(r["threads"], 2);
    for k in ["load_s", "preprocess_s", "inference_s", "postprocess_s", "findings_s", "total_s"] {
        assert!(r["timings"][k].as_f64().unwrap() >= 0.0, "{k}");
    }
    assert!(r["timings"]["findings_s"].as_f64() <= r["timings"]["postprocess_s"].as_f64());
    let total = r["total_volume_ml"].as_f64().unwrap();
    assert!((total - 610.0 * 0.45f32 as f64 * 0.45f32 as f64 * 5.0 / 1000.0).abs() < 1e-6, "{total}");
}

#[test]
fn segment_json_prints_the_report_with_findings_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let (mask, report) = (dir.path().join("m.nii.gz"), dir.path().join("r.json"));
    let model = unet("unet_transpose.onnx");
    let ct = unet("ct_small.nii.gz");
    let out = ichseg(&["segment", "--model", p(&model), p(&ct), "-o", p(&mask), "--report", p(&report), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // stdout is the JSON alone (no progress, no text summary), the same as the --report file
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    for k in ["lesion_count", "total_volume_ml", "total_abc2_ml", "largest_lesion_ml", "summary", "midline", "lesions"]
    {
        assert_eq!(printed[k], written[k], "{k}");
    }
    assert_eq!(printed["lesion_count"], 3);
    let summary = printed["summary"].as_str().unwrap();
    assert!(summary.starts_with("3 lesions, "), "{summary}");
    let lesions = printed["lesions"].as_array().unwrap();
    let mut abc2 = 0.0;
    for l in lesions {
        let f = |k: &str| l[k].as_f64().unwrap_or_else(|| panic!("{k} in {l}"));
        assert!(f("abc2_ml") > 0.0 && f("volume_ml") > 0.0);
        abc2 += f("abc2_ml");
        let d = &l["density"];
        assert!(d["median_hu"].as_f64().unwrap() <= d["max_hu"].as_f64().unwrap(), "{d}");
        assert!(["left", "right", "crossing", "unknown"].contains(&l["side"].as_str().unwrap()), "{l}");
        assert!(l["flags"]["ge_30_ml"].is_boolean() && l["flags"]["touches_inner_table"].is_boolean());
    }
    assert!((printed["total_abc2_ml"].as_f64().unwrap() - abc2).abs() < 1e-9);
    assert!(printed["midline"]["found"].is_boolean());
    assert!(summary.contains(&format!("{:.1} mL total", printed["total_volume_ml"].as_f64().unwrap())), "{summary}");

    // Without --json the text output starts with the same summary line.
    let out = ichseg(&["segment", "--model", p(&model), p(&ct), "-o", p(&mask)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("summary   {summary}\n")), "{text}");
}

/// Runs `segment` expecting failure; checks the message and that no file appeared in the folder.
fn segment_fails(model: &Path, input: &Path, extra: &[&str], expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mask = dir.path().join("mask.nii.gz");
    let report = dir.path().join("report.json");
    let mut args = vec!["segment", "--model", p(model), p(input), "-o", p(&mask), "--report", p(&report), "--quiet"];
    args.extend_from_slice(extra);
    let out = ichseg(&args);
    assert!(!out.status.success(), "expected failure for {}", input.display());
    let err = stderr(&out);
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

/// A 4 MB `.nii.gz` whose int16 voxels inflate to 4.3 GB (32767x32767x2): gzip members of 64 MiB
/// of zeros, concatenated, after a first member holding the header.
fn gzip_bomb(path: &Path) {
    use std::io::Write;
    let mut h = [0u8; 352];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    for (i, d) in [3i16, 32767, 32767, 2, 1, 1, 1, 1].iter().enumerate() {
        h[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    h[70..72].copy_from_slice(&4i16.to_le_bytes()); // int16
    h[72..74].copy_from_slice(&16i16.to_le_bytes());
    for (i, p) in [1.0f32, 0.5, 0.5, 5.0].iter().enumerate() {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&p.to_le_bytes());
    }
    h[108..112].copy_from_slice(&352f32.to_le_bytes()); // vox_offset
    h[123] = 2; // mm
    h[344..348].copy_from_slice(b"n+1\0");
    let member = |data: &[u8]| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    };
    let zeros = member(&vec![0u8; 64 << 20]);
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&member(&h)).unwrap();
    for _ in 0..(32767u64 * 32767 * 2 * 2).div_ceil(64 << 20) {
        file.write_all(&zeros).unwrap();
    }
}

#[test]
fn a_file_that_inflates_beyond_memory_is_an_error_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.nii.gz");
    gzip_bomb(&bomb);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 8 << 20);
    let out_dir = tempfile::tempdir().unwrap();
    let mask = out_dir.path().join("mask.nii.gz");
    // Under an address-space limit the growing buffer is refused: exit 1 with a message.
    let out = Command::new("sh")
        .args(["-c", "ulimit -v 3500000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_ichseg"))
        .args(["segment", "--model", p(&unet("unet_transpose.onnx")), p(&bomb), "-o", p(&mask), "--quiet"])
        .args(["--threads", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("out of memory") && stderr(&out).contains("bomb.nii.gz"), "{}", stderr(&out));
    assert!(std::fs::read_dir(out_dir.path()).unwrap().next().is_none(), "output left behind");
    // With a memory limit it is refused from the header alone, before any voxel is inflated.
    segment_fails(
        &unet("unet_transpose.onnx"),
        &bomb,
        &["--memory-limit-mb", "512"],
        "needs 12.00 GiB but the memory limit is 512.0 MiB",
    );
}

#[test]
fn bad_volumes_fail_cleanly() {
    let model = unet("unet_transpose.onnx");
    for (file, expect) in [
        ("bad/truncated.nii", "truncated"),
        ("bad/truncated.nii.gz", "truncated"),
        ("bad/truncated_header.nii", "header"),
        ("bad/garbage.nii", "magic"),
        ("bad/wrong_magic.nii", "magic"),
        ("bad/zero_dim.nii", "dimension"),
        ("bad/absurd_dims.nii", "exceed"),
        ("bad/true_4d.nii", "4D volumes"),
        ("bad/nan_voxel.nii", "non-finite"),
        ("bad/pair.hdr", "not supported"),
        ("bad/nifti2.nii", "NIfTI-2"),
    ] {
        segment_fails(&model, &nifti_fixture(file), &[], expect);
    }
    segment_fails(&model, Path::new("/no/such/scan.nii.gz"), &[], "/no/such/scan.nii.gz");
}

#[test]
fn bad_models_and_options_fail_cleanly() {
    let ct = unet("ct_small.nii.gz");
    segment_fails(&unet("not_a_model.onnx"), &ct, &[], "not a valid ONNX file");
    segment_fails(&unet("unet_badrank.onnx"), &ct, &[], "rank 4");
    segment_fails(&unet("unet_transpose.onnx"), &ct, &["--device", "cuda"], "CUDA device 0 requested, but");
    segment_fails(&unet("unet_transpose.onnx"), &ct, &["--threshold", "2"], "threshold");
    segment_fails(&unet("unet_transpose.onnx"), &ct, &["--min-lesion-ml=-1"], "min_lesion_ml must be finite");
}

#[test]
fn min_lesion_ml_keeps_only_the_large_lesions() {
    // The fixture's mask has 3 lesions, the largest of 408 voxels of 0.45 x 0.45 x 5 mm.
    let dir = tempfile::tempdir().unwrap();
    let (mask, report) = (dir.path().join("m.nii.gz"), dir.path().join("r.json"));
    let largest_ml = (408.0 * 0.45f32 as f64 * 0.45f32 as f64 * 5.0 / 1000.0 * (1.0 - 1e-9)).to_string();
    let model = unet("unet_transpose.onnx");
    let ct = unet("ct_small.nii.gz");
    let args = ["segment", "--model", p(&model), p(&ct), "-o", p(&mask), "--report", p(&report), "-q"];
    let out = ichseg(&[&args[..], &["--min-lesion-ml", &largest_ml]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!((r["lesion_count"].as_u64(), r["lesions"][0]["voxels"].as_u64()), (Some(1), Some(408)));
    let (_, m) = ichseg::io::nifti::read_mask(&mask).unwrap();
    assert_eq!(m.iter().filter(|&&v| v == 1).count(), 408, "the small lesions left the mask too");

    // `eval --min-lesion-ml` on the unfiltered mask scores what the filtered segmentation scores
    let all = dir.path().join("all.nii.gz");
    assert!(ichseg(&[&args[..3], &[p(&ct), "-o", p(&all), "-q"]].concat()).status.success());
    let score = |pred: &Path, extra: &[&str]| {
        let out = ichseg(&[&["eval", "--pred", p(pred), "--gt", p(&all), "--json"][..], extra].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["overall"].clone()
    };
    let filtered = score(&mask, &[]);
    assert_ne!(filtered, score(&all, &[]));
    assert_eq!(score(&all, &["--min-lesion-ml", &largest_ml]), filtered);
    let bad = ichseg(&["eval", "--pred", p(&all), "--gt", p(&all), "--min-lesion-ml", "nan"]);
    assert!(stderr(&bad).contains("min_lesion_ml must be finite"), "{}", stderr(&bad));
}

#[test]
fn unwritable_output_fails_and_writes_nothing() {
    let out = ichseg(&[
        "segment",
        "--model",
        p(&unet("unet_transpose.onnx")),
        p(&unet("ct_small.nii.gz")),
        "-o",
        "/nonexistent-dir/mask.nii.gz",
        "--quiet",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/nonexistent-dir/mask.nii.gz"), "{}", stderr(&out));
}

#[test]
fn eval_scores_and_rejects_mismatched_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let mask = dir.path().join("m.nii.gz");
    let ct = unet("ct_small.nii.gz");
    let seg = ichseg(&["segment", "--model", p(&unet("unet_transpose.onnx")), p(&ct), "-o", p(&mask), "--quiet"]);
    assert!(seg.status.success(), "{}", stderr(&seg));
    // a mask against itself scores perfectly
    let out = ichseg(&["eval", "--pred", p(&mask), "--gt", p(&mask), "--pred", p(&mask), "--gt", p(&mask), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["overall"]["miou"], 1.0);
    assert_eq!(v["overall"]["cl"], 1.0);
    assert_eq!(v["per_volume"].as_array().unwrap().len(), 2);
    // By lesion size: every site found, in the bins that hold the mask's lesions.
    let bins = v["overall"]["by_size"].as_array().unwrap();
    assert_eq!(bins.len(), 4);
    let sites: u64 = bins.iter().map(|b| b["n_gt_sites"].as_u64().unwrap()).sum();
    assert_eq!(sites, v["overall"]["n_gt_sites"].as_u64().unwrap());
    assert!(bins.iter().all(|b| b["n_gt_sites"] == 0 || b["cl"] == 1.0), "{bins:?}");
    assert_eq!((bins[3]["min_ml"].as_f64(), bins[3]["max_ml"].is_null()), (Some(10.0), true));
    let table = ichseg(&["eval", "--pred", p(&mask), "--gt", p(&mask)]);
    let text = stdout(&table);
    assert!(text.contains("mIoU") && text.contains("by lesion size") && text.contains("0.1-1 mL"), "{text}");
    // different geometry
    let other = nifti_fixture("good/labels.nii.gz");
    let out = ichseg(&["eval", "--pred", p(&mask), "--gt", p(&other)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("do not share a geometry"), "{}", stderr(&out));
    let out = ichseg(&["eval", "--pred", p(&mask), "--pred", p(&mask), "--gt", p(&mask)]);
    assert!(stderr(&out).contains("give them in pairs"));
}

#[test]
fn inspect_prints_model_description() {
    let out = ichseg(&["inspect", p(&unet("unet_transpose.onnx"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[N, 1, 64, 64]") && text.contains("ichseg.window = 50,130"), "{text}");
    let out = ichseg(&["inspect", "--json", p(&unet("unet_nometa.onnx"))]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!(["N", 1, 64, 64]));
    assert!(v["metadata"].as_object().unwrap().is_empty());
    let out = ichseg(&["inspect", p(&unet("not_a_model.onnx"))]);
    assert!(stderr(&out).contains("not a valid ONNX file"));
}

#[test]
fn demo_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = ichseg(&["demo", "--out", p(dir.path()), "--threads", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("lesions"), "{text}");
    for f in ["mask.nii.gz", "prob.nii.gz", "report.json"] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
}

#[test]
fn inspect_lists_classifier_taps_with_strides() {
    let model = root().join("tests/fixtures/classifier/tiny_classifier.onnx");
    let out = ichseg(&["inspect", "--json", p(&model)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["classifier"], true);
    let taps = v["tap_candidates"].as_array().unwrap();
    let find = |name: &str| taps.iter().find(|t| t["tensor"] == name).unwrap_or_else(|| panic!("{name} in {taps:?}"));
    assert_eq!(find("/layer1/relu_1/Relu_output_0")["stride"], 4);
    assert_eq!(find("/layer1/relu_1/Relu_output_0")["shape"], serde_json::json!([1, 4, 16, 16]));
    assert_eq!(find("/layer2/relu_1/Relu_output_0")["stride"], 8);
    let text = ichseg(&["inspect", p(&model)]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("candidate taps for a [1, 3, 64, 64] input"));
    // a classifier is not a segmenter
    let ct = unet("ct_small.nii.gz");
    segment_fails(&model, &ct, &[], "is a classifier");
}

/// `doctor` never fails: on a machine without CUDA it lists what is missing and says that
/// `auto` uses the CPU; with a GPU it names it. Its JSON carries the same verdict.
#[test]
fn doctor_reports_the_cuda_stack_and_the_auto_choice() {
    let out = ichseg(&["doctor"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("auto "), "{text}");
    let json = ichseg(&["doctor", "--json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("doctor --json is JSON");
    let device = v["auto"]["device"].as_str().unwrap();
    assert!(device == "cpu" || device == "cuda:0", "{v}");
    if device == "cpu" {
        assert!(text.contains("using the CPU"), "{text}");
        assert!(v["cuda"]["usable"]["Err"].is_string(), "{v}");
        // inspect --device cuda needs a GPU and says why it cannot translate
        let o = ichseg(&["inspect", "--device", "cuda", p(&unet("unet_transpose.onnx"))]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("CUDA"), "{}", stderr(&o));
    }
}

#[test]
fn segment_reports_the_intracranial_mask_and_refuses_bad_margins() {
    let dir = tempfile::tempdir().unwrap();
    let mask = dir.path().join("m.nii.gz");
    let (model, ct) = (unet("unet_transpose.onnx"), unet("ct_small.nii.gz"));
    let run = |extra: &[&str]| {
        let mut args = vec!["segment", "--model", p(&model), p(&ct), "-o", p(&mask), "--json"];
        args.extend_from_slice(extra);
        ichseg(&args)
    };
    let plain = run(&[]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let r: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert_eq!(r["intracranial_mask"], serde_json::json!({"applied": false}));
    let masked = run(&["--intracranial-mask", "--intracranial-margin-mm", "3.5"]);
    assert!(masked.status.success(), "{}", stderr(&masked));
    let r: serde_json::Value = serde_json::from_slice(&masked.stdout).unwrap();
    let ic = &r["intracranial_mask"];
    assert_eq!((ic["applied"].as_bool(), ic["margin_mm"].as_f64()), (Some(true), Some(3.5)), "{ic}");
    assert_eq!(r["model"]["config"]["intracranial_margin_mm"], 3.5);
    let slices = ["slices_enclosed", "slices_hull", "slices_empty"].map(|k| ic[k].as_u64().unwrap());
    assert_eq!(slices.iter().sum::<u64>(), 4, "{ic}");
    // the written mask holds no voxel the report's mask does not
    let (_, m) = ichseg::io::nifti::read_mask(&mask).unwrap();
    assert!(m.iter().filter(|&&v| v != 0).count() as u64 <= ic["voxels"].as_u64().unwrap());
    for bad in ["-1", "NaN"] {
        let out = run(&["--intracranial-mask", &format!("--intracranial-margin-mm={bad}")]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("intracranial margin"), "{}", stderr(&out));
    }
    let alone = run(&["--intracranial-margin-mm", "2"]);
    assert!(!alone.status.success() && stderr(&alone).contains("--intracranial-mask"), "{}", stderr(&alone));
}

#[test]
fn profile_ops_prints_where_each_network_run_spent_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let run = |profile: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ichseg"));
        cmd.args(["segment", "--model", p(&unet("unet_transpose.onnx")), p(&unet("ct_small.nii.gz"))]).args([
            "-o",
            p(&dir.path().join("m.nii.gz")),
            "--batch",
            "4",
            "--quiet",
        ]);
        if profile {
            cmd.env("ICHSEG_PROFILE_OPS", "1");
        } else {
            cmd.env_remove("ICHSEG_PROFILE_OPS");
        }
        cmd.output().unwrap()
    };
    let out = run(true);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> =
        stderr(&out).lines().filter(|l| l.starts_with("ichseg-profile: run ")).map(String::from).collect();
    // ct_small has 4 slices: one run of a batch of 4
    assert_eq!(lines.len(), 1, "{}", stderr(&out));
    assert!(lines[0].contains("= spawn ") && lines[0].contains("WinogradConv x"), "{}", lines[0]);
    let quiet = run(false);
    assert!(quiet.status.success() && !stderr(&quiet).contains("ichseg-profile"), "{}", stderr(&quiet));
}

#[test]
fn the_report_names_the_cpu_kernels_and_the_switches_lower_them() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let kernels = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ichseg"));
        cmd.args(["segment", "--model", p(&unet("unet_transpose.onnx")), p(&unet("ct_small.nii.gz"))])
            .args(["-o", p(&dir.path().join("m.nii.gz")), "--report", p(&report), "--quiet"])
            .env_remove("ICHSEG_CPU_LEVEL")
            .env_remove("ICHSEG_TRACT_CONV")
            .envs(env.iter().copied());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        (r["cpu_kernels"].as_str().unwrap().to_string(), r["lesion_count"].clone())
    };
    let (detected, lesions) = kernels(&[]);
    assert!(["avx512", "avx2", "portable"].contains(&detected.as_str()), "{detected}");
    // every level finds the same lesions
    assert_eq!(kernels(&[("ICHSEG_CPU_LEVEL", "portable")]), ("portable".to_string(), lesions.clone()));
    // a level above the CPU's, or an unknown one, keeps the detected level
    assert_eq!(kernels(&[("ICHSEG_CPU_LEVEL", "avx9000")]).0, detected);
    assert_eq!(kernels(&[("ICHSEG_TRACT_CONV", "1")]), ("tract".to_string(), lesions));
    let out = ichseg(&[
        "segment",
        "--model",
        p(&unet("unet_transpose.onnx")),
        p(&unet("ct_small.nii.gz")),
        "-o",
        p(&dir.path().join("m.nii.gz")),
        "--report",
        p(&report),
        "--low-memory",
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["cpu_kernels"], format!("{detected}, low-memory"));
}

/// The shipped weak U-Net carries the small-lesion filter chosen on val
/// (`ichseg.segment.min_lesion_ml`): `segment` applies it without the flag and says so; the flag wins.
#[test]
fn a_models_tuned_small_lesion_filter_applies_unless_the_flag_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let models = root().join("models");
    let (model, sample) = (models.join("unet_weak.onnx"), models.join("samples/sample.nii.gz"));
    let run = |name: &str, extra: &[&str]| {
        let (mask, report) = (dir.path().join(format!("{name}.nii.gz")), dir.path().join(format!("{name}.json")));
        let args = ["segment", "--model", p(&model), p(&sample), "-o", p(&mask), "--report", p(&report)];
        let out = ichseg(&[&args[..], &["--threads", "2"], extra].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        (r["model"]["config"].clone(), r["lesion_count"].as_u64().unwrap(), stdout(&out))
    };
    let (tuned, kept, text) = run("tuned", &[]);
    let ml = tuned["min_lesion_ml"].as_f64().unwrap();
    assert!(ml > 0.0 && tuned["min_lesion_ml_source"] == "model: unet_weak.onnx", "{tuned}");
    assert!(text.contains("the model's ichseg.segment.min_lesion_ml"), "{text}");
    let (given, same, _) = run("given", &["--min-lesion-ml", &ml.to_string()]);
    assert_eq!((given["min_lesion_ml_source"].as_str(), same), (Some("option"), kept));
    let (all, every, text) = run("all", &["--min-lesion-ml", "0"]);
    assert_eq!(all["min_lesion_ml"].as_f64(), Some(0.0));
    assert!(every > kept && !text.contains("filter "), "{every} lesions vs {kept}; {text}");
}
