//! Gradient graphs: a classifier's ONNX model extended, in standard ONNX ops only, with the
//! activations of its CAM taps and the gradients of one logit with respect to them. The backward
//! pass itself is written by the `ichseg-onnx-grad` crate (`crates/onnx-grad`, whose docs list
//! the outputs, the VJP of each op and their accuracy); this module reads the model, its
//! metadata and the caller's options, and hands the result back as a model libichseg runs.
//!
//! | output | tensor |
//! |---|---|
//! | 0 | the logits (the model's first output; other outputs are dropped) |
//! | `1 + 2 i` | activations `A_i` of tap `i` (the tap tensor itself) |
//! | `2 + 2 i` | `d logits[:, target] / d A_i`, named [`grad_name`]`(tap)` |
//!
//! Spatial sizes are fixed when the graph is built: they come from the model's input shape, else
//! its `ichseg.input_size` metadata, else [`GradientOptions::input_size`].
//!
//! ```
//! use ichseg::model::onnx_grad::{grad_name, GradientGraph, GradientOptions};
//! use ichseg::OnnxModel;
//! # fn main() -> ichseg::Result<()> {
//! let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/classifier/tiny_classifier.onnx");
//! let taps = vec!["/layer1/relu_1/Relu_output_0".to_string(), "/layer2/relu_1/Relu_output_0".to_string()];
//! let options = GradientOptions { target: 1, taps: taps.clone(), ..Default::default() };
//! let graph = GradientGraph::build(&std::fs::read(&path).unwrap(), "tiny_classifier.onnx", &options)?;
//! let model = graph.model("cam.onnx")?;
//! assert_eq!(model.outputs.len(), 5); // logits, then (activation, gradient) per tap
//! assert_eq!(model.outputs[2].name, grad_name(&taps[0]));
//! let _plan = model.plan([1, 3, 64, 64])?; // plans and runs like any other model
//! # Ok(()) }
//! ```

use super::OnnxModel;
use crate::error::{Error, Result};
pub use ichseg_onnx_grad::{grad_name, ConvVjp};
use prost::Message;
use std::collections::HashSet;
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

/// What to differentiate and how; see [`GradientGraph::build`].
#[derive(Debug, Clone, Default)]
pub struct GradientOptions {
    /// Index of the logit to differentiate (the bleed class).
    pub target: usize,
    /// Tap tensor names; empty means the tensors of the model's `ichseg.taps` metadata.
    pub taps: Vec<String>,
    /// `(rows, cols)` of the input, for models whose input shape and metadata do not fix it.
    pub input_size: Option<(usize, usize)>,
    /// Input channels, for models whose input shape does not fix them (default: metadata).
    pub channels: Option<usize>,
    pub conv_vjp: ConvVjp,
}

/// An augmented model: outputs logits, tap activations and gradients (see the module docs).
#[derive(Debug, Clone)]
pub struct GradientGraph {
    /// The encoded ONNX model.
    pub bytes: Vec<u8>,
    pub target: usize,
    /// Tap tensor names, in output order.
    pub taps: Vec<String>,
    /// The `[1, C, H, W]` input shape the graph's spatial sizes were fixed for (any batch runs).
    pub input_shape: [usize; 4],
}

impl GradientGraph {
    /// The one way to build a gradient graph: parses `model_bytes` (the classifier's ONNX file,
    /// `name` in messages), checks the target and taps, and writes out the backward pass.
    pub fn build(model_bytes: &[u8], name: &str, options: &GradientOptions) -> Result<Self> {
        Self::build_unnamed(model_bytes, options).map_err(|e| match e {
            Error::InvalidModel(m) => Error::InvalidModel(format!("{name}: {m}")),
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{name}: {m}")),
            other => other,
        })
    }

