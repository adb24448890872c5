//! The pseudo-labeller (METHOD.md job 1) end to end on the committed fixtures: determinism,
//! geometry, labels against predictions, each module's effect, CAM plumbing parity with
//! `ichseg::cam`, error paths and cancellation.

mod common;
use common::{engine, fixture, tiny};

use ichseg::cam;
use ichseg::cam::tap_cam;
use ichseg::crf::CrfParams;
use ichseg::io::nifti;
use ichseg::pipeline::tail::{TailOptions, TailStep};
use ichseg::preprocess::{model_input, resize_bilinear, InputSpec};
use ichseg::sca::{self, Aggregate, ScfParams};
use ichseg::ModelOverrides;
use ichseg::{
    CamMethod, Engine, EngineOptions, Error, OnnxModel, Preset, PseudoLabeler, PseudoOptions, Tuned, Volume, Window,
};
use ndarray::{s, Array2, Array3, ArrayView3, Axis, Ix3};
use tract_onnx::prelude::*;

const TINY_TAPS: [&str; 2] = ["/layer1/relu_1/Relu_output_0", "/layer2/relu_1/Relu_output_0"];
const RESNET_TAPS: [&str; 2] = ["/layer1/layer1.1/relu_1/Relu_output_0", "/layer2/layer2.1/relu_1/Relu_output_0"];

