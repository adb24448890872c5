//! Our CPU kernels (crates/cpu-kernels) on the gradient graphs the library builds: every
//! convolution and every Relu gradient of a ResNet's graph becomes ours, and the rewritten graph
//! computes what tract's does.

use ichseg::model::onnx_grad::{GradientGraph, GradientOptions};
use tract_onnx::prelude::*;

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn count_ops(m: &TypedModel, name: &str) -> usize {
    m.nodes().iter().filter(|n| n.op().name() == name).count()
}

/// The gradient graph of `onnx` at `tap`, decluttered for `input`, and the same through our
/// pass; checks both compute the same (1e-5 of the output scale).
fn rewritten(onnx: &str, tap: &str, input: [usize; 4]) -> (TypedModel, TypedModel, usize) {
    let options = GradientOptions { target: 1, taps: vec![tap.to_string()], ..Default::default() };
    let graph = GradientGraph::build(&fixture(onnx), onnx, &options).unwrap().bytes;
    let model = tract_onnx::onnx().model_for_read(&mut &graph[..]).unwrap();
    let typed = model.with_input_fact(0, f32::fact(input).into()).unwrap().into_typed().unwrap();
    let typed = typed.into_decluttered().unwrap();
    let mut ours = typed.clone();
    let replaced = ichseg_cpu_kernels::rewrite(&mut ours).unwrap();
    let x: Tensor =
        tract_ndarray::Array4::from_shape_fn(input, |(n, c, y, x)| ((n + c * 3 + y * 5 + x) % 13) as f32 / 6.5 - 1.0)
            .into();
    let run = |m: &TypedModel| {
        m.clone().into_optimized().unwrap().into_runnable().unwrap().run(tvec!(x.clone().into())).unwrap()
    };
    for (a, b) in run(&typed).iter().zip(run(&ours).iter()) {
        let (a, b) = (a.to_plain_array_view::<f32>().unwrap(), b.to_plain_array_view::<f32>().unwrap());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(b.iter()).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err <= 1e-5 * scale.max(1.0), "error {err} of {scale}");
    }
    (typed, ours, replaced)
}

#[test]
fn resnet_bottleneck_gradient_graph_uses_ours() {
    let (tract, ours, _) =
        rewritten("grad/resnet_bottleneck_op13_fused.onnx", "/layer1/layer1.1/relu_2/Relu_output_0", [2, 3, 64, 64]);
    assert!(count_ops(&ours, "PointwiseConv") > 0 && count_ops(&ours, "WinogradConv") > 0);
    assert!(count_ops(&tract, "Conv") > 0 && count_ops(&ours, "Conv") == 0, "every convolution is ours");
    assert!(count_ops(&ours, "GemmConv") > 0, "the stem and the stride-2 convolutions");
    // the gradients of the strided 1x1 (downsample) convolutions: an EinSum whose output has the
    // unit axes of the zero insertion's Reshape (tract folds that in)
    let einsums = |m: &TypedModel| {
        m.nodes()
            .iter()
            .filter_map(|n| n.op_as::<tract_onnx::tract_core::ops::einsum::EinSum>())
            .map(|e| e.axes.to_string())
            .collect::<Vec<_>>()
    };
    assert!(einsums(&tract).iter().any(|a| a.starts_with("NIHW,OI->") && a.len() > "NIHW,OI->NOHW".len()));
    assert!(einsums(&ours).iter().all(|a| !a.starts_with("NIHW,OI->")), "{:?}", einsums(&ours));
    // and their zero insertions
    assert!(count_ops(&tract, "Pad") > 0 && count_ops(&ours, "Pad") == 0);
    assert_eq!(count_ops(&ours, "ConstantPad"), count_ops(&tract, "Pad"));
}

/// The gradient builder writes each Relu gradient in the form the kernels recognise
/// (ichseg_cpu_kernels::relu_grad::emit_onnx): all of them become ReluGrad.
#[test]
fn gradient_graph_relus_become_relu_grads() {
    let (tract, ours, _) =
        rewritten("grad/resnet_basic_op13_fused.onnx", "/layer1/layer1.0/relu_1/Relu_output_0", [2, 3, 64, 64]);
    let iffs = count_ops(&tract, "Iff");
    assert!(iffs > 0 && count_ops(&ours, "Iff") == 0 && count_ops(&ours, "ReluGrad") == iffs, "{iffs} Iff");
}
