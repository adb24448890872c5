//! Segmentation parity against onnxruntime (fixtures from training/fixtures/unet.py) and the
//! segmenter's error paths.

use ichseg::io::nifti;
use ichseg::{Engine, EngineOptions, Error, ModelOverrides, OnnxModel, Segmenter, SegmenterOptions};
use ndarray::{Array4, ArrayD, IxDyn};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet").join(name)
}

fn f32s(name: &str) -> Vec<f32> {
    std::fs::read(fixture(name))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture(name)).unwrap()).unwrap()
}

fn shape(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()
}

fn engine() -> Engine {
    Engine::new(&EngineOptions { threads: 2, ..Default::default() }).unwrap()
}

fn segmenter(model: &str, options: &SegmenterOptions) -> ichseg::Result<Segmenter> {
    Segmenter::new(&engine(), OnnxModel::load(&fixture(model))?, options)
}

/// Network alone: tract logits vs onnxruntime's on the same batch.
#[test]
fn logits_match_onnxruntime() {
    for model in ["unet_transpose", "unet_resize"] {
        let meta = json(&format!("{model}.json"));
        let in_shape = shape(&meta["network"]["input_shape"]);
        let out_shape = shape(&meta["network"]["logits_shape"]);
        let input = Array4::from_shape_vec(
            (in_shape[0], in_shape[1], in_shape[2], in_shape[3]),
            f32s(&format!("{model}.input.bin")),
        )
        .unwrap();
        let expected = ArrayD::from_shape_vec(IxDyn(&out_shape), f32s(&format!("{model}.logits.bin"))).unwrap();
        // on the CPU a segmenter runs the batch size it was made for
        let options = SegmenterOptions { batch: in_shape[0], ..Default::default() };
        let got = segmenter(&format!("{model}.onnx"), &options).unwrap().run_network(input).unwrap();
        assert_eq!(got.shape(), expected.shape());
        // logits reach |141|: compare relative to the largest magnitude
        let scale = expected.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(expected.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err <= 1e-5, "{model}: relative max logit error {err}");
    }
}

/// The whole pipeline (HU -> window -> resize -> network -> probability -> native grid -> mask)
/// against the same pipeline in PyTorch + onnxruntime.
#[test]
fn pipeline_matches_reference() {
    let ct = nifti::read(&fixture("ct_small.nii.gz")).unwrap();
    // unet_nometa has no metadata: the documented defaults must reproduce unet_transpose.
    for (model, reference) in
        [("unet_transpose", "unet_transpose"), ("unet_resize", "unet_resize"), ("unet_nometa", "unet_transpose")]
    {
        let seg = segmenter(&format!("{model}.onnx"), &SegmenterOptions::default()).unwrap();
        let out = seg.segment(&ct.volume).unwrap();
        let prob = f32s(&format!("{reference}.pipeline_prob.bin"));
        let mask = std::fs::read(fixture(&format!("{reference}.pipeline_mask.bin"))).unwrap();
        let max_err = out.probability.iter().zip(&prob).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(max_err <= 1e-4, "{model}: max abs probability error {max_err}");
        let diff = out.mask.iter().zip(&mask).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{model}: {diff} mask voxels differ");
        let lesion_sizes: Vec<usize> = out.lesions.iter().map(|l| l.voxels).collect();
        let expected: Vec<usize> = json(&format!("{reference}.json"))["pipeline"]["lesions"]["26-connected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(lesion_sizes, expected, "{model}");
        let voxel_ml = ct.volume.voxel_volume_ml();
        assert!((out.total_volume_ml - mask.iter().filter(|&&m| m == 1).count() as f64 * voxel_ml).abs() < 1e-9);
    }
}

#[test]
fn batching_and_threads_do_not_change_results() {
    let ct = nifti::read(&fixture("ct_small.nii.gz")).unwrap();
    let one = segmenter("unet_transpose.onnx", &SegmenterOptions::default()).unwrap().segment(&ct.volume).unwrap();
    let opts = SegmenterOptions { batch: 3, ..Default::default() }; // 4 slices: batches of 3 and 1
    let single = Engine::new(&EngineOptions { threads: 1, ..Default::default() }).unwrap();
    let segmenter = Segmenter::new(&single, OnnxModel::load(&fixture("unet_transpose.onnx")).unwrap(), &opts).unwrap();
    // the encoded file is released at once, and on the CPU the graph once the plan is built:
    // the last, short batch is zero-padded
    assert!(segmenter.model().bytes().is_empty());
    let three = segmenter.segment(&ct.volume).unwrap();
    assert_eq!(one.mask, three.mask);
    let err = one.probability.iter().zip(three.probability.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err < 1e-5, "{err}");
}

#[test]
fn progress_is_reported_and_cancel_stops() {
    let ct = nifti::read(&fixture("ct_small.nii.gz")).unwrap();
    let seg = segmenter("unet_transpose.onnx", &SegmenterOptions::default()).unwrap();
    let mut seen = vec![];
    seg.segment_with_progress(&ct.volume, &mut |p| {
        seen.push((p.done, p.total));
        true
    })
    .unwrap();
    assert_eq!(seen, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    let mut calls = 0;
    let err = seg
        .segment_with_progress(&ct.volume, &mut |_| {
            calls += 1;
            false
        })
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled));
    assert_eq!(calls, 1);
}