fn resnet() -> OnnxModel {
    OnnxModel::load(&fixture("grad/resnet_basic_op17_fused.onnx")).unwrap()
}
fn taps(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}
fn ct() -> Volume {
    nifti::read(&fixture("unet/ct_small.nii.gz")).unwrap().volume
}
/// Two classifiers (the tiny ResNet and the small torchvision-style one), taps named.
fn two_models(options: PseudoOptions) -> PseudoLabeler {
    let options = PseudoOptions { taps: vec![taps(&TINY_TAPS), taps(&RESNET_TAPS)], ..options };
    PseudoLabeler::new(&engine(), vec![tiny(), resnet()], &options).unwrap()
}
fn one_model(options: PseudoOptions) -> PseudoLabeler {
    let options = PseudoOptions { taps: vec![taps(&TINY_TAPS)], ..options };
    PseudoLabeler::new(&engine(), vec![tiny()], &options).unwrap()
}
fn max_abs_diff(a: &Array3<f32>, b: &Array3<f32>) -> f32 {
    a.iter().zip(b.iter()).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn deterministic_and_on_the_native_grid() {
    let volume = ct();
    let dim = volume.data().dim();
    let labeler = two_models(PseudoOptions::default());
    let labels = [true, true, false, true];
    let a = labeler.label(&volume, Some(&labels)).unwrap();
    let b = labeler.label(&volume, Some(&labels)).unwrap();
    assert_eq!(a.mask, b.mask);
    assert_eq!(a.fused, b.fused);
    assert_eq!(a.mask.dim(), dim);
    assert!(a.mask.iter().all(|&v| v <= 1));
    assert_eq!(a.positive, labels);
    assert_eq!(a.cams.len(), 2);
    assert_eq!(a.fused.len(), 2);
    for maps in a.cams.iter().chain([&a.fused]) {
        for m in maps {
            assert_eq!(m.dim(), dim);
            assert!(m.iter().all(|&v| (0.0..=1.0 + 1e-6).contains(&v)), "CAM values in [0, 1]");
        }
    }
    assert!(a.cams[0][0].iter().any(|&v| v > 0.0), "some activation");
    assert_eq!(a.slice_probabilities.len(), 2);
    assert!(a.slice_probabilities.iter().all(|p| p.len() == 4 && p.iter().all(|v| (0.0..=1.0).contains(v))));
    // the negative slice is empty, in the fused maps and the mask
    assert!(a.fused.iter().all(|m| m.index_axis(Axis(0), 2).iter().all(|&v| v == 0.0)));
    assert!(a.mask.index_axis(Axis(0), 2).iter().all(|&v| v == 0));
    assert!(a.mask.iter().any(|&v| v == 1), "a non-trivial mask on the positive slices");
    let cfg = labeler.configs();
    assert_eq!((cfg[0].input_rows, cfg[0].channels, cfg[0].classes, cfg[0].bleed_index), (64, 3, 2, 1));
    assert_eq!(cfg[1].window_level, 50.0, "no metadata: the default window");
}

#[test]
fn all_slices_labelled_negative_give_an_empty_mask() {
    let volume = ct();
    let r = two_models(PseudoOptions::default()).label(&volume, Some(&[false; 4])).unwrap();
    assert!(r.mask.iter().all(|&v| v == 0));
    assert!(r.fused.iter().all(|m| m.iter().all(|&v| v == 0.0)));
    assert!(r.cams[0][0].iter().any(|&v| v > 0.0), "the CAMs themselves are still there");
}

#[test]
fn predictions_decide_the_slices_without_labels() {
    let volume = ct();
    let r = two_models(PseudoOptions::default()).label(&volume, None).unwrap();
    let want: Vec<bool> =
        (0..4).map(|z| (r.slice_probabilities[0][z] + r.slice_probabilities[1][z]) / 2.0 >= 0.5).collect();
    assert_eq!(r.positive, want);
    let labelled = two_models(PseudoOptions::default()).label(&volume, Some(&want)).unwrap();
    assert_eq!(labelled.mask, r.mask, "labels equal to the prediction give the same mask");
}

#[test]
fn without_crf_the_mask_is_the_thresholded_fused_map() {
    let volume = ct();
    let labels = [true; 4];
    let plain = two_models(PseudoOptions { crf: None, ..Default::default() }).label(&volume, Some(&labels)).unwrap();
    let views: Vec<ArrayView3<f32>> = plain.fused.iter().map(|m| m.view()).collect();
    assert_eq!(plain.mask, sca::bla(&views, 0.2, Aggregate::Or).unwrap());
    // fused = SCF(BME(cams)) per tap
    for i in 0..2 {
        let ecam = sca::bme(&[plain.cams[0][i].view(), plain.cams[1][i].view()]).unwrap();
        let scam = sca::scf(ecam.view(), &labels, &ScfParams::default()).unwrap();
        assert!(max_abs_diff(&scam, &plain.fused[i]) < 1e-6);
    }
    let crf = two_models(PseudoOptions::default()).label(&volume, Some(&labels)).unwrap();
    assert_ne!(crf.mask, plain.mask, "the CRF moves some voxels");
    assert_eq!(crf.fused, plain.fused, "the CRF only touches the mask");
    let and = two_models(PseudoOptions { crf: None, aggregate: Aggregate::And, ..Default::default() })
        .label(&volume, Some(&labels))
        .unwrap();
    assert!(and.mask.iter().zip(plain.mask.iter()).all(|(&a, &o)| a <= o), "AND is inside OR");
    let none = two_models(PseudoOptions { crf: None, threshold: Tuned::Set(1.0), ..Default::default() })
        .label(&volume, Some(&labels))
        .unwrap();
    assert!(none.mask.iter().all(|&v| v == 0), "nothing exceeds 1");
}

#[test]
fn switching_modules_off_changes_the_result() {
    let volume = ct();
    let labels = [true; 4];
    let base = two_models(PseudoOptions { crf: None, ..Default::default() }).label(&volume, Some(&labels)).unwrap();
    let no_scf =
        two_models(PseudoOptions { crf: None, scf: None, ..Default::default() }).label(&volume, Some(&labels)).unwrap();
    assert_ne!(base.fused, no_scf.fused);
    assert_eq!(base.cams, no_scf.cams);
    for i in 0..2 {
        let ecam = sca::bme(&[no_scf.cams[0][i].view(), no_scf.cams[1][i].view()]).unwrap();
        assert!(max_abs_diff(&ecam, &no_scf.fused[i]) < 1e-6, "without SCF: the ensemble itself");
    }
    let layer = two_models(PseudoOptions { crf: None, cam: CamMethod::Layer, ..Default::default() })
        .label(&volume, Some(&labels))
        .unwrap();
    assert_ne!(layer.cams, base.cams);
    let single = one_model(PseudoOptions { crf: None, ..Default::default() }).label(&volume, Some(&labels)).unwrap();
    assert_eq!(single.cams[0], base.cams[0], "a classifier's CAMs do not depend on its partners");
    assert_ne!(single.fused, base.fused, "BME");
}

#[test]
fn batching_does_not_change_the_maps() {
    let volume = ct();
    let labels = [true; 4];
    let one = one_model(PseudoOptions { crf: None, ..Default::default() }).label(&volume, Some(&labels)).unwrap();
    let three =
        one_model(PseudoOptions { crf: None, batch: 3, ..Default::default() }).label(&volume, Some(&labels)).unwrap();
    for (a, b) in one.fused.iter().zip(&three.fused) {
        assert!(max_abs_diff(a, b) < 1e-4);
    }
    for (a, b) in one.slice_probabilities[0].iter().zip(&three.slice_probabilities[0]) {
        assert!((a - b).abs() < 1e-5);
    }
}

#[test]
fn threads_do_not_change_the_maps() {
    // The per-slice CAMs run in parallel on the engine's pool: the same maps as one thread.
    let volume = ct();
    let labels = [true; 4];
    let options = PseudoOptions { taps: vec![taps(&TINY_TAPS)], crf: None, batch: 4, ..Default::default() };
    let run = |threads| {
        let engine = Engine::new(&EngineOptions { threads, ..Default::default() }).unwrap();
        PseudoLabeler::new(&engine, vec![tiny()], &options).unwrap().label(&volume, Some(&labels)).unwrap()
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one.cams, two.cams);
    assert_eq!(one.mask, two.mask);
}

#[test]
fn the_tail_runs_its_steps_in_order_and_its_crf_is_the_per_slice_crf() {
    // The labeller builds the smoothness kernel once per volume and refines slices in rounds:
    // the same masks as `crf::refine` slice by slice, empty slices untouched.
    let volume = ct();
    let labeler = one_model(PseudoOptions { crf: None, ..Default::default() });
    let (nz, ny, nx) = volume.data().dim();
    let mask = Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
        u8::from(z != 1 && (y as f32 - ny as f32 / 2.0).hypot(x as f32 - nx as f32 / 3.0) < 9.0 + z as f32)
    });
    let params = CrfParams::default();
    let mut want = mask.clone();
    for z in [0, 2, 3] {
        let image = ichseg::preprocess::window_u8(volume.slice(z), Window::default());
        let refined = ichseg::crf::refine(image.view(), mask.index_axis(Axis(0), z), &params).unwrap();
        want.index_axis_mut(Axis(0), z).assign(&refined);
    }
    assert_ne!(want, mask, "the CRF changed nothing: a vacuous comparison");
    // A map that the threshold turns into `mask` exactly.
    let map = mask.mapv(f32::from);
    let positive = vec![true; nz];
    let mut tail = TailOptions {
        scf: None,
        threshold: 0.5,
        aggregate: Aggregate::Or,
        crf: Some(params),
        intracranial_margin_mm: None,
        max_hu: None,
        min_hu: None,
        min_lesion_ml: None,
    };
    let mut steps = vec![];
    let out = labeler
        .finish(&volume, vec![map.clone()], &positive, &tail, &mut |step, m| steps.push((step, m.clone())))
        .unwrap();
    assert_eq!(steps, vec![(TailStep::Bla, mask.clone()), (TailStep::Crf, want.clone())]);
    assert_eq!(out.mask, want);
    assert_eq!(out.fused, vec![map.clone()]);

    // Our three steps come last: bone cut, blood-density cut, filter; the filter drops every
    // lesion at 1000 mL.
    tail.max_hu = Some(-5000.0);
    tail.min_hu = Some(-6000.0);
    tail.min_lesion_ml = Some(1000.0);
    let mut order = vec![];
    let out = labeler.finish(&volume, vec![map.clone()], &positive, &tail, &mut |step, _| order.push(step)).unwrap();
    assert_eq!(order, [TailStep::Bla, TailStep::Crf, TailStep::BoneCut, TailStep::MinHuCut, TailStep::SmallLesions]);
    assert!(out.mask.iter().all(|&v| v == 0));

    // Bad settings and maps of another shape are errors before any work.
    tail.threshold = 1.5;
    assert!(labeler.finish(&volume, vec![map.clone()], &positive, &tail, &mut |_, _| {}).is_err());
    tail.threshold = 0.5;
    tail.min_hu = Some(f32::NAN);
    let err = labeler.finish(&volume, vec![map.clone()], &positive, &tail, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("min_hu must be a finite HU value"), "{err}");
    tail.min_hu = None;
    let small = Array3::<f32>::zeros((nz, ny, nx - 1));
    let err = labeler.finish(&volume, vec![small], &positive, &tail, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("the maps are"), "{err}");
}

