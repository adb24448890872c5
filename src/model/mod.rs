//! ONNX models: loading, their self-description, and where they run.

#[cfg(feature = "gpu")]
mod cuda_thread;
#[cfg(feature = "gpu")]
pub mod gpu;
#[cfg(any(feature = "gpu", test))]
mod gpu_rewrite;
pub mod metadata;
pub mod onnx_grad;
pub mod runtime;

use crate::error::{Error, Result};
pub use metadata::{ModelKind, ModelMetadata, PseudoDefaults};
pub use onnx_grad::{GradientGraph, GradientOptions};
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::InferenceModel;

/// One dimension of a tensor as the file declares it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    /// A named (symbolic) dimension such as a dynamic batch.
    Symbol(String),
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => write!(f, "{s}"),
            Dim::Unknown => write!(f, "?"),
        }
    }
}

/// Name, element type and shape of a graph input or output.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub elem_type: String,
    /// `None` when the file does not declare a shape.
    pub shape: Option<Vec<Dim>>,
}

impl TensorInfo {
    /// The shape as `[N, 1, 384, 384]`-style text.
    pub fn shape_text(&self) -> String {
        match &self.shape {
            Some(dims) => format!("[{}]", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
            None => "unknown".into(),
        }
    }
    /// The fixed size of dimension `i`, if declared.
    pub fn fixed_dim(&self, i: usize) -> Option<usize> {
        match self.shape.as_ref()?.get(i)? {
            Dim::Fixed(n) => Some(*n),
            _ => None,
        }
    }
}

/// A parsed ONNX model: the graph for tract plus what the file says about itself.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    pub(crate) graph: InferenceModel,
    /// Shown in reports: the file name, or the name given for an in-memory model.
    pub name: String,
    pub metadata: ModelMetadata,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub opset: Option<i64>,
    pub producer: String,
    /// `(op_type, first output tensor)` of every graph node, in file order.
    nodes: Vec<(String, String)>,
    /// The encoded ONNX file, for building derived graphs (gradient graphs).
    bytes: std::sync::Arc<Vec<u8>>,
    /// Whether `graph` was freed ([`OnnxModel::release_graph`]).
    graph_released: bool,
}

/// An intermediate feature map a CAM could tap: an activation-like tensor of rank 4.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TapCandidate {
    /// ONNX tensor name, as `ichseg.taps` and `--tap` expect it.
    pub tensor: String,
    /// The ONNX op that produces it.
    pub op: String,
    /// `[N, C, H, W]` for a single input image.
    pub shape: Vec<usize>,
    /// Input rows per feature-map row (1 = full resolution).
    pub stride: usize,
}

/// Ops whose outputs are natural CAM taps (block outputs, not convolutions mid-block).
const TAP_OPS: &[&str] = &["Relu", "Add", "Sum", "Concat", "MaxPool", "AveragePool", "Clip"];