#[test]
fn threshold_option_changes_the_mask() {
    let ct = nifti::read(&fixture("ct_small.nii.gz")).unwrap();
    let strict = segmenter("unet_transpose.onnx", &SegmenterOptions { threshold: 0.99, ..Default::default() })
        .unwrap()
        .segment(&ct.volume)
        .unwrap();
    let prob = f32s("unet_transpose.pipeline_prob.bin");
    let expected = prob.iter().filter(|&&p| p >= 0.99).count();
    let got = strict.mask.iter().filter(|&&m| m == 1).count();
    assert!((got as i64 - expected as i64).abs() <= 2, "{got} vs {expected}");
    assert!(got < 610);
}

#[test]
fn min_lesion_ml_drops_the_small_lesions_before_the_lesion_list() {
    let ct = nifti::read(&fixture("ct_small.nii.gz")).unwrap();
    let run = |min_lesion_ml| {
        let options = SegmenterOptions { threshold: 0.3, min_lesion_ml: Some(min_lesion_ml), ..Default::default() };
        segmenter("unet_transpose.onnx", &options).unwrap().segment(&ct.volume).unwrap()
    };
    let all = run(0.0);
    assert!(all.lesions.len() >= 2, "the fixture needs lesions of several sizes: {}", all.lesions.len());
    // Keep the lesions at least as large as the second largest one.
    let cut = all.lesions[1].volume_ml;
    let kept = run(cut);
    let expected: Vec<_> = all.lesions.iter().filter(|l| l.volume_ml >= cut).map(|l| l.voxels).collect();
    assert!(expected.len() < all.lesions.len(), "some lesion must be smaller than the cut");
    assert_eq!(kept.lesions.iter().map(|l| l.voxels).collect::<Vec<_>>(), expected);
    let mut mask = all.mask.clone();
    ichseg::lesions::remove_small_lesions(&mut mask, ct.volume.spacing(), cut).unwrap();
    assert_eq!(kept.mask, mask);
    assert_eq!(kept.probability, all.probability, "the probabilities stay as the network made them");
    for bad in [f64::NAN, -1.0] {
        let e = load_error("unet_transpose.onnx", &SegmenterOptions { min_lesion_ml: Some(bad), ..Default::default() });
        assert!(e.contains("min_lesion_ml must be finite and >= 0"), "{e}");
    }
}

/// `fixture(name)` with `ichseg.segment.min_lesion_ml = ml` in its metadata, as `tuned.onnx`.
fn with_min_lesion_ml(name: &str, ml: &str) -> ichseg::Result<OnnxModel> {
    use prost::Message;
    let mut proto = tract_onnx::pb::ModelProto::decode(&*std::fs::read(fixture(name)).unwrap()).unwrap();
    proto
        .metadata_props
        .push(tract_onnx::pb::StringStringEntryProto { key: "ichseg.segment.min_lesion_ml".into(), value: ml.into() });
    OnnxModel::from_bytes(&proto.encode_to_vec(), "tuned.onnx")
}

#[test]
fn a_models_tuned_min_lesion_ml_applies_unless_the_caller_sets_one() {
    let ct = nifti::read(&fixture("ct_small.nii.gz")).unwrap();
    let run = |model: OnnxModel, min_lesion_ml| {
        let options = SegmenterOptions { threshold: 0.3, min_lesion_ml, ..Default::default() };
        let s = Segmenter::new(&engine(), model, &options).unwrap();
        let c = s.config().clone();
        (s.segment(&ct.volume).unwrap().lesions.len(), c.min_lesion_ml, c.min_lesion_ml_source)
    };
    let plain = || OnnxModel::load(&fixture("unet_transpose.onnx")).unwrap();
    let (all, ml, source) = run(plain(), None);
    assert_eq!((ml, source.as_str()), (0.0, "default"));
    let cut = run(plain(), Some(0.0));
    assert_eq!(cut.0, all);
    // a cut between the two largest lesions' volumes, so the model's filter keeps one lesion
    let lesions = segmenter("unet_transpose.onnx", &SegmenterOptions { threshold: 0.3, ..Default::default() })
        .unwrap()
        .segment(&ct.volume)
        .unwrap()
        .lesions;
    let between = (lesions[0].volume_ml + lesions[1].volume_ml) / 2.0;
    let tuned = || with_min_lesion_ml("unet_transpose.onnx", &between.to_string()).unwrap();
    assert_eq!(run(tuned(), None), (1, between, "model: tuned.onnx".to_string()));
    assert_eq!(run(tuned(), Some(0.0)), (all, 0.0, "option".to_string()), "the caller's 0 keeps every lesion");
    let e = with_min_lesion_ml("unet_transpose.onnx", "-1").unwrap_err().to_string();
    assert!(e.contains("ichseg.segment.min_lesion_ml"), "{e}");
}