#[test]
fn threads_do_not_change_the_crf() {
    // The CRF slices run in parallel too, in rounds of the pool's size: the same mask as one
    // thread, and the CRF changed it (the test would pass vacuously otherwise).
    let volume = ct();
    let labels = [true; 4];
    let run = |threads, crf| {
        let engine = Engine::new(&EngineOptions { threads, ..Default::default() }).unwrap();
        let options = PseudoOptions { taps: vec![taps(&TINY_TAPS)], crf, batch: 4, ..Default::default() };
        PseudoLabeler::new(&engine, vec![tiny()], &options).unwrap().label(&volume, Some(&labels)).unwrap().mask
    };
    let crf = Some(CrfParams::default());
    let (one, three) = (run(1, crf.clone()), run(3, crf));
    assert_eq!(one, three);
    assert_ne!(one, run(1, None));
}

/// The pipeline's maps equal `ichseg::cam` applied to the gradient graph's own outputs for the
/// same preprocessed slice: the plumbing (output order, batch indexing, resizes) is right.
#[test]
fn cam_parity_with_the_cam_module() {
    let volume = ct();
    let (ny, nx) = (volume.data().dim().1, volume.data().dim().2);
    let z = 2;
    for method in [CamMethod::Layer, CamMethod::Sf] {
        let labeler = one_model(PseudoOptions { crf: None, cam: method, batch: 2, ..Default::default() });
        let got = labeler.label(&volume, Some(&[true; 4])).unwrap();
        let graph = labeler.gradient_model(0).unwrap();
        let spec = InputSpec { window: Window::default(), rows: 64, cols: 64, channels: 3, normalize: None };
        let input = model_input(&volume, z, 1, 1, &spec);
        let plan = graph.plan([1, 3, 64, 64]).unwrap();
        let out = plan.run(tvec!(Tensor::from(input).into_tvalue())).unwrap();
        for i in 0..2 {
            let view = |k: usize| {
                out[k]
                    .to_plain_array_view::<f32>()
                    .unwrap()
                    .index_axis_move(Axis(0), 0)
                    .into_dimensionality::<Ix3>()
                    .unwrap()
                    .to_owned()
            };
            let (a, g) = (view(1 + 2 * i), view(2 + 2 * i));
            let at_input: Array2<f32> = match method {
                CamMethod::Layer => resize_bilinear(
                    cam::normalize_max(cam::layercam(a.view(), g.view()).unwrap().view()).view(),
                    64,
                    64,
                ),
                _ => cam::sfcam(a.view(), g.view(), 64, 64, i == 0, cam::DEFAULT_LAMBDA).unwrap(),
            };
            assert_eq!(tap_cam(method, a.view(), g.view(), (64, 64), i == 0, 2.0).unwrap(), at_input);
            let want = resize_bilinear(at_input.view(), ny, nx);
            let have = got.cams[0][i].slice(s![z, .., ..]);
            let err = want.iter().zip(have.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err < 1e-5, "{method:?} tap {i}: max difference {err}");
        }
    }
}