impl OnnxModel {
    /// Loads an `.onnx` file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut model = Self::parse(&bytes, &name).map_err(|e| match e {
            Error::InvalidModel(m) => Error::InvalidModel(format!("{}: {m}", path.display())),
            other => other,
        })?;
        model.bytes = std::sync::Arc::new(bytes);
        Ok(model)
    }

    /// Parses a model held in memory; `name` only labels it in messages and reports.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self> {
        let mut model = Self::parse(bytes, name)?;
        model.bytes = std::sync::Arc::new(bytes.to_vec());
        Ok(model)
    }

    /// The model without its encoded file, which the callers attach once the decoded protobuf
    /// is gone: at most the file, the protobuf and the graph are held at once, each about the
    /// size of the weights.
    fn parse(bytes: &[u8], name: &str) -> Result<Self> {
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut &*bytes)
            .map_err(|e| Error::InvalidModel(format!("not a valid ONNX file ({e})")))?;
        let g = proto
            .graph
            .as_ref()
            .filter(|g| !g.node.is_empty() && !g.input.is_empty())
            .ok_or_else(|| Error::InvalidModel("not a valid ONNX file (no graph, nodes or inputs)".into()))?;
        let initializers: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<TensorInfo> =
            g.input.iter().filter(|i| !initializers.contains(i.name.as_str())).map(tensor_info).collect();
        let outputs = g.output.iter().map(tensor_info).collect();
        let metadata = ModelMetadata::parse(proto.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())))?;
        let opset = proto.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version);
        // tract indexes outputs by name without checking (a panic, found by fuzz/onnx_load)
        let known: std::collections::HashSet<&str> = g
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(String::as_str))
            .chain(g.input.iter().map(|i| i.name.as_str()))
            .chain(initializers.iter().copied())
            .collect();
        if let Some(o) = g.output.iter().find(|o| !known.contains(o.name.as_str())) {
            return Err(Error::InvalidModel(format!("graph output {:?} is produced by no node", o.name)));
        }
        // Any other panic of tract's on a malformed graph becomes an error, not a crash.
        let graph = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| onnx.model_for_proto_model(&proto)))
            .map_err(|_| {
                Error::InvalidModel("cannot translate the ONNX graph: tract failed on it (malformed graph)".into())
            })?
            .map_err(|e| Error::InvalidModel(format!("cannot translate the ONNX graph: {e:#}")))?;
        Ok(OnnxModel {
            graph,
            name: name.to_string(),
            metadata,
            inputs,
            outputs,
            opset,
            producer: format!("{} {}", proto.producer_name, proto.producer_version).trim().to_string(),
            nodes: g.node.iter().filter_map(|n| Some((n.op_type.clone(), n.output.first()?.clone()))).collect(),
            bytes: Default::default(),
            graph_released: false,
        })
    }

    /// The encoded ONNX model this was parsed from; empty after [`OnnxModel::release_source`].
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Frees the encoded file kept for building derived graphs (gradient graphs for CAMs), as
    /// large as the weights: a model that only runs forward does not need it.
    pub fn release_source(&mut self) {
        self.bytes = Default::default();
    }

    /// Frees the parsed graph, as large as the weights, once a caller holds every plan it will
    /// run (a segmenter on the CPU); later plans and tap lists are errors.
    pub(crate) fn release_graph(&mut self) {
        self.graph = InferenceModel::default();
        self.graph_released = true;
    }

    /// The parsed graph, unless [`OnnxModel::release_graph`] freed it.
    fn graph(&self) -> Result<&InferenceModel> {
        if self.graph_released {
            return Err(Error::InvalidModel(format!(
                "{}: its graph was released once its plan was built (a segmenter on the CPU keeps only its plan): load the model again",
                self.name
            )));
        }
        Ok(&self.graph)
    }

    /// The optimised tract plan libichseg runs for one f32 input of `shape`: tract's optimiser
    /// with our knobs ([`runtime::plan_knobs`]).
    pub fn plan(&self, shape: [usize; 4]) -> Result<std::sync::Arc<TypedRunnableModel>> {
        self.plan_with(shape, &Default::default())
    }

    /// [`OnnxModel::plan`] with these choices of our CPU kernels.
    pub(crate) fn plan_with(
        &self,
        shape: [usize; 4],
        kernels: &ichseg_cpu_kernels::RewriteOptions,
    ) -> Result<std::sync::Arc<TypedRunnableModel>> {
        let graph = self.graph()?;
        runtime::plan_knobs()
            .enter(|| {
                let mut typed = Self::declutter(graph, shape)?;
                if ichseg_cpu_kernels::enabled() {
                    ichseg_cpu_kernels::rewrite_with(&mut typed, kernels)?;
                }
                typed.into_optimized()?.into_runnable()
            })
            .map_err(|e| Error::InvalidModel(format!("{}: cannot build a plan for input {shape:?}: {e:#}", self.name)))
    }

    /// The graph typed for one f32 input of `shape` and decluttered: where the CPU and the GPU
    /// plans start from (call inside [`runtime::plan_knobs`]).
    #[cfg(feature = "gpu")]
    pub(crate) fn decluttered(&self, shape: [usize; 4]) -> TractResult<TypedModel> {
        Self::declutter(self.graph().map_err(|e| tract_onnx::tract_core::internal::format_err!("{e}"))?, shape)
    }

    fn declutter(graph: &InferenceModel, shape: [usize; 4]) -> TractResult<TypedModel> {
        graph.clone().with_input_fact(0, f32::fact(shape).into())?.into_typed()?.into_decluttered()
    }

    /// Rank-4 outputs of activation, residual, concatenation and pooling nodes, with their
    /// shapes for one `[1, channels, rows, cols]` input: the tensors a user can choose as taps.
    pub fn tap_candidates(&self, channels: usize, rows: usize, cols: usize) -> Result<Vec<TapCandidate>> {
        let typed = self
            .graph()?
            .clone()
            .with_input_fact(0, f32::fact([1, channels, rows, cols]).into())
            .and_then(|m| m.into_typed())
            .map_err(|e| Error::InvalidModel(format!("{}: cannot analyse shapes: {e:#}", self.name)))?;
        let mut shapes = std::collections::HashMap::new();
        for node in typed.nodes() {
            for ix in 0..node.outputs.len() {
                let outlet = OutletId::new(node.id, ix);
                if let (Some(label), Some(shape)) =
                    (typed.outlet_label(outlet), node.outputs[ix].fact.shape.as_concrete())
                {
                    shapes.insert(label.to_string(), shape.to_vec());
                }
            }
        }
        Ok(self
            .nodes
            .iter()
            .filter(|(op, _)| TAP_OPS.contains(&op.as_str()))
            .filter_map(|(op, tensor)| {
                let shape = shapes.get(tensor)?.clone();
                (shape.len() == 4 && shape[2] > 0).then(|| TapCandidate {
                    tensor: tensor.clone(),
                    op: op.clone(),
                    stride: rows / shape[2],
                    shape,
                })
            })
            .collect())
    }
}