    fn build_unnamed(model_bytes: &[u8], options: &GradientOptions) -> Result<Self> {
        let mut proto = tract_onnx::onnx()
            .proto_model_for_read(&mut &*model_bytes)
            .map_err(|e| Error::InvalidModel(format!("not a valid ONNX file ({e})")))?;
        let graph = proto
            .graph
            .as_ref()
            .filter(|g| !g.node.is_empty() && !g.input.is_empty() && !g.output.is_empty())
            .ok_or_else(|| Error::InvalidModel("not a valid ONNX file (no graph, nodes, inputs or outputs)".into()))?;
        let metadata =
            super::ModelMetadata::parse(proto.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())))?;
        let opset = proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .unwrap_or(1);
        if opset < 11 {
            return Err(Error::InvalidModel(format!(
                "gradient graph: opset {opset} models are not supported (need opset 11 or later; re-export the model)"
            )));
        }
        let taps: Vec<String> = if options.taps.is_empty() {
            metadata.taps.iter().map(|(_, t)| t.clone()).collect()
        } else {
            options.taps.clone()
        };
        if taps.is_empty() {
            return Err(Error::arg(
                "gradient graph: no taps given and the model has no ichseg.taps metadata (name the tap tensors; `ichseg inspect` lists candidates)",
            ));
        }
        let input_shape = input_shape(graph, &metadata, options.input_size, options.channels)?;
        ichseg_onnx_grad::extend(&mut proto, input_shape, opset, options.conv_vjp, options.target, &taps).map_err(
            |e| match e {
                ichseg_onnx_grad::Error::InvalidModel(m) => Error::InvalidModel(m),
                ichseg_onnx_grad::Error::InvalidArgument(m) => Error::InvalidArgument(m),
            },
        )?;
        Ok(GradientGraph { bytes: proto.encode_to_vec(), target: options.target, taps, input_shape })
    }

    /// Output index of tap `i`'s activations.
    pub fn activation_output(i: usize) -> usize {
        1 + 2 * i
    }
    /// Output index of tap `i`'s gradients.
    pub fn gradient_output(i: usize) -> usize {
        2 + 2 * i
    }

    /// The graph as a model libichseg can plan and run; `name` labels it in messages.
    pub fn model(&self, name: &str) -> Result<OnnxModel> {
        OnnxModel::from_bytes(&self.bytes, name)
    }

    /// Writes the graph to `path` (atomically: nothing is left behind on failure).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::atomic::write_atomic(path, |w| w.write_all(&self.bytes).map_err(|e| Error::io(path, e)))
    }
}
/// `[1, C, H, W]` from the declared input shape, the metadata, or the caller.
fn input_shape(
    graph: &pb::GraphProto,
    metadata: &super::ModelMetadata,
    size: Option<(usize, usize)>,
    channels: Option<usize>,
) -> Result<[usize; 4]> {
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let input = graph
        .input
        .iter()
        .find(|i| !inits.contains(i.name.as_str()))
        .map(super::tensor_info)
        .ok_or_else(|| Error::InvalidModel("the model has no input".into()))?;
    if input.shape.as_ref().is_some_and(|s| s.len() != 4) {
        return Err(Error::InvalidModel(format!(
            "gradient graph: input {} has shape {}, expected [N, C, H, W]",
            input.name,
            input.shape_text()
        )));
    }
    if let (Some(fixed), Some(asked)) = (input.fixed_dim(1), channels) {
        if fixed != asked {
            return Err(Error::arg(format!(
                "gradient graph: {asked} input channels requested but input {} is fixed at {fixed}",
                input.name
            )));
        }
    }
    let channels = input.fixed_dim(1).or(channels).or(metadata.channels);
    let declared = input.fixed_dim(2).zip(input.fixed_dim(3));
    let (rows, cols) = size.or(declared).or(metadata.input_size).ok_or_else(|| {
        Error::arg(format!(
            "gradient graph: input {} has no fixed size and the model no ichseg.input_size: give the input size",
            input.name
        ))
    })?;
    let channels = channels.ok_or_else(|| {
        Error::arg(format!("gradient graph: input {} has no fixed channel count and no ichseg.channels", input.name))
    })?;
    Ok([1, channels, rows, cols])
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tap_and_garbage_are_clear_errors() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/classifier/tiny_classifier.onnx");
        let bytes = std::fs::read(path).unwrap();
        let build = |bytes: &[u8], taps: &[String]| {
            let options = GradientOptions { target: 1, taps: taps.to_vec(), ..Default::default() };
            GradientGraph::build(bytes, "tiny.onnx", &options).unwrap_err().to_string()
        };
        let err = build(&bytes, &["nope".into()]);
        assert!(err.contains("tiny.onnx: ") && err.contains("\"nope\" is not a tensor"), "{err}");
        let err = build(b"garbage", &["x".into()]);
        assert!(err.contains("tiny.onnx: not a valid ONNX"), "{err}");
        let err = build(&bytes, &[]);
        assert!(err.contains("no taps"), "{err}");
    }

    #[test]
    fn input_size_comes_from_the_model_metadata_or_the_caller() {
        use pb::tensor_shape_proto::dimension::Value as D;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/classifier/tiny_classifier.onnx");
        let mut proto = pb::ModelProto::decode(&*std::fs::read(path).unwrap()).unwrap();
        let input = &mut proto.graph.as_mut().unwrap().input[0];
        let Some(pb::type_proto::Value::TensorType(t)) = input.r#type.as_mut().and_then(|t| t.value.as_mut()) else {
            panic!("no tensor type")
        };
        for (d, name) in t.shape.as_mut().unwrap().dim.iter_mut().skip(2).zip(["H", "W"]) {
            d.value = Some(D::DimParam(name.into()));
        }
        let taps = vec!["/layer1/relu_1/Relu_output_0".to_string()];
        let options = GradientOptions { target: 1, taps, ..Default::default() };
        // ichseg.input_size = 64x64 fills in the free H and W
        assert_eq!(GradientGraph::build(&proto.encode_to_vec(), "m", &options).unwrap().input_shape, [1, 3, 64, 64]);
        proto.metadata_props.retain(|p| p.key != "ichseg.input_size");
        let bytes = proto.encode_to_vec();
        let err = GradientGraph::build(&bytes, "m", &options).unwrap_err().to_string();
        assert!(err.contains("give the input size"), "{err}");
        let sized = GradientOptions { input_size: Some((96, 80)), ..options };
        assert_eq!(GradientGraph::build(&bytes, "m", &sized).unwrap().input_shape, [1, 3, 96, 80]);
    }
}
