//! Gradient graphs: a classifier's ONNX model extended, in standard ONNX ops only, with the
//! activations of its CAM taps and the gradients of one logit with respect to them.
//!
//! tract has no automatic differentiation, so the backward pass is written out as ONNX: starting
//! from a one-hot seed on the target logit, the graph is walked backwards to the taps and each
//! node on a tap-to-logit path gets its vector-Jacobian product (VJP) as a few plain nodes. The
//! result is an ordinary ONNX model (tested on tract's CPU plans and on onnxruntime) that
//! returns in one pass:
//!
//! | output | tensor |
//! |---|---|
//! | 0 | the logits (the model's first output; other outputs are dropped) |
//! | `1 + 2 i` | activations `A_i` of tap `i` (the tap tensor itself) |
//! | `2 + 2 i` | `d logits[:, target] / d A_i`, named [`grad_name`]`(tap)` |
//!
//! Every image of a batch gets its own gradient (the seed is the target column of every row),
//! and the batch dimension stays dynamic. Spatial sizes are fixed when the graph is built: they
//! come from the model's input shape, else its `ichseg.input_size` metadata, else
//! the caller.
//!
//! VJPs, for the ops of torchvision-style ResNets, DenseNets and VGGs (`g` is the gradient
//! arriving at a node's output):
//! - `Conv` (any strides, pads, `auto_pad`, dilations, groups): `g` with `stride - 1` zeros
//!   inserted between elements (Reshape + Pad), then a stride-1 `Conv` with the transposed,
//!   spatially flipped kernel (computed once here), padded or cropped back to the input size.
//!   [`ConvVjp::ConvTranspose`] writes one `ConvTranspose` instead.
//! - `Relu`, `LeakyRelu`, `Clip`, `Sigmoid`, `Tanh`: masks (`Greater` + `Where`) or products.
//! - `Add`, `Sub`, `Mul`, `Div`, `Sum`: the gradient to each operand on the path, summed over
//!   broadcast axes (`ReduceSum`) where it was broadcast.
//! - `BatchNormalization` (inference mode): `g * scale / sqrt(var + eps)` per channel.
//! - `GlobalAveragePool`, `ReduceMean`: `Expand` to the input shape, divided by the count.
//! - `AveragePool`: `g / count` spread over each window (a depthwise `Conv` VJP with a kernel of
//!   ones); `count_include_pad` and `ceil_mode` honoured.
//! - `MaxPool`: index-free: the windows are gathered (Pad with -inf, one strided `Slice` per
//!   kernel offset, `Concat`), `ArgMax` picks the first maximum of each window (PyTorch's rule
//!   for ties), `Where` routes `g` there, and a one-hot depthwise `Conv` VJP scatters it back.
//! - `Gemm` (`transA`, `transB`, `alpha`, `beta`), `MatMul` (2-D weights): `MatMul` with the
//!   transposed operand.
//! - `Concat`: a `Slice` per input; `Reshape`, `Flatten`, `Squeeze`, `Unsqueeze`: `Reshape` to
//!   `Shape(input)`; `Transpose`: the inverse permutation; `Pad` (constant): a `Slice`;
//!   `Identity`, `Dropout`: pass-through.
//!
//! Where a tensor feeds several nodes, the gradients are summed. Only nodes between a tap and
//! the logits get a VJP, so the stem before the earliest tap may hold any op; an op without a
//! VJP on such a path is an [`Error::InvalidModel`] naming the op and the node.
//!
//! Accuracy: the gradients are checked against PyTorch autograd, on tract and onnxruntime, by
//! `tests/onnx_grad.rs`; the measured agreement, and why a ReLU network's gradients can differ
//! between engines near a kink, are in docs/RESULTS.md (Gradient graphs).
//!
//! The crate knows ONNX protobufs and tract's shape analysis, nothing of the library: the library
//! (`ichseg::model::onnx_grad`) reads the model, its metadata and the caller's options, and calls
//! [`extend`].

use pb::attribute_proto::AttributeType;
use pb::tensor_proto::DataType;
use pb::{AttributeProto, NodeProto, TensorProto};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use tract_onnx::pb;
use tract_onnx::prelude::*;

mod rules;

/// Why a gradient graph cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The model: an op without a VJP on a tap-to-logit path, shapes tract cannot infer, ...
    InvalidModel(String),
    /// The request: a tap that is not a tensor, given twice, not reaching the logits, ...
    InvalidArgument(String),
}