/// A copy of the tiny classifier carrying `ichseg.taps` (and `ichseg.deep_tap`) metadata.
fn tiny_with_tap_metadata() -> OnnxModel {
    tiny_with(&[], "tiny_meta.onnx")
}

/// The tiny classifier with its taps and `extra` metadata entries, named `name`.
fn tiny_with(extra: &[(&str, &str)], name: &str) -> OnnxModel {
    use prost::Message;
    let bytes = std::fs::read(fixture("classifier/tiny_classifier.onnx")).unwrap();
    let mut proto = tract_onnx::pb::ModelProto::decode(&*bytes).unwrap();
    let taps = [
        ("ichseg.taps", format!("layer1={},layer2={}", TINY_TAPS[0], TINY_TAPS[1])),
        ("ichseg.deep_tap", TINY_TAPS[1].to_string()),
    ];
    for (k, v) in taps.into_iter().chain(extra.iter().map(|(k, v)| (*k, v.to_string()))) {
        proto.metadata_props.push(tract_onnx::pb::StringStringEntryProto { key: k.into(), value: v });
    }
    OnnxModel::from_bytes(&proto.encode_to_vec(), name).unwrap()
}

/// The labeller's result on the test CT, every slice labelled bleeding, and its tuned settings.
fn label_every_slice(
    models: Vec<OnnxModel>,
    o: PseudoOptions,
) -> (ichseg::PseudoLabel, ichseg::pipeline::tuned::TunedSettings) {
    let l = PseudoLabeler::new(&engine(), models, &o).unwrap();
    (l.label(&ct(), Some(&[true; 4])).unwrap(), l.settings().clone())
}

