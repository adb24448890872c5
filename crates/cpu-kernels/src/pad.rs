//! Constant padding of f32 tensors in one pass, for the zero insertion of a strided
//! convolution's gradient (Reshape to `[N, C, H, 1, W, 1]`, Pad to `[N, C, H, s, W, s]`).
//!
//! tract's `Pad` assigns the input into an n-dimensional view of the output, value by value
//! along the unit axes, which made those Pads a few percent of ResNet50's gradient graph
//! (docs/BENCHMARKS.md). [`ConstantPad`] fills the output and copies the input in runs along
//! its innermost axis of more than one value. [`rewrite`] puts it in place of each f32 `Pad`
//! with a constant value.

use crate::conv::eval_one_input;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{Pad, PadMode};

/// Pads each axis with `pads[axis]` values (before, after) of `value`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct ConstantPad {
    pads: Vec<(usize, usize)>,
    /// The value's bits (f32 is not `Hash`).
    value: u32,
}

impl ConstantPad {
    pub fn new(pads: Vec<(usize, usize)>, value: f32) -> Self {
        ConstantPad { pads, value: value.to_bits() }
    }

    /// The output shape for an input of `shape`.
    fn padded(&self, shape: &[usize]) -> Vec<usize> {
        shape.iter().zip(&self.pads).map(|(d, (before, after))| d + before + after).collect()
    }

    /// Pads `x` of `shape` into `y` (of the padded shape).
    pub fn pad(&self, x: &[f32], shape: &[usize], y: &mut [f32]) {
        let out = self.padded(shape);
        assert_eq!(x.len(), shape.iter().product::<usize>());
        assert_eq!(y.len(), out.iter().product::<usize>());
        y.fill(f32::from_bits(self.value));
        if x.is_empty() {
            return;
        }
        // the output's row-major strides
        let mut ys = vec![1; out.len()];
        for a in (0..out.len().saturating_sub(1)).rev() {
            ys[a] = ys[a + 1] * out[a + 1];
        }
        let first: usize = self.pads.iter().zip(&ys).map(|((before, _), s)| before * s).sum();
        // runs along the innermost axis of more than one value: the axes after it are units,
        // so the input's run is contiguous
        let Some(inner) = (0..shape.len()).rev().find(|&a| shape[a] > 1) else {
            y[first] = x[0];
            return;
        };
        let (run, step) = (shape[inner], ys[inner]);
        let mut index = vec![0; inner];
        for row in x.chunks_exact(run) {
            let at = first + index.iter().zip(&ys).map(|(i, s)| i * s).sum::<usize>();
            if step == 1 {
                y[at..at + run].copy_from_slice(row);
            } else {
                for (j, &v) in row.iter().enumerate() {
                    y[at + j * step] = v;
                }
            }
            for a in (0..inner).rev() {
                index[a] += 1;
                if index[a] < shape[a] {
                    break;
                }
                index[a] = 0;
            }
        }
    }
}

impl Op for ConstantPad {
    fn name(&self) -> StaticName {
        "ConstantPad".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ConstantPad {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let output_shape = |shape: &[usize]| {
            ensure!(shape.len() == self.pads.len(), "ConstantPad of rank {}, given {shape:?}", self.pads.len());
            Ok(self.padded(shape))
        };
        eval_one_input("ConstantPad", inputs, output_shape, |x, shape, y| self.pad(x, shape, y))
    }
}

impl TypedOp for ConstantPad {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut fact = inputs[0].without_value();
        for (axis, (before, after)) in self.pads.iter().enumerate() {
            fact.shape.set(axis, fact.shape[axis].clone() + *before + *after);
        }
        Ok(tvec!(fact))
    }

    as_op!();
}

/// Replaces each `Pad` of an f32 tensor by a constant with [`ConstantPad`]; returns how many.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let mut count = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(pad) = node.op_as::<Pad>() else { continue };
        let PadMode::Constant(value) = &pad.mode else { continue };
        let fact = model.outlet_fact(node.inputs[0])?;
        if fact.datum_type != f32::datum_type() || fact.rank() != pad.pads.len() || value.len() != 1 {
            continue;
        }
        let op = ConstantPad::new(pad.pads.clone(), value.cast_to_scalar::<f32>()?);
        let patch = TypedModelPatch::replace_single_op(model, node, &[node.inputs[0]], op)?;
        patch.apply(model)?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against tract's Pad, on the zero insertion's shapes and others.
    #[test]
    fn matches_tracts_pad() {
        type Case<'a> = (&'a [usize], &'a [(usize, usize)]);
        let cases: [Case; 5] = [
            (&[2, 3, 4, 1, 5, 1], &[(0, 0), (0, 0), (0, 0), (0, 1), (0, 0), (0, 1)]),
            (&[1, 2, 3, 4], &[(0, 0), (1, 0), (2, 1), (0, 3)]),
            (&[3, 1, 1], &[(1, 1), (2, 0), (0, 2)]),
            (&[1, 1], &[(1, 2), (0, 1)]),
            (&[2, 0, 3], &[(0, 1), (1, 1), (0, 0)]),
        ];
        for (shape, pads) in cases {
            let len: usize = shape.iter().product();
            let x = Tensor::from_shape(shape, &(0..len).map(|i| i as f32 + 1.).collect::<Vec<_>>()).unwrap();
            let tract = Pad::new(pads.to_vec(), PadMode::Constant(Arc::new((-2f32).into())));
            let ours = ConstantPad::new(pads.to_vec(), -2.);
            let run = |op: &dyn TypedOp| op.as_op().eval_out_of_plan(tvec![x.clone().into_tvalue()]).unwrap().unwrap();
            let (want, got) = (run(&tract), run(&ours));
            assert_eq!(want[0].shape(), got[0].shape(), "{shape:?} {pads:?}");
            assert_eq!(
                want[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(),
                got[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(),
                "{shape:?} {pads:?}"
            );
        }
    }

    #[test]
    fn rejects_inputs_of_another_rank_or_count() {
        let op = ConstantPad::new(vec![(1, 1); 3], 0.);
        let x = Tensor::zero::<f32>(&[2, 2]).unwrap().into_tvalue();
        let err = op.eval_out_of_plan(tvec![x.clone()]).unwrap_err().to_string();
        assert!(err.contains("rank 3"), "{err}");
        let err = op.eval_out_of_plan(tvec![x.clone(), x]).unwrap_err().to_string();
        assert!(err.contains("takes one input"), "{err}");
    }
}
