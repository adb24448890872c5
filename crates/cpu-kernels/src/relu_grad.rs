//! The gradient through a Relu in one pass on the CPU, and the ONNX form it is recognised in.
//!
//! Gradient graphs (the library's `model::onnx_grad`) write it in standard ONNX, through
//! [`emit_onnx`], as `Where(Greater(y, 0), g, 0)`. tract runs that as two passes: a comparison
//! writing a boolean tensor, then a generic element-wise select (its share of a ResNet gradient
//! graph: docs/BENCHMARKS.md). [`rewrite`] finds that form after tract's decluttering and puts a
//! [`ReluGrad`] in its place, which computes `g` where `y > 0` and 0 elsewhere in one pass, in
//! place in `g`'s buffer when tract hands it over. Emitting and matching live here together, so
//! a change to one is a change to the other.

use tract_linalg::multithread::{current_tract_executor, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::logic::Iff;

/// Elements per parallel task.
const CHUNK: usize = 1 << 16;

/// `g` where `x > 0`, else 0; `x` and `g` f32 of the same shape.
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq)]
pub struct ReluGrad;

impl ReluGrad {
    /// Zeroes `g` where `x` is not positive (NaN included, as `Greater` does).
    pub fn apply(x: &[f32], g: &mut [f32]) {
        assert_eq!(x.len(), g.len());
        let run = |(x, g): (&[f32], &mut [f32])| {
            // `x > 0` is false for NaN, as in `Greater`
            g.iter_mut().zip(x).for_each(|(g, &x)| *g = if x > 0. { *g } else { 0. })
        };
        match current_tract_executor() {
            Executor::MultiThread(pool) if g.len() > CHUNK => {
                use rayon::prelude::*;
                pool.install(|| x.par_chunks(CHUNK).zip(g.par_chunks_mut(CHUNK)).for_each(run))
            }
            _ => run((x, g)),
        }
    }
}

impl Op for ReluGrad {
    fn name(&self) -> StaticName {
        "ReluGrad".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ReluGrad {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 2, "ReluGrad takes x and g");
        let mut g = inputs.pop().unwrap().into_tensor();
        let x = &inputs[0];
        ensure!(x.shape() == g.shape(), "ReluGrad: x {:?} and g {:?} differ", x.shape(), g.shape());
        Self::apply(x.try_as_plain_ram()?.as_slice::<f32>()?, g.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
        Ok(tvec!(g.into_tvalue()))
    }
}

impl TypedOp for ReluGrad {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[1].shape.clone())))
    }

    as_op!();
}

/// Writes the gradient of `Relu(x) = y` for the incoming gradient `g` in the ONNX form
/// [`rewrite`] recognises, through `op(op_type, inputs) -> output name`: `Greater(y, zero)`,
/// then `Where(mask, g, zero)`, where `zero` names a scalar f32 constant 0. Returns the output.
pub fn emit_onnx(mut op: impl FnMut(&str, &[&str]) -> String, y: &str, g: &str, zero: &str) -> String {
    let mask = op("Greater", &[y, zero]);
    op("Where", &[&mask, g, zero])
}

/// Replaces each `Iff(GT(x, 0), g, 0)` on f32 tensors of one shape by [`ReluGrad`]; returns
/// how many.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let mut count = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        if !node.op_is::<Iff>() || node.inputs.len() != 3 {
            continue;
        }
        let [cond, g, otherwise] = [node.inputs[0], node.inputs[1], node.inputs[2]];
        let test = model.node(cond.node);
        let is_gt = test.op_as::<TypedBinOp>().is_some_and(|op| op.0.name() == "GT");
        if !is_gt || test.inputs.len() != 2 || !is_zero(model, test.inputs[1])? || !is_zero(model, otherwise)? {
            continue;
        }
        let x = test.inputs[0];
        let (xf, gf, out) = (model.outlet_fact(x)?, model.outlet_fact(g)?, &node.outputs[0].fact);
        let f32s = [xf, gf, out].iter().all(|f| f.datum_type == f32::datum_type());
        if !f32s || xf.shape != gf.shape || out.shape != gf.shape || xf.shape.as_concrete().is_none() {
            continue;
        }
        let patch = TypedModelPatch::replace_single_op(model, node, &[x, g], ReluGrad)?;
        patch.apply(model)?;
        count += 1;
    }
    Ok(count)
}

/// Whether `outlet` is a constant f32 made of zeros.
fn is_zero(model: &TypedModel, outlet: OutletId) -> TractResult<bool> {
    Ok(model.outlet_fact(outlet)?.konst.as_ref().is_some_and(|k| {
        k.datum_type() == f32::datum_type()
            && k.try_as_plain_ram()
                .and_then(|k| k.as_slice::<f32>().map(|v| v.iter().all(|&v| v == 0.)))
                .unwrap_or(false)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroes_where_x_is_not_positive() {
        let x = [1.0, 0.0, -2.0, f32::NAN, 3.0];
        let mut g = [5.0, 6.0, 7.0, 8.0, -9.0];
        ReluGrad::apply(&x, &mut g);
        assert_eq!(g, [5.0, 0.0, 0.0, 0.0, -9.0]);
    }

    /// The contract: what [`emit_onnx`] writes is what [`rewrite`] takes back, after tract's
    /// decluttering, and both compute the same gradient.
    #[test]
    fn the_emitted_onnx_form_becomes_one_relu_grad() {
        use tract_onnx::pb;
        let mut nodes = vec![];
        let out = emit_onnx(
            |op, inputs| {
                let name = format!("{op}_{}", nodes.len());
                nodes.push(pb::NodeProto {
                    input: inputs.iter().map(|s| s.to_string()).collect(),
                    output: vec![name.clone()],
                    name: name.clone(),
                    op_type: op.into(),
                    ..Default::default()
                });
                name
            },
            "y",
            "g",
            "zero",
        );
        let zero = pb::TensorProto {
            name: "zero".into(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            float_data: vec![0.0],
            ..Default::default()
        };
        let io = |name: &str| pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: pb::tensor_proto::DataType::Float as i32,
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let graph = pb::GraphProto {
            node: nodes,
            initializer: vec![zero],
            input: vec![io("y"), io("g")],
            output: vec![io(&out)],
            ..Default::default()
        };
        let proto = pb::ModelProto {
            graph: Some(graph),
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
            ir_version: 7,
            ..Default::default()
        };
        let typed = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .unwrap()
            .with_input_fact(0, f32::fact([2, 3]).into())
            .unwrap()
            .with_input_fact(1, f32::fact([2, 3]).into())
            .unwrap()
            .into_typed()
            .unwrap()
            .into_decluttered()
            .unwrap();
        let mut ours = typed.clone();
        assert_eq!(rewrite(&mut ours).unwrap(), 1);
        assert!(ours.nodes().iter().any(|n| n.op_is::<ReluGrad>()) && !ours.nodes().iter().any(|n| n.op_is::<Iff>()));
        let y = tensor2(&[[1.0f32, 0.0, -2.0], [3.0, f32::NAN, 0.5]]);
        let g = tensor2(&[[5.0f32, 6.0, 7.0], [8.0, 9.0, -1.0]]);
        let run = |m: TypedModel| {
            m.into_optimized().unwrap().into_runnable().unwrap().run(tvec!(y.clone().into(), g.clone().into())).unwrap()
        };
        let want = tensor2(&[[5.0f32, 0.0, 0.0], [8.0, 0.0, -1.0]]);
        assert_eq!(*run(typed)[0], want);
        assert_eq!(*run(ours)[0], want);
    }
}