#[test]
fn tuned_settings_come_from_the_classifiers_unless_set_or_the_paper_preset() {
    let label = label_every_slice;
    let plain = || tiny_with(&[], "plain.onnx");
    let tuned = || tiny_with(&[("ichseg.pseudo.threshold", "1"), ("ichseg.pseudo.max_hu", "off")], "tuned.onnx");
    let (paper, s) = label(vec![plain()], PseudoOptions::default());
    assert!(paper.mask.iter().any(|&v| v != 0), "the fixture needs a mask at TH 0.2");
    assert_eq!((s.threshold(), s.threshold.source.as_str()), (0.2, "default"));

    // TH 1 from the metadata: nothing exceeds it
    let (from_model, s) = label(vec![tuned()], PseudoOptions::default());
    assert!(from_model.mask.iter().all(|&v| v == 0), "the model's threshold applies");
    assert_eq!((s.threshold(), s.threshold.source.as_str()), (1.0, "model: tuned.onnx"));
    assert_eq!((s.max_hu.value, s.max_hu.source.as_str()), (None, "model: tuned.onnx"));
    assert_eq!(s.min_lesion_ml.source, "default");

    // the caller's value wins; the paper preset ignores the metadata
    let (set, s) = label(vec![tuned()], PseudoOptions { threshold: Tuned::Set(0.2), ..Default::default() });
    assert_eq!((set.mask.clone(), s.threshold.source.as_str()), (paper.mask.clone(), "option"));
    let (preset, s) = label(vec![tuned()], PseudoOptions { preset: Preset::Paper, ..Default::default() });
    assert_eq!(preset.mask, paper.mask);
    assert_eq!((s.threshold.source.as_str(), s.preset), ("default", Preset::Paper));

    // two classifiers that disagree must be settled by the caller
    let other = tiny_with(&[("ichseg.pseudo.threshold", "0.5")], "other.onnx");
    let err = PseudoLabeler::new(&engine(), vec![tuned(), other], &PseudoOptions::default()).unwrap_err().to_string();
    assert!(err.contains("tuned.onnx says 1") && err.contains("other.onnx says 0.5"), "{err}");
}

#[test]
fn the_crf_settings_come_from_the_classifiers_unless_the_caller_sets_them() {
    let label = |models, o| {
        let (r, settings) = label_every_slice(models, o);
        (r.mask, settings)
    };
    let (c, w) = (0.55_f32, 40.0_f32);
    let crf = || {
        let (c, w) = (c.to_string(), w.to_string());
        tiny_with(&[("ichseg.pseudo.crf_confidence", &c), ("ichseg.pseudo.crf_bilateral_compat", &w)], "crf.onnx")
    };
    let plain = || tiny_with(&[], "plain.onnx");
    let (default, _) = label(vec![plain()], PseudoOptions::default());
    let tuned = PseudoOptions {
        crf: Some(CrfParams { label_confidence: c, bilateral_compat: w, ..Default::default() }),
        ..Default::default()
    };
    // a value changed in `crf` is the caller's
    let (changed, s) = label(vec![plain()], tuned.clone());
    assert_ne!(changed, default, "the fixture needs a CRF setting that changes the mask");
    assert_eq!((s.crf_confidence.value, s.crf_confidence.source.as_str()), (Some(c), "option"));

    // the metadata's settings apply: the same mask, the model named as their source
    let (from_model, s) = label(vec![crf()], PseudoOptions::default());
    assert_eq!(from_model, changed);
    assert_eq!((s.crf_confidence.value, s.crf_confidence.source.as_str()), (Some(c), "model: crf.onnx"));
    assert_eq!((s.crf_bilateral_compat.value, s.crf_bilateral_compat.source.as_str()), (Some(w), "model: crf.onnx"));

    // METHOD.md's values set explicitly, or the paper preset, win over the metadata
    let explicit =
        PseudoOptions { crf_confidence: Tuned::Set(0.7), crf_bilateral_compat: Tuned::Set(10.0), ..Default::default() };
    let (set, s) = label(vec![crf()], explicit);
    assert_eq!((set, s.crf_confidence.source.as_str()), (default.clone(), "option"));
    let (paper, s) = label(vec![crf()], PseudoOptions { preset: Preset::Paper, ..Default::default() });
    assert_eq!((paper, s.crf_bilateral_compat.source.as_str()), (default, "default"));

    // an explicit value out of range is refused when the labeller is made
    let bad = PseudoOptions { crf_confidence: Tuned::Set(1.0), ..Default::default() };
    let err = PseudoLabeler::new(&engine(), vec![plain()], &bad).unwrap_err().to_string();
    assert!(err.contains("label_confidence must be in (0, 1)"), "{err}");
}