impl Error {
    fn arg(message: impl Into<String>) -> Error {
        Error::InvalidArgument(message.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidModel(m) | Error::InvalidArgument(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

type Result<T> = std::result::Result<T, Error>;

/// The name of the gradient output for tap tensor `tap`.
pub fn grad_name(tap: &str) -> String {
    format!("ichseg.grad:{tap}")
}

/// How the input gradient of a convolution (and of the pools, which reuse it) is written.
/// Both give the same gradients (to float32 rounding) on tract and onnxruntime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvVjp {
    /// Zero insertion (Reshape + Pad) for strides, then a stride-1 `Conv` with the transposed,
    /// flipped kernel: only the ops every engine runs for the forward pass.
    #[default]
    ZeroInsert,
    /// One `ConvTranspose` with the forward kernel: no multiplications by inserted zeros, somewhat
    /// faster on tract's CPU for a ResNet34 (docs/BENCHMARKS.md).
    ConvTranspose,
}

/// Extends `proto` in place into the gradient graph of logit `target` with respect to `taps`
/// (see the crate docs), its spatial sizes fixed for an `input` of `[1, C, H, W]` (any batch
/// runs); `opset` is the model's default-domain opset. Outputs become the logits, then the
/// activation and the gradient of each tap; the metadata records the target and the taps.
pub fn extend(
    proto: &mut pb::ModelProto,
    input: [usize; 4],
    opset: i64,
    conv_vjp: ConvVjp,
    target: usize,
    taps: &[String],
) -> Result<()> {
    let shapes = static_shapes(proto, input)?;
    let graph = proto.graph.as_mut().ok_or_else(|| Error::InvalidModel("the model has no graph".into()))?;
    if graph.output.is_empty() {
        return Err(Error::InvalidModel("the model has no outputs".into()));
    }
    let built = Builder::new(graph, &shapes, opset, conv_vjp)?.run(target, taps)?;
    graph.node.extend(built.nodes);
    graph.initializer.extend(built.initializers);
    let batch = graph.input.iter().find(|i| !built.initializer_names.contains(&i.name)).and_then(batch_dim);
    let logits = graph.output[0].clone();
    graph.output = vec![logits];
    for (tap, grad) in taps.iter().zip(&built.tap_grads) {
        let shape = shapes.get(tap).cloned();
        graph.output.push(value_info(tap, shape.clone(), batch.clone()));
        graph.output.push(value_info(grad, shape, batch.clone()));
    }
    for (key, value) in [("ichseg.grad_target", target.to_string()), ("ichseg.grad_taps", taps.join(","))] {
        proto.metadata_props.retain(|p| p.key != key);
        proto.metadata_props.push(pb::StringStringEntryProto { key: key.into(), value });
    }
    Ok(())
}

/// The first input's batch dimension, to declare on the new outputs.
fn batch_dim(v: &pb::ValueInfoProto) -> Option<pb::tensor_shape_proto::Dimension> {
    let pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    t.shape.as_ref()?.dim.first().cloned()
}

fn value_info(
    name: &str,
    shape: Option<Vec<usize>>,
    batch: Option<pb::tensor_shape_proto::Dimension>,
) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value as D, Dimension};
    let shape = shape.map(|s| pb::TensorShapeProto {
        dim: s
            .iter()
            .enumerate()
            .map(|(i, &d)| match (i, &batch) {
                (0, Some(b)) => b.clone(),
                _ => Dimension { value: Some(D::DimValue(d as i64)), ..Default::default() },
            })
            .collect(),
    });
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
/// Shapes of every named tensor for a `[1, C, H, W]` input, from tract's shape analysis.
fn static_shapes(proto: &pb::ModelProto, input: [usize; 4]) -> Result<HashMap<String, Vec<usize>>> {
    let fail =
        |e: TractError| Error::InvalidModel(format!("gradient graph: cannot analyse shapes for {input:?}: {e:#}"));
    let model = tract_onnx::onnx().model_for_proto_model(proto).map_err(fail)?;
    let typed = model.with_input_fact(0, f32::fact(input).into()).and_then(|m| m.into_typed()).map_err(fail)?;
    let mut shapes = HashMap::new();
    for node in typed.nodes() {
        for (ix, output) in node.outputs.iter().enumerate() {
            if let (Some(label), Some(shape)) =
                (typed.outlet_label(OutletId::new(node.id, ix)), output.fact.shape.as_concrete())
            {
                shapes.insert(label.to_string(), shape.to_vec());
            }
        }
    }
    Ok(shapes)
}
/// Ops whose outputs do not depend differentiably on their inputs: gradients never flow
/// through them, so they end the search for paths from the taps.
const NOT_DIFFERENTIABLE: &[&str] = &[
    "Shape",
    "Size",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "ArgMax",
    "ArgMin",
    "NonZero",
    "IsNaN",
    "IsInf",
    "ConstantOfShape",
];

/// The new nodes and constants of a gradient graph.
struct Built {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    initializer_names: HashSet<String>,
    /// Gradient output name per tap (already produced by an Identity named [`grad_name`]).
    tap_grads: Vec<String>,
}

struct Builder<'a> {
    graph: &'a pb::GraphProto,
    shapes: &'a HashMap<String, Vec<usize>>,
    opset: i64,
    style: ConvVjp,
    /// Tensor name -> index of the node producing it.
    producer: HashMap<&'a str, usize>,
    /// Values of `Constant` nodes (initializers are looked up in the graph).
    constant_nodes: HashMap<&'a str, TensorProto>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
    scalars: HashMap<u32, String>,
    /// Contributions to each tensor's gradient, and the summed gradient once formed.
    contributions: HashMap<String, Vec<String>>,
    totals: HashMap<String, String>,
}

fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}
fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}
fn attr_f(n: &NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map_or(default, |a| a.f)
}
fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}
fn attr_s(n: &NodeProto, name: &str) -> Option<String> {
    attr(n, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

fn a_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i, ..Default::default() }
}
fn a_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: ints.to_vec(), ..Default::default() }
}

/// `"node \"name\" (Op)"`, naming the node by its first output when it has no name.
fn describe(n: &NodeProto) -> String {
    let name = if n.name.is_empty() { n.output.first().map(String::as_str).unwrap_or("?") } else { &n.name };
    format!("{} node {name:?}", n.op_type)
}

fn unsupported(n: &NodeProto, why: &str) -> Error {
    Error::InvalidModel(format!("gradient graph: {} on the path from the taps to the logits: {why}", describe(n)))
}

