//! `ichseg cam-graph`: writes a gradient graph that plans and runs, and fails cleanly (message,
//! no output file) on a bad tap or target.

mod common;
use common::*;

use std::path::PathBuf;

fn grad(name: &str) -> PathBuf {
    fixture("grad").join(name)
}
const L1: &str = "/layer1/layer1.1/relu_1/Relu_output_0";
const L2: &str = "/layer2/layer2.1/relu_1/Relu_output_0";

#[test]
fn writes_a_runnable_gradient_graph() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cam.onnx");
    let model = grad("resnet_basic_op17_bn.onnx");
    let o = ichseg(&["cam-graph", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--tap", L1, "--tap", L2]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("target logit 1") && text.contains(&format!("output 4  ichseg.grad:{L2}")), "{text}");
    let g = ichseg::OnnxModel::load(&out).unwrap();
    let names: Vec<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["logits", L1, &format!("ichseg.grad:{L1}"), L2, &format!("ichseg.grad:{L2}")]);
    assert_eq!(g.outputs[2].shape_text(), "[N, 4, 16, 16]");
    assert_eq!(g.metadata.raw["ichseg.grad_taps"], format!("{L1},{L2}"));
    g.plan([2, 3, 64, 64]).unwrap();
}

#[test]
fn bad_tap_or_target_fails_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cam.onnx");
    let model = grad("resnet_basic_op17_bn.onnx");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    for (args, message) in [
        (vec!["--tap", "nope"], "\"nope\" is not a tensor of the model"),
        (vec!["--tap", L1, "--target", "5"], "target logit 5 is out of range"),
        (vec![], "no taps given"),
    ] {
        let mut all = vec!["cam-graph", m, "-o", o];
        all.extend(args);
        let r = ichseg(&all);
        assert!(!r.status.success());
        assert!(stderr(&r).contains(message), "{}", stderr(&r));
        assert!(!out.exists());
    }
    let erf = grad("unsupported_erf.onnx");
    let r = ichseg(&["cam-graph", erf.to_str().unwrap(), "-o", o, "--tap", "/relu/Relu_output_0"]);
    assert!(stderr(&r).contains("op Erf"), "{}", stderr(&r));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing half-written");
}