#[test]
fn taps_come_from_metadata_and_grad_cam_uses_the_deep_tap() {
    let volume = ct();
    let labels = [true; 4];
    let options = PseudoOptions { crf: None, ..Default::default() };
    let meta = PseudoLabeler::new(&engine(), vec![tiny_with_tap_metadata()], &options).unwrap();
    assert_eq!(meta.configs()[0].layers, ["layer1", "layer2"]);
    let explicit = one_model(options.clone());
    assert_eq!(
        meta.label(&volume, Some(&labels)).unwrap().fused,
        explicit.label(&volume, Some(&labels)).unwrap().fused
    );
    let grad = PseudoLabeler::new(
        &engine(),
        vec![tiny_with_tap_metadata()],
        &PseudoOptions { cam: CamMethod::Grad, ..options.clone() },
    )
    .unwrap();
    assert_eq!(grad.configs()[0].taps, [TINY_TAPS[1]]);
    let r = grad.label(&volume, Some(&labels)).unwrap();
    assert_eq!(r.fused.len(), 1);
    // without metadata, Grad-CAM needs a named tap
    let err = PseudoLabeler::new(&engine(), vec![tiny()], &PseudoOptions { cam: CamMethod::Grad, ..options })
        .unwrap_err()
        .to_string();
    assert!(err.contains("deep_tap"), "{err}");
}