fn tensor_f32(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != DataType::Float as i32 || t.data_location == Some(pb::tensor_proto::DataLocation::External as i32)
    {
        return None;
    }
    if t.raw_data.is_empty() {
        Some(t.float_data.clone())
    } else {
        Some(t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

fn tensor_i64(t: &TensorProto) -> Option<Vec<i64>> {
    match DataType::try_from(t.data_type).ok()? {
        DataType::Int64 if t.raw_data.is_empty() => Some(t.int64_data.clone()),
        DataType::Int64 => {
            Some(t.raw_data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
        }
        DataType::Int32 if t.raw_data.is_empty() => Some(t.int32_data.iter().map(|&v| v as i64).collect()),
        DataType::Int32 => {
            Some(t.raw_data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect())
        }
        _ => None,
    }
}

fn product(v: &[usize]) -> usize {
    v.iter().product()
}

/// Conv weights `[Cout, Cin/G, k...]` -> the kernel of the input-gradient convolution,
/// `[Cin, Cout/G, k...]`, spatially flipped (reversing the flat spatial index flips every axis).
fn transpose_flip(w: &[f32], shape: &[usize], group: usize) -> (Vec<f32>, Vec<usize>) {
    let (cout, cin_g, kk) = (shape[0], shape[1], product(&shape[2..]));
    let cout_g = cout / group;
    let mut out = vec![0f32; w.len()];
    for g in 0..group {
        for co in 0..cout_g {
            for ci in 0..cin_g {
                let src = ((g * cout_g + co) * cin_g + ci) * kk;
                let dst = ((g * cin_g + ci) * cout_g + co) * kk;
                for a in 0..kk {
                    out[dst + kk - 1 - a] = w[src + a];
                }
            }
        }
    }
    let mut new_shape = vec![cin_g * group, cout_g];
    new_shape.extend_from_slice(&shape[2..]);
    (out, new_shape)
}

/// Strides, dilations and explicit begin/end pads of a convolution or pool.
struct KernelGeometry {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    pads_begin: Vec<usize>,
    pads_end: Vec<usize>,
}

impl KernelGeometry {
    fn of(n: &NodeProto, kernel: Vec<usize>, input: &[usize]) -> Result<Self> {
        let r = kernel.len();
        let positive = |name: &str| -> Result<Vec<usize>> {
            match attr_ints(n, name) {
                None => Ok(vec![1; r]),
                Some(v) if v.len() == r && v.iter().all(|&x| x > 0) => Ok(v.iter().map(|&x| x as usize).collect()),
                Some(v) => Err(unsupported(n, &format!("{name} {v:?}"))),
            }
        };
        let strides = positive("strides")?;
        let dilations = positive("dilations")?;
        let spatial = &input[2..];
        let (pads_begin, pads_end) = match attr_s(n, "auto_pad").as_deref().unwrap_or("NOTSET") {
            "NOTSET" | "" => match attr_ints(n, "pads") {
                None => (vec![0; r], vec![0; r]),
                Some(p) if p.len() == 2 * r && p.iter().all(|&x| x >= 0) => {
                    (p[..r].iter().map(|&x| x as usize).collect(), p[r..].iter().map(|&x| x as usize).collect())
                }
                Some(p) => return Err(unsupported(n, &format!("pads {p:?}"))),
            },
            "VALID" => (vec![0; r], vec![0; r]),
            mode @ ("SAME_UPPER" | "SAME_LOWER") => {
                let mut b = vec![0; r];
                let mut e = vec![0; r];
                for j in 0..r {
                    let out = spatial[j].div_ceil(strides[j]);
                    let total =
                        ((out - 1) * strides[j] + (kernel[j] - 1) * dilations[j] + 1).saturating_sub(spatial[j]);
                    let small = total / 2;
                    (b[j], e[j]) = if mode == "SAME_UPPER" { (small, total - small) } else { (total - small, small) };
                }
                (b, e)
            }
            other => return Err(unsupported(n, &format!("auto_pad {other}"))),
        };
        Ok(KernelGeometry { kernel, strides, dilations, pads_begin, pads_end })
    }
}

impl<'a> Builder<'a> {
    fn new(
        graph: &'a pb::GraphProto,
        shapes: &'a HashMap<String, Vec<usize>>,
        opset: i64,
        style: ConvVjp,
    ) -> Result<Self> {
        let mut producer = HashMap::new();
        let mut constant_nodes = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(o.as_str(), i);
            }
            if n.op_type == "Constant" && n.domain.is_empty() {
                if let (Some(out), Some(t)) = (n.output.first(), constant_value(n)) {
                    constant_nodes.insert(out.as_str(), t);
                }
            }
        }
        Ok(Builder {
            graph,
            shapes,
            opset,
            style,
            producer,
            constant_nodes,
            nodes: vec![],
            initializers: vec![],
            counter: 0,
            scalars: HashMap::new(),
            contributions: HashMap::new(),
            totals: HashMap::new(),
        })
    }

    // ---- the walk ----

    fn run(mut self, target: usize, taps: &[String]) -> Result<Built> {
        let g = self.graph;
        let logits = g.output[0].name.clone();
        let inputs: HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
        for (i, tap) in taps.iter().enumerate() {
            if taps[..i].contains(tap) {
                return Err(Error::arg(format!("gradient graph: tap {tap:?} is given twice")));
            }
            if !self.producer.contains_key(tap.as_str()) && !inputs.contains(tap.as_str()) {
                return Err(Error::arg(format!(
                    "gradient graph: tap {tap:?} is not a tensor of the model (`ichseg inspect` lists candidate taps)"
                )));
            }
        }
        // Forward from the taps (file order is topological by the ONNX spec; checked here).
        let mut from_taps: HashSet<&str> = taps.iter().map(String::as_str).collect();
        let mut seen: HashSet<&str> = inputs.clone();
        seen.extend(g.initializer.iter().map(|t| t.name.as_str()));
        for n in &g.node {
            if let Some(missing) = n.input.iter().find(|i| !i.is_empty() && !seen.contains(i.as_str())) {
                return Err(Error::InvalidModel(format!(
                    "gradient graph: {} reads {missing:?} before it is produced (the graph is not topologically sorted)",
                    describe(n)
                )));
            }
            seen.extend(n.output.iter().map(String::as_str));
            if !NOT_DIFFERENTIABLE.contains(&n.op_type.as_str())
                && n.input.iter().any(|i| from_taps.contains(i.as_str()))
            {
                from_taps.extend(n.output.iter().filter(|o| !o.is_empty()).map(String::as_str));
            }
        }
        // Backward from the logits.
        let mut to_logits: HashSet<&str> = HashSet::from([logits.as_str()]);
        for n in g.node.iter().rev() {
            if n.output.iter().any(|o| to_logits.contains(o.as_str())) {
                to_logits.extend(n.input.iter().map(String::as_str));
            }
        }
        for tap in taps {
            if !to_logits.contains(tap.as_str()) {
                return Err(Error::arg(format!("gradient graph: the logits {logits:?} do not depend on tap {tap:?}")));
            }
        }
        if !from_taps.contains(logits.as_str()) {
            return Err(Error::arg(format!("gradient graph: the logits {logits:?} do not depend on the taps")));
        }

        // Seed: a one-hot row at the target, expanded to the logits' shape.
        let lshape = self.shape(&logits)?;
        if lshape.len() < 2 {
            return Err(Error::InvalidModel(format!(
                "gradient graph: logits {logits:?} have shape {lshape:?}, expected [N, classes, ...]"
            )));
        }
        if target >= lshape[1] {
            return Err(Error::arg(format!(
                "gradient graph: target logit {target} is out of range: the model has {} logits",
                lshape[1]
            )));
        }
        let mut onehot_shape = vec![1usize; lshape.len()];
        onehot_shape[1] = lshape[1];
        let onehot = (0..lshape[1]).map(|k| if k == target { 1.0 } else { 0.0 }).collect::<Vec<f32>>();
        let onehot = self.const_f32(&onehot_shape, onehot, "seed");
        let lsh = self.op("Shape", &[&logits], vec![]);
        let seed = self.op("Expand", &[&onehot, &lsh], vec![]);
        self.contributions.insert(logits.clone(), vec![seed]);

        for n in g.node.iter().rev() {
            let on_path = n.input.iter().any(|i| from_taps.contains(i.as_str()))
                && n.output.iter().any(|o| to_logits.contains(o.as_str()))
                && !NOT_DIFFERENTIABLE.contains(&n.op_type.as_str());
            if !on_path {
                continue;
            }
            if let Some(extra) = n.output.iter().skip(1).find(|o| self.contributions.contains_key(o.as_str())) {
                return Err(unsupported(n, &format!("gradients through its output {extra:?} (only the first)")));
            }
            let Some(gy) = self.total(&n.output[0]) else { continue };
            let want: Vec<bool> = n.input.iter().map(|i| !i.is_empty() && from_taps.contains(i.as_str())).collect();
            for (ix, grad) in self.vjp(n, &gy, &want)? {
                self.contributions.entry(n.input[ix].clone()).or_default().push(grad);
            }
        }

        let mut tap_grads = vec![];
        for tap in taps {
            let total = self
                .total(tap)
                .ok_or_else(|| Error::arg(format!("gradient graph: no gradient reaches tap {tap:?}")))?;
            // a named copy, so that two taps with the same gradient tensor both get an output
            let name = grad_name(tap);
            self.nodes.push(NodeProto {
                input: vec![total],
                output: vec![name.clone()],
                name: format!("ichseg_grad/output/{tap}"),
                op_type: "Identity".into(),
                ..Default::default()
            });
            tap_grads.push(name);
        }
        let initializer_names = self.initializers.iter().map(|t| t.name.clone()).collect();
        Ok(Built { nodes: self.nodes, initializers: self.initializers, initializer_names, tap_grads })
    }

    /// The summed gradient of `tensor`, emitted once.
    fn total(&mut self, tensor: &str) -> Option<String> {
        if let Some(t) = self.totals.get(tensor) {
            return Some(t.clone());
        }
        let parts = self.contributions.get(tensor)?.clone();
        let total = if parts.len() == 1 {
            parts[0].clone()
        } else {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            self.op("Sum", &refs, vec![])
        };
        self.totals.insert(tensor.to_string(), total.clone());
        Some(total)
    }

    // ---- emitting nodes and constants ----

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("ichseg_grad/{}/{hint}", self.counter)
    }

    fn op(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        let out = self.fresh(op);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
        out
    }

    fn const_f32(&mut self, dims: &[usize], values: Vec<f32>, hint: &str) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            name: name.clone(),
            ..Default::default()
        });
        name
    }

    fn const_i64(&mut self, values: &[i64]) -> String {
        let name = self.fresh("i64");
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: DataType::Int64 as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            name: name.clone(),
            ..Default::default()
        });
        name
    }

    fn scalar(&mut self, v: f32) -> String {
        if let Some(s) = self.scalars.get(&v.to_bits()) {
            return s.clone();
        }
        let s = self.const_f32(&[], vec![v], "scalar");
        self.scalars.insert(v.to_bits(), s.clone());
        s
    }

    fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.const_i64(shape);
        self.op("Reshape", &[x, &s], vec![])
    }

    fn slice(&mut self, x: &str, starts: &[i64], ends: &[i64], axes: &[i64], steps: Option<&[i64]>) -> String {
        let (s, e, a) = (self.const_i64(starts), self.const_i64(ends), self.const_i64(axes));
        match steps {
            Some(st) => {
                let st = self.const_i64(st);
                self.op("Slice", &[x, &s, &e, &a, &st], vec![])
            }
            None => self.op("Slice", &[x, &s, &e, &a], vec![]),
        }
    }

    fn pad(&mut self, x: &str, pads: &[i64], value: f32) -> String {
        let p = self.const_i64(pads);
        let v = self.scalar(value);
        self.op("Pad", &[x, &p, &v], vec![])
    }

    fn reduce_sum(&mut self, x: &str, axes: &[i64]) -> String {
        if self.opset < 13 {
            self.op("ReduceSum", &[x], vec![a_ints("axes", axes), a_int("keepdims", 1)])
        } else {
            let a = self.const_i64(axes);
            self.op("ReduceSum", &[x, &a], vec![a_int("keepdims", 1)])
        }
    }

    fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op("Transpose", &[x], vec![a_ints("perm", perm)])
    }

    /// `[-1, rest...]`: a reshape target that keeps the (dynamic) batch dimension.
    fn batch_shape(rest: &[usize]) -> Vec<i64> {
        std::iter::once(-1).chain(rest.iter().map(|&d| d as i64)).collect()
    }

    // ---- looking things up ----

    fn shape(&self, tensor: &str) -> Result<Vec<usize>> {
        if let Some(s) = self.shapes.get(tensor) {
            return Ok(s.clone());
        }
        if let Some(t) = self.constant(tensor) {
            return Ok(t.dims.iter().map(|&d| d as usize).collect());
        }
        Err(Error::InvalidModel(format!("gradient graph: tract could not infer a static shape for tensor {tensor:?}")))
    }

    /// The value of a constant tensor: an initializer or a `Constant` node, through `Identity`.
    fn constant(&self, name: &str) -> Option<Cow<'a, TensorProto>> {
        if let Some(t) = self.graph.initializer.iter().find(|t| t.name == name) {
            return Some(Cow::Borrowed(t));
        }
        if let Some(t) = self.constant_nodes.get(name) {
            return Some(Cow::Owned(t.clone()));
        }
        let n = &self.graph.node[*self.producer.get(name)?];
        (n.op_type == "Identity").then(|| self.constant(&n.input[0])).flatten()
    }

    fn const_f32_of(&self, n: &NodeProto, name: &str) -> Result<Vec<f32>> {
        self.constant(name)
            .and_then(|t| tensor_f32(&t))
            .ok_or_else(|| unsupported(n, &format!("input {name:?} must be a float32 constant stored in the model")))
    }

    fn const_i64_of(&self, n: &NodeProto, name: &str) -> Result<Vec<i64>> {
        self.constant(name)
            .and_then(|t| tensor_i64(&t))
            .ok_or_else(|| unsupported(n, &format!("input {name:?} must be an integer constant")))
    }

    /// Sums `g` (shaped like `out`) over the axes along which `input` was broadcast to `out`.
    fn unbroadcast(&mut self, g: &str, input: &[usize], out: &[usize]) -> String {
        if input == out {
            return g.to_string();
        }
        let lead = out.len() - input.len();
        let axes: Vec<i64> =
            (0..out.len()).filter(|&i| i < lead || (input[i - lead] == 1 && out[i] != 1)).map(|i| i as i64).collect();
        let summed = if axes.is_empty() { g.to_string() } else { self.reduce_sum(g, &axes) };
        if lead == 0 {
            summed
        } else {
            let shape: Vec<i64> = input.iter().map(|&d| d as i64).collect();
            self.reshape(&summed, &shape)
        }
    }

    // ---- the vector-Jacobian products ----

    /// Gradients for the inputs `want`ed of node `n`, given `g` at its first output.
    fn vjp(&mut self, n: &NodeProto, g: &str, want: &[bool]) -> Result<Vec<(usize, String)>> {
        match rules::rule(&n.op_type) {
            Some(rule) => rule(self, n, g, want),
            None => Err(Error::InvalidModel(format!(
                "gradient graph: no vector-Jacobian product for op {} ({}) on the path from the taps to the logits",
                n.op_type,
                describe(n)
            ))),
        }
    }

    pub(crate) fn elementwise_vjp(&mut self, n: &NodeProto, g: &str, want: &[bool]) -> Result<Vec<(usize, String)>> {
        let ys = self.shape(&n.output[0])?;
        let mut grads = vec![];
        for (i, input) in n.input.iter().enumerate() {
            if !want[i] {
                continue;
            }
            let local = match (n.op_type.as_str(), i) {
                ("Add" | "Sum", _) | ("Sub", 0) => g.to_string(),
                ("Sub", _) => self.op("Neg", &[g], vec![]),
                ("Mul", _) => self.op("Mul", &[g, &n.input[1 - i]], vec![]),
                ("Div", 0) => self.op("Div", &[g, &n.input[1]], vec![]),
                _ => {
                    // d(a/b)/db = -(a/b)/b
                    let gy = self.op("Mul", &[g, &n.output[0]], vec![]);
                    let q = self.op("Div", &[&gy, &n.input[1]], vec![]);
                    self.op("Neg", &[&q], vec![])
                }
            };
            let xs = self.shape(input)?;
            grads.push((i, self.unbroadcast(&local, &xs, &ys)));
        }
        Ok(grads)
    }

    fn gemm_vjp(&mut self, n: &NodeProto, g: &str, want: &[bool]) -> Result<Vec<(usize, String)>> {
        let (a, b) = (n.input[0].clone(), n.input[1].clone());
        let (ta, tb) = (attr_i(n, "transA", 0) != 0, attr_i(n, "transB", 0) != 0);
        let (alpha, beta) = (attr_f(n, "alpha", 1.0), attr_f(n, "beta", 1.0));
        let mut grads = vec![];
        let scaled = |s: &mut Self, t: String, k: f32| {
            if k == 1.0 {
                t
            } else {
                let k = s.scalar(k);
                s.op("Mul", &[&t, &k], vec![])
            }
        };
        // Y = alpha * op(A) op(B) + beta * C
        if want[0] {
            let da = if !ta {
                // d op(A) = g op(B)^T, op(B)^T = B if transB else B^T
                let bt = if tb { b.clone() } else { self.transpose(&b, &[1, 0]) };
                self.op("MatMul", &[g, &bt], vec![])
            } else {
                // dA = (g op(B)^T)^T = op(B) g^T
                let ob = if tb { self.transpose(&b, &[1, 0]) } else { b.clone() };
                let gt = self.transpose(g, &[1, 0]);
                self.op("MatMul", &[&ob, &gt], vec![])
            };
            grads.push((0, scaled(self, da, alpha)));
        }
        if want[1] {
            let db = if !tb {
                let at = if ta { a.clone() } else { self.transpose(&a, &[1, 0]) };
                self.op("MatMul", &[&at, g], vec![])
            } else {
                let oa = if ta { self.transpose(&a, &[1, 0]) } else { a.clone() };
                let gt = self.transpose(g, &[1, 0]);
                self.op("MatMul", &[&gt, &oa], vec![])
            };
            grads.push((1, scaled(self, db, alpha)));
        }
        if want.get(2).copied().unwrap_or(false) {
            let (cs, ys) = (self.shape(&n.input[2])?, self.shape(&n.output[0])?);
            let dc = scaled(self, g.to_string(), beta);
            grads.push((2, self.unbroadcast(&dc, &cs, &ys)));
        }
        Ok(grads)
    }

    /// The gradient at the input `[N, Cin, H...]` of a convolution with weights `w`
    /// (`[Cout, Cin/group, k...]`), given `g` (`[N, Cout, Ho...]`).
    #[allow(clippy::too_many_arguments)]
    fn conv_input_grad(
        &mut self,
        g: &str,
        w: &[f32],
        w_shape: &[usize],
        group: usize,
        win: &KernelGeometry,
        xs: &[usize],
        ys: &[usize],
    ) -> Result<String> {
        let r = xs.len() - 2;
        let (h, ho) = (&xs[2..], &ys[2..]);
        let cout = ys[1];
        let kernel: Vec<i64> = win.kernel.iter().map(|&k| k as i64).collect();
        let dil: Vec<i64> = win.dilations.iter().map(|&d| d as i64).collect();
        let group_attr = a_int("group", group as i64);
        if self.style == ConvVjp::ConvTranspose {
            let mut output_padding = vec![];
            for j in 0..r {
                let bare = win.strides[j] * (ho[j] - 1) + win.dilations[j] * (win.kernel[j] - 1) + 1;
                let bare = bare as i64 - (win.pads_begin[j] + win.pads_end[j]) as i64;
                output_padding.push(h[j] as i64 - bare);
            }
            if output_padding.iter().any(|&p| p < 0) {
                return Err(Error::InvalidModel(format!("gradient graph: ConvTranspose VJP for input {xs:?}")));
            }
            let wname = self.const_f32(w_shape, w.to_vec(), "w");
            let pads: Vec<i64> = win.pads_begin.iter().chain(&win.pads_end).map(|&p| p as i64).collect();
            let strides: Vec<i64> = win.strides.iter().map(|&s| s as i64).collect();
            return Ok(self.op(
                "ConvTranspose",
                &[g, &wname],
                vec![
                    a_ints("kernel_shape", &kernel),
                    a_ints("strides", &strides),
                    a_ints("dilations", &dil),
                    a_ints("pads", &pads),
                    a_ints("output_padding", &output_padding),
                    group_attr,
                ],
            ));
        }
        let (wt, wt_shape) = transpose_flip(w, w_shape, group);
        let wname = self.const_f32(&wt_shape, wt, "w_flipped");
        let correlate = |this: &mut Self, x: &str, pads: &[i64]| {
            this.op(
                "Conv",
                &[x, &wname],
                vec![
                    a_ints("kernel_shape", &kernel),
                    a_ints("strides", &vec![1; r]),
                    a_ints("dilations", &dil),
                    a_ints("pads", pads),
                    group_attr.clone(),
                ],
            )
        };
        // A strided 1x1 kernel commutes with the zero insertion below: multiply first, on the
        // output grid (s^r times fewer pixels, no products with inserted zeros), then insert.
        let pointwise_first = win.kernel.iter().all(|&k| k == 1) && win.strides.iter().any(|&s| s > 1);
        let (source, channels) =
            if pointwise_first { (correlate(self, g, &vec![0; 2 * r]), xs[1]) } else { (g.to_string(), cout) };
        // 1. zero insertion: g[o] -> gz[o * s], followed by s - 1 zeros (length L = Ho * s)
        let gz = if win.strides.iter().any(|&s| s > 1) {
            let mut split = vec![channels];
            let mut merged = vec![channels];
            for (&o, &s) in ho.iter().zip(&win.strides) {
                split.extend([o, 1]);
                merged.push(o * s);
            }
            let split_shape = Self::batch_shape(&split);
            let expanded = self.reshape(&source, &split_shape);
            let rank = 2 + 2 * r;
            let mut pads = vec![0i64; 2 * rank];
            for j in 0..r {
                pads[rank + 3 + 2 * j] = win.strides[j] as i64 - 1;
            }
            let padded = self.pad(&expanded, &pads, 0.0);
            let merged_shape = Self::batch_shape(&merged);
            self.reshape(&padded, &merged_shape)
        } else {
            source
        };
        // 2. full correlation with the flipped, transposed kernel, padded so that output index i
        //    is input index i: begin d(k-1) - pb, end H - L + pb (negative pads crop afterwards)
        let mut begin = vec![];
        let mut end = vec![];
        for j in 0..r {
            begin.push((win.dilations[j] * (win.kernel[j] - 1)) as i64 - win.pads_begin[j] as i64);
            end.push(h[j] as i64 - (ho[j] * win.strides[j]) as i64 + win.pads_begin[j] as i64);
        }
        let pads: Vec<i64> = begin.iter().chain(&end).map(|&p| p.max(0)).collect();
        let conv = if !pointwise_first {
            correlate(self, &gz, &pads)
        } else if pads.iter().any(|&p| p > 0) {
            // the product is done: only the padding is left
            let mut nd_pads = vec![0i64; 2 * (r + 2)];
            for j in 0..r {
                nd_pads[2 + j] = pads[j];
                nd_pads[r + 4 + j] = pads[r + j];
            }
            self.pad(&gz, &nd_pads, 0.0)
        } else {
            gz
        };
        if begin.iter().chain(&end).all(|&p| p >= 0) {
            return Ok(conv);
        }
        let starts: Vec<i64> = begin.iter().map(|&b| (-b).max(0)).collect();
        let ends: Vec<i64> = starts.iter().zip(h).map(|(&s, &hj)| s + hj as i64).collect();
        let axes: Vec<i64> = (2..2 + r as i64).collect();
        Ok(self.slice(&conv, &starts, &ends, &axes, None))
    }

    fn pool_window(&self, n: &NodeProto, xs: &[usize]) -> Result<KernelGeometry> {
        let kernel = attr_ints(n, "kernel_shape")
            .filter(|k| k.len() + 2 == xs.len() && k.iter().all(|&v| v > 0))
            .ok_or_else(|| unsupported(n, "kernel_shape missing or not matching the input rank"))?;
        KernelGeometry::of(n, kernel.iter().map(|&k| k as usize).collect(), xs)
    }

    fn average_pool_vjp(&mut self, n: &NodeProto, g: &str) -> Result<String> {
        let (xs, ys) = (self.shape(&n.input[0])?, self.shape(&n.output[0])?);
        let win = self.pool_window(n, &xs)?;
        if win.dilations.iter().any(|&d| d != 1) {
            return Err(unsupported(n, "dilated average pooling"));
        }
        let include_pad = attr_i(n, "count_include_pad", 0) != 0;
        let r = xs.len() - 2;
        let (h, ho) = (&xs[2..], &ys[2..]);
        // window sizes the forward pass divided by, per output position (PyTorch/onnxruntime rule)
        let counts: Vec<Vec<f32>> = (0..r)
            .map(|j| {
                (0..ho[j])
                    .map(|o| {
                        let start = (o * win.strides[j]) as i64 - win.pads_begin[j] as i64;
                        let stop = start + win.kernel[j] as i64;
                        if include_pad {
                            (stop.min((h[j] + win.pads_end[j]) as i64) - start) as f32
                        } else {
                            (stop.min(h[j] as i64) - start.max(0)) as f32
                        }
                    })
                    .collect()
            })
            .collect();
        let mut divisor = vec![1f32];
        for c in &counts {
            divisor = divisor.iter().flat_map(|&d| c.iter().map(move |&v| d * v)).collect();
        }
        let scaled = if divisor.iter().all(|&d| d == divisor[0]) {
            let d = self.scalar(divisor[0]);
            self.op("Div", &[g, &d], vec![])
        } else {
            let mut dims = vec![1, 1];
            dims.extend_from_slice(ho);
            let d = self.const_f32(&dims, divisor, "pool_counts");
            self.op("Div", &[g, &d], vec![])
        };
        let c = xs[1];
        let mut w_shape = vec![c, 1];
        w_shape.extend_from_slice(&win.kernel);
        let ones = vec![1f32; product(&w_shape)];
        self.conv_input_grad(&scaled, &ones, &w_shape, c, &win, &xs, &ys)
    }

    fn max_pool_vjp(&mut self, n: &NodeProto, g: &str) -> Result<String> {
        let (xs, ys) = (self.shape(&n.input[0])?, self.shape(&n.output[0])?);
        let win = self.pool_window(n, &xs)?;
        let r = xs.len() - 2;
        let (c, h, ho) = (xs[1], &xs[2..], &ys[2..]);
        // 1. pad with -inf so that every window position reads a real or never-chosen value
        let mut pads = vec![0i64; 2 * (r + 2)];
        let mut pad_any = false;
        for j in 0..r {
            let needed = (win.kernel[j] - 1) * win.dilations[j] + (ho[j] - 1) * win.strides[j] + 1;
            let end = needed.saturating_sub(win.pads_begin[j] + h[j]);
            pads[2 + j] = win.pads_begin[j] as i64;
            pads[r + 4 + j] = end as i64;
            pad_any |= win.pads_begin[j] > 0 || end > 0;
        }
        let x = n.input[0].clone();
        let xp = if pad_any { self.pad(&x, &pads, f32::NEG_INFINITY) } else { x };
        // 2. one strided slice per kernel offset (row-major, PyTorch's scan order) -> [N, C, kk, Ho...]
        let kk = product(&win.kernel);
        let mut one = vec![c, 1];
        one.extend_from_slice(ho);
        let one_shape = Self::batch_shape(&one);
        let axes: Vec<i64> = (2..2 + r as i64).collect();
        let steps: Vec<i64> = win.strides.iter().map(|&s| s as i64).collect();
        let mut cols = vec![];
        for a in 0..kk {
            let mut rest = a;
            let mut offset = vec![0usize; r];
            for j in (0..r).rev() {
                offset[j] = rest % win.kernel[j];
                rest /= win.kernel[j];
            }
            let starts: Vec<i64> = (0..r).map(|j| (offset[j] * win.dilations[j]) as i64).collect();
            let ends: Vec<i64> = (0..r).map(|j| starts[j] + ((ho[j] - 1) * win.strides[j]) as i64 + 1).collect();
            let s = self.slice(&xp, &starts, &ends, &axes, Some(&steps));
            cols.push(self.reshape(&s, &one_shape));
        }
        let refs: Vec<&str> = cols.iter().map(String::as_str).collect();
        let cols = if kk == 1 { cols[0].clone() } else { self.op("Concat", &refs, vec![a_int("axis", 2)]) };
        // 3. the first maximum of each window gets the gradient
        let idx = self.op("ArgMax", &[&cols], vec![a_int("axis", 2), a_int("keepdims", 1)]);
        let range = {
            let name = self.fresh("offsets");
            let mut dims = vec![1i64, 1, kk as i64];
            dims.extend(std::iter::repeat_n(1, r));
            self.initializers.push(TensorProto {
                dims,
                data_type: DataType::Int64 as i32,
                raw_data: (0..kk as i64).flat_map(|v| v.to_le_bytes()).collect(),
                name: name.clone(),
                ..Default::default()
            });
            name
        };
        let mask = self.op("Equal", &[&idx, &range], vec![]);
        let g5 = self.reshape(g, &one_shape);
        let zero = self.scalar(0.0);
        let routed = self.op("Where", &[&mask, &g5, &zero], vec![]);
        let mut flat = vec![c * kk];
        flat.extend_from_slice(ho);
        let flat_shape = Self::batch_shape(&flat);
        let routed = self.reshape(&routed, &flat_shape);
        // 4. scatter back: the input gradient of the depthwise one-hot convolution that gathers
        //    the windows (channel c * kk + a reads offset a of channel c)
        let mut w_shape = vec![c * kk, 1];
        w_shape.extend_from_slice(&win.kernel);
        let mut w = vec![0f32; c * kk * kk];
        for ch in 0..c {
            for a in 0..kk {
                w[(ch * kk + a) * kk + a] = 1.0;
            }
        }
        let mut ys_cols = vec![ys[0], c * kk];
        ys_cols.extend_from_slice(ho);
        self.conv_input_grad(&routed, &w, &w_shape, c, &win, &xs, &ys_cols)
    }
}