fn load_error(name: &str, options: &SegmenterOptions) -> String {
    segmenter(name, options).unwrap_err().to_string()
}

fn with_model(model: ModelOverrides) -> SegmenterOptions {
    SegmenterOptions { model, ..Default::default() }
}

#[test]
fn bad_models_and_options_give_specific_errors() {
    let d = SegmenterOptions::default();
    assert!(load_error("not_a_model.onnx", &d).contains("not a valid ONNX file"));
    let rank = load_error("unet_badrank.onnx", &d);
    assert!(rank.contains("rank 4") && rank.contains("[N, 32, 32]"), "{rank}");
    assert!(load_error("missing.onnx", &d).contains("missing.onnx"));
    let ch = load_error("unet_transpose.onnx", &with_model(ModelOverrides { channels: Some(3), ..Default::default() }));
    assert!(ch.contains("channels 3 was requested but the model input is fixed at 1"), "{ch}");
    let size = load_error(
        "unet_transpose.onnx",
        &with_model(ModelOverrides { input_size: Some((32, 32)), ..Default::default() }),
    );
    assert!(size.contains("fixed at 64"), "{size}");
    let bleed =
        load_error("unet_transpose.onnx", &with_model(ModelOverrides { bleed_index: Some(2), ..Default::default() }));
    assert!(bleed.contains("bleed index 2 is out of range for 2 output classes"), "{bleed}");
    let sig =
        load_error("unet_resize.onnx", &with_model(ModelOverrides { bleed_index: Some(1), ..Default::default() }));
    assert!(sig.contains("single (sigmoid) logit"), "{sig}");
    for t in [f32::NAN, -0.1, 1.5] {
        let e = load_error("unet_transpose.onnx", &SegmenterOptions { threshold: t, ..Default::default() });
        assert!(e.contains("threshold"), "{e}");
    }
    let b = load_error("unet_transpose.onnx", &SegmenterOptions { batch: 0, ..Default::default() });
    assert!(b.contains("batch"), "{b}");
}

#[test]
fn run_network_checks_the_input_shape() {
    let seg = segmenter("unet_transpose.onnx", &SegmenterOptions::default()).unwrap();
    let err = seg.run_network(Array4::zeros((1, 1, 32, 64))).unwrap_err().to_string();
    assert!(err.contains("[1, 1, 32, 64]") && err.contains("[1, 1, 64, 64]"), "{err}");
}

#[test]
fn inspect_lists_inputs_metadata_and_taps() {
    let model = OnnxModel::load(&fixture("unet_transpose.onnx")).unwrap();
    assert_eq!(model.inputs[0].shape_text(), "[N, 1, 64, 64]");
    assert_eq!(model.metadata.input_size, Some((64, 64)));
    let taps = model.tap_candidates(1, 64, 64).unwrap();
    let strides: std::collections::BTreeSet<usize> = taps.iter().map(|t| t.stride).collect();
    assert_eq!(strides.into_iter().collect::<Vec<_>>(), vec![1, 2, 4], "{taps:?}");
    assert!(taps.iter().any(|t| t.op == "MaxPool") && taps.iter().any(|t| t.op == "Relu"));
}

#[test]
fn a_low_memory_engine_gives_the_same_segmentation() {
    let ct = nifti::read(&fixture("ct_small.nii.gz")).unwrap();
    // a batch that does not divide the slices: the low-memory segmenter pads the last one
    let slices = ct.volume.dims()[2];
    let batch = (2..slices).find(|b| !slices.is_multiple_of(*b)).unwrap();
    let run = |low_memory: bool| {
        let engine = Engine::new(&EngineOptions { threads: 2, low_memory, ..Default::default() }).unwrap();
        assert_eq!(engine.low_memory(), low_memory);
        assert_eq!(engine.cpu_kernels().ends_with(", low-memory"), low_memory && ichseg_cpu_kernels::enabled());
        let model = OnnxModel::load(&fixture("unet_transpose.onnx")).unwrap();
        let segmenter = Segmenter::new(&engine, model, &SegmenterOptions { batch, ..Default::default() }).unwrap();
        (segmenter.segment(&ct.volume).unwrap(), segmenter)
    };
    let ((normal, normal_segmenter), (low, low_segmenter)) = (run(false), run(true));
    assert_eq!(normal.mask, low.mask);
    let err = normal.probability.iter().zip(low.probability.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err < 1e-5, "{err}");
    // on the CPU both kept their one plan and freed the parsed graph: other batch sizes are
    // refused, clearly
    for segmenter in [normal_segmenter, low_segmenter] {
        let c = segmenter.config();
        let input = Array4::<f32>::zeros((batch + 1, c.channels, c.input_rows, c.input_cols));
        let err = segmenter.run_network(input).unwrap_err().to_string();
        assert!(err.contains(&format!("this model takes [{batch}, ")), "{err}");
        let err = segmenter.model().tap_candidates(1, 64, 64).unwrap_err().to_string();
        assert!(err.contains("graph was released"), "{err}");
    }
}