#[test]
fn progress_counts_every_step_and_can_cancel() {
    let volume = ct();
    let labeler = two_models(PseudoOptions { batch: 3, ..Default::default() });
    let mut seen = vec![];
    labeler
        .label_with_progress(&volume, Some(&[true; 4]), &mut |p| {
            seen.push((p.done, p.total));
            true
        })
        .unwrap();
    // two classifiers x (3 + 1 slices), then the 4 CRF slices: the empty ones at once, the
    // others in rounds of the engine's 2 threads
    assert_eq!(seen[..4], [(3, 12), (4, 12), (7, 12), (8, 12)]);
    let crf = &seen[4..];
    assert!((2..=3).contains(&crf.len()), "{seen:?}");
    assert!(crf.windows(2).all(|w| w[0].0 < w[1].0) && crf.iter().all(|&(_, t)| t == 12), "{seen:?}");
    assert_eq!(crf.last(), Some(&(12, 12)));
    let mut calls = 0;
    let err = labeler
        .label_with_progress(&volume, None, &mut |_| {
            calls += 1;
            false
        })
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert_eq!(calls, 1);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let e = engine();
    let opts = PseudoOptions { taps: vec![taps(&TINY_TAPS)], ..Default::default() };
    let err = PseudoLabeler::new(&e, vec![], &PseudoOptions::default()).unwrap_err().to_string();
    assert!(err.contains("at least one classifier"), "{err}");

    let labeler = PseudoLabeler::new(&e, vec![tiny()], &opts).unwrap();
    let err = labeler.label(&ct(), Some(&[true; 3])).unwrap_err().to_string();
    assert!(err.contains("3 slice label(s) given for a volume of 4"), "{err}");

    let err = OnnxModel::from_bytes(b"garbage", "garbage.onnx").unwrap_err().to_string();
    assert!(err.contains("not a valid ONNX"), "{err}");
    let err = PseudoLabeler::from_paths(&e, &[fixture("unet/not_a_model.onnx")], &opts).unwrap_err().to_string();
    assert!(err.contains("not_a_model.onnx"), "{err}");

    let unet = OnnxModel::load(&fixture("unet/unet_transpose.onnx")).unwrap();
    let err = PseudoLabeler::new(&e, vec![unet], &opts).unwrap_err();
    assert!(matches!(err, Error::InvalidModel(_)) && err.to_string().contains("segmenter"), "{err}");

    let unknown = PseudoOptions { taps: vec![vec!["nope".into()]], ..Default::default() };
    let err = PseudoLabeler::new(&e, vec![tiny()], &unknown).unwrap_err().to_string();
    assert!(err.contains("\"nope\"") && err.contains("tiny_classifier.onnx"), "{err}");

    let err = PseudoLabeler::new(&e, vec![tiny()], &PseudoOptions::default()).unwrap_err().to_string();
    assert!(err.contains("no ichseg.taps"), "{err}");

    let uneven = PseudoOptions { taps: vec![taps(&TINY_TAPS), taps(&RESNET_TAPS[..1])], ..Default::default() };
    let err = PseudoLabeler::new(&e, vec![tiny(), resnet()], &uneven).unwrap_err().to_string();
    assert!(err.contains("has 1 tap(s) but classifier 0"), "{err}");

    let too_many = PseudoOptions { taps: vec![vec![], vec![]], ..Default::default() };
    assert!(PseudoLabeler::new(&e, vec![tiny()], &too_many).unwrap_err().to_string().contains("tap list"));
    for bad in [
        PseudoOptions { threshold: Tuned::Set(1.5), ..opts.clone() },
        PseudoOptions { threshold: Tuned::Off, ..opts.clone() },
        PseudoOptions { batch: 0, ..opts.clone() },
        PseudoOptions { lambda: f32::NAN, ..opts.clone() },
        PseudoOptions { scf: Some(ScfParams { c: 2, w: -1.0 }), ..opts.clone() },
        PseudoOptions { model: ModelOverrides { input_size: Some((32, 32)), ..opts.model }, ..opts.clone() },
        PseudoOptions { max_hu: Tuned::Set(f32::NAN), ..opts.clone() },
        PseudoOptions { max_hu: Tuned::Set(f32::INFINITY), ..opts.clone() },
        PseudoOptions { min_lesion_ml: Tuned::Set(f64::NAN), ..opts.clone() },
        PseudoOptions { min_lesion_ml: Tuned::Set(-0.5), ..opts.clone() },
        PseudoOptions { intracranial_margin_mm: Tuned::Set(-1.0), ..opts.clone() },
    ] {
        assert!(PseudoLabeler::new(&e, vec![tiny()], &bad).is_err(), "{bad:?}");
    }

    // NaN voxels never reach the labeller: a volume refuses them
    let mut hu = vec![40.0f32; 8 * 8 * 2];
    hu[9] = f32::NAN;
    assert!(matches!(Volume::from_hu(hu, [8, 8, 2], [1.0; 3]), Err(Error::NonFiniteVoxels { .. })));
}

/// The fixture's volume, its default pseudo label with every slice positive, and the CT values
/// under that mask, sorted: cuts taken from them are sure to remove some voxels and keep some.
fn labelled_ct() -> (Volume, ichseg::PseudoLabel, Vec<f32>) {
    let volume = ct();
    let full = two_models(PseudoOptions::default()).label(&volume, Some(&[true; 4])).unwrap();
    let mut under: Vec<f32> =
        full.mask.iter().zip(volume.data().iter()).filter(|(&m, _)| m != 0).map(|(_, &hu)| hu).collect();
    assert!(under.len() > 10, "the fixture's mask has too few voxels to test the cut");
    under.sort_by(f32::total_cmp);
    (volume, full, under)
}

#[test]
fn bone_cut_drops_the_voxels_above_max_hu_from_the_final_mask() {
    let (volume, full, under) = labelled_ct();
    let labels = [true; 4];
    // a cut at the median CT value under the mask
    let max_hu = under[under.len() / 2];
    let cut = two_models(PseudoOptions { max_hu: Tuned::Set(max_hu), ..Default::default() })
        .label(&volume, Some(&labels))
        .unwrap();
    let want = Array3::from_shape_fn(full.mask.dim(), |i| u8::from(full.mask[i] != 0 && volume.data()[i] <= max_hu));
    assert_eq!(cut.mask, want, "the cut is a voxel-wise AND with HU <= max_hu, after the CRF");
    let (kept, dropped) =
        (cut.mask.iter().filter(|&&v| v != 0).count(), under.len() - want.iter().filter(|&&v| v != 0).count());
    assert!(kept > 0 && dropped > 0, "kept {kept}, dropped {dropped}");
    assert_eq!(cut.fused, full.fused, "the cut only touches the mask");

    let mut mask = full.mask.clone();
    ichseg::pipeline::pseudo::bone_cut(&volume, &mut mask, max_hu).unwrap();
    assert_eq!(mask, want);
    let err = ichseg::pipeline::pseudo::bone_cut(&volume, &mut mask, f32::NAN).unwrap_err().to_string();
    assert!(err.contains("finite"), "{err}");
    let mut wrong = Array3::<u8>::zeros((1, 2, 3));
    let err = ichseg::pipeline::pseudo::bone_cut(&volume, &mut wrong, 100.0).unwrap_err().to_string();
    assert!(err.contains("[1, 2, 3]"), "{err}");
}