/// The value of a `Constant` node as a tensor.
fn constant_value(n: &NodeProto) -> Option<TensorProto> {
    let a = n.attribute.first()?;
    match a.name.as_str() {
        "value" => a.t.clone(),
        "value_float" => {
            Some(TensorProto { data_type: DataType::Float as i32, float_data: vec![a.f], ..Default::default() })
        }
        "value_floats" => Some(TensorProto {
            dims: vec![a.floats.len() as i64],
            data_type: DataType::Float as i32,
            float_data: a.floats.clone(),
            ..Default::default()
        }),
        "value_int" => {
            Some(TensorProto { data_type: DataType::Int64 as i32, int64_data: vec![a.i], ..Default::default() })
        }
        "value_ints" => Some(TensorProto {
            dims: vec![a.ints.len() as i64],
            data_type: DataType::Int64 as i32,
            int64_data: a.ints.clone(),
            ..Default::default()
        }),
        _ => None,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_flip_swaps_channels_and_reverses_the_kernel() {
        // [Cout=2, Cin=1, 1, 3], one group
        let w = [1., 2., 3., 4., 5., 6.];
        let (t, s) = transpose_flip(&w, &[2, 1, 1, 3], 1);
        assert_eq!(s, vec![1, 2, 1, 3]);
        assert_eq!(t, vec![3., 2., 1., 6., 5., 4.]);
        // depthwise: [Cout=2, 1, 1, 2], two groups -> [2, 1, 1, 2]
        let (t, s) = transpose_flip(&[1., 2., 3., 4.], &[2, 1, 1, 2], 2);
        assert_eq!(s, vec![2, 1, 1, 2]);
        assert_eq!(t, vec![2., 1., 4., 3.]);
    }
}