fn tensor_info(v: &pb::ValueInfoProto) -> TensorInfo {
    use pb::tensor_shape_proto::dimension::Value as D;
    use pb::type_proto::Value;
    let tensor = v.r#type.as_ref().and_then(|t| t.value.as_ref()).map(|Value::TensorType(t)| t);
    let elem_type = tensor
        .and_then(|t| pb::tensor_proto::DataType::try_from(t.elem_type).ok())
        .map(|d| format!("{d:?}").to_lowercase())
        .unwrap_or_else(|| "unknown".into());
    let shape = tensor.and_then(|t| t.shape.as_ref()).map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(D::DimValue(n)) if *n > 0 => Dim::Fixed(*n as usize),
                Some(D::DimParam(p)) if !p.is_empty() => Dim::Symbol(p.clone()),
                _ => Dim::Unknown,
            })
            .collect()
    });
    TensorInfo { name: v.name.clone(), elem_type, shape }
}

/// The fact of a plan's first output (what classifiers and segmenters are checked by) and its
/// concrete shape, empty when a dimension is symbolic.
pub(crate) fn first_output(plan: &TypedRunnableModel) -> Result<(&TypedFact, Vec<usize>)> {
    let outlet = plan.model().output_outlets().map_err(|e| Error::InvalidModel(e.to_string()))?[0];
    let fact = plan.model().outlet_fact(outlet).map_err(|e| Error::InvalidModel(e.to_string()))?;
    Ok((fact, fact.shape.as_concrete().map(|s| s.to_vec()).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    /// fuzz/onnx_load found tract panicking on a graph output no node produces.
    #[test]
    fn an_output_no_node_produces_is_an_error_not_a_panic() {
        use prost::Message;
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/classifier/tiny_classifier.onnx");
        let mut proto = tract_onnx::pb::ModelProto::decode(&*std::fs::read(path).unwrap()).unwrap();
        proto.graph.as_mut().unwrap().output[0].name = "nope".into();
        let err = super::OnnxModel::from_bytes(&proto.encode_to_vec(), "bad").unwrap_err();
        assert!(err.to_string().contains("\"nope\" is produced by no node"), "{err}");
    }
}