#[test]
fn min_hu_cut_drops_the_voxels_below_min_hu_after_the_bone_cut() {
    let (volume, full, under) = labelled_ct();
    let labels = [true; 4];
    // cuts at the lower and upper quartile under the mask: with both, a window of HU
    let (min_hu, max_hu) = (under[under.len() / 4], under[3 * under.len() / 4]);
    let options = PseudoOptions { min_hu: Tuned::Set(min_hu), max_hu: Tuned::Set(max_hu), ..Default::default() };
    let cut = two_models(options).label(&volume, Some(&labels)).unwrap();
    let inside = |i: (usize, usize, usize)| (min_hu..=max_hu).contains(&volume.data()[i]);
    let want = Array3::from_shape_fn(full.mask.dim(), |i| u8::from(full.mask[i] != 0 && inside(i)));
    assert_eq!(cut.mask, want, "the two cuts keep the voxels with min_hu <= HU <= max_hu, after the CRF");
    let kept = cut.mask.iter().filter(|&&v| v != 0).count();
    let (below, above) =
        (under.iter().filter(|&&hu| hu < min_hu).count(), under.iter().filter(|&&hu| hu > max_hu).count());
    assert!(kept > 0 && below > 0 && above > 0, "kept {kept}, {below} below and {above} above the window");
    assert_eq!(cut.fused, full.fused, "the cut only touches the mask");

    let mut mask = full.mask.clone();
    ichseg::pipeline::pseudo::min_hu_cut(&volume, &mut mask, min_hu).unwrap();
    let want = Array3::from_shape_fn(full.mask.dim(), |i| u8::from(full.mask[i] != 0 && volume.data()[i] >= min_hu));
    assert_eq!(mask, want);
    let err = ichseg::pipeline::pseudo::min_hu_cut(&volume, &mut mask, f32::NEG_INFINITY).unwrap_err().to_string();
    assert!(err.contains("min_hu must be a finite HU value"), "{err}");
    let mut wrong = Array3::<u8>::zeros((1, 2, 3));
    let err = ichseg::pipeline::pseudo::min_hu_cut(&volume, &mut wrong, 40.0).unwrap_err().to_string();
    assert!(err.contains("blood-density cut") && err.contains("[1, 2, 3]"), "{err}");
}

#[test]
fn min_lesion_ml_drops_small_lesions_from_the_final_mask_after_the_bone_cut() {
    let volume = ct();
    let labels = [true; 4];
    let base = PseudoOptions { max_hu: Tuned::Set(60.0), ..Default::default() };
    let full = two_models(base.clone()).label(&volume, Some(&labels)).unwrap();
    let lesions = ichseg::lesions::find_lesions(full.mask.view(), volume.spacing(), &volume.affine());
    assert!(lesions.len() >= 2, "the fixture's mask needs lesions of several sizes: {}", lesions.len());
    let cut = lesions[0].volume_ml; // keeps only the largest lesion(s)
    let filtered =
        two_models(PseudoOptions { min_lesion_ml: Tuned::Set(cut), ..base }).label(&volume, Some(&labels)).unwrap();
    let mut want = full.mask.clone();
    let removed = ichseg::lesions::remove_small_lesions(&mut want, volume.spacing(), cut).unwrap();
    assert!(removed > 0);
    assert_eq!(filtered.mask, want);
    assert_eq!(filtered.fused, full.fused, "the filter only touches the mask");
}

#[test]
fn a_classifier_whose_encoded_file_was_released_is_refused_with_the_reason() {
    let mut model = tiny();
    model.release_source();
    let options = PseudoOptions { taps: vec![taps(&TINY_TAPS)], ..Default::default() };
    let err = PseudoLabeler::new(&engine(), vec![model], &options).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)) && err.to_string().contains("release_source"), "{err}");
}
