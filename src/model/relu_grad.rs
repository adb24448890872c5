//! The gradient through a Relu in one pass on the CPU.
//!
//! Gradient graphs (src/model/onnx_grad.rs) write it in standard ONNX as
//! `Where(Greater(x, 0), g, 0)`. tract runs that as two passes: a comparison writing a boolean
//! tensor, then a generic element-wise select (16 % of ResNet50's gradient graph on 2 cores).
//! [`ReluGrad`] computes `g` where `x > 0` and 0 elsewhere in one pass, in place in `g`'s
//! buffer when tract hands it over.

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

    /// A ResNet gradient graph's Relu gradients all become ReluGrad, and the outputs agree.
    #[test]
    fn gradient_graph_relus_are_rewritten() {
        let bytes =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grad/resnet_basic_op13_fused.onnx"))
                .unwrap();
        let taps = vec!["/layer1/layer1.0/relu_1/Relu_output_0".to_string()];
        let graph = crate::model::onnx_grad::gradient_graph(&bytes, 1, &taps).unwrap();
        let model = tract_onnx::onnx().model_for_read(&mut &graph[..]).unwrap();
        let typed = model.with_input_fact(0, f32::fact([2, 3, 64, 64]).into()).unwrap().into_typed().unwrap();
        let typed = typed.into_decluttered().unwrap();
        let iffs = |m: &TypedModel| m.nodes().iter().filter(|n| n.op_is::<Iff>()).count();
        let mut ours = typed.clone();
        let count = rewrite(&mut ours).unwrap();
        assert!(count > 0 && iffs(&typed) == count && iffs(&ours) == 0, "{count} of {}", iffs(&typed));
        let x: Tensor = tract_ndarray::Array4::from_shape_fn((2, 3, 64, 64), |(n, c, y, x)| {
            ((n + c * 3 + y * 5 + x) % 13) as f32 / 6.5 - 1.0
        })
        .into();
        let run =
            |m: TypedModel| m.into_optimized().unwrap().into_runnable().unwrap().run(tvec!(x.clone().into())).unwrap();
        for (a, b) in run(typed).iter().zip(run(ours).iter()) {
            assert_eq!(a.to_plain_array_view::<f32>().unwrap(), b.to_plain_array_view::<f32>().unwrap());
        }
    }
}
