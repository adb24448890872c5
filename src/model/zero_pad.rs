//! A zero padding of the two spatial axes of an NCHW f32 tensor, row by row.
//!
//! tract feeds every padded convolution it lowers to lazy im2col through a `Pad` node, and its
//! generic `Pad` (n-dimensional ndarray assignment) moved about 1 GB/s here: 12 % of a U-Net's
//! time (docs/BENCHMARKS.md). This op copies whole rows instead; [`replace_pads`] swaps it in for
//! every such `Pad` of an optimised plan.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::{Pad, PadMode};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ZeroPad2d {
    top: usize,
    bottom: usize,
    left: usize,
    right: usize,
}

impl ZeroPad2d {
    /// The equivalent of `pad` when it zero-pads only the last two axes of a rank-4 f32 input.
    fn from_pad(pad: &Pad, input: &TypedFact) -> Option<Self> {
        let PadMode::Constant(value) = &pad.mode else { return None };
        let zero = value.cast_to_scalar::<f32>().ok()? == 0.0;
        match pad.pads.as_slice() {
            &[(0, 0), (0, 0), (top, bottom), (left, right)]
                if zero && input.datum_type == f32::datum_type() && input.rank() == 4 =>
            {
                Some(ZeroPad2d { top, bottom, left, right })
            }
            _ => None,
        }
    }
}

impl Op for ZeroPad2d {
    fn name(&self) -> StaticName {
        "ZeroPad2d".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("top {} bottom {} left {} right {}", self.top, self.bottom, self.left, self.right)])
    }

    op_as_typed_op!();
}

impl EvalOp for ZeroPad2d {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let view = input.to_plain_array_view::<f32>()?.into_dimensionality::<tract_ndarray::Ix4>()?;
        let (n, c, h, w) = view.dim();
        let (oh, ow) = (h + self.top + self.bottom, w + self.left + self.right);
        let mut output = tract_ndarray::Array4::<f32>::zeros((n, c, oh, ow));
        if h * w == 0 {
            return Ok(tvec!(output.into_tensor().into_tvalue()));
        }
        let contiguous = view.as_standard_layout();
        let src = contiguous.as_slice().ok_or_else(|| format_err!("input not contiguous"))?;
        let dst = output.as_slice_mut().ok_or_else(|| format_err!("output not contiguous"))?;
        for (src_plane, dst_plane) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(oh * ow)) {
            for (row, src_row) in src_plane.chunks_exact(w).enumerate() {
                let start = (row + self.top) * ow + self.left;
                dst_plane[start..start + w].copy_from_slice(src_row);
            }
        }
        Ok(tvec!(output.into_tensor().into_tvalue()))
    }
}

impl TypedOp for ZeroPad2d {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut fact = inputs[0].without_value();
        fact.shape.set(2, fact.shape[2].clone() + self.top + self.bottom);
        fact.shape.set(3, fact.shape[3].clone() + self.left + self.right);
        Ok(tvec!(fact))
    }
}

/// Replaces every spatial zero `Pad` of `model` by [`ZeroPad2d`]; returns how many.
pub(crate) fn replace_pads(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = &model.nodes()[id];
        let Some(pad) = node.op_as::<Pad>() else { continue };
        let input = model.outlet_fact(node.inputs[0])?;
        if let Some(op) = ZeroPad2d::from_pad(pad, input) {
            model.node_mut(id).op = Box::new(op);
            replaced += 1;
        }
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_tract_pad() {
        let input: Tensor =
            tract_ndarray::Array4::from_shape_fn((2, 3, 4, 5), |(n, c, h, w)| (n * 100 + c * 20 + h * 5 + w) as f32).into();
        let pad = Pad { pads: vec![(0, 0), (0, 0), (1, 2), (3, 1)], mode: PadMode::Constant(rctensor0(0f32)) };
        let fact = f32::fact([2, 3, 4, 5]);
        let ours = ZeroPad2d::from_pad(&pad, &fact).expect("eligible");
        let expected = pad.eval_out_of_plan(tvec!(input.clone().into_tvalue())).unwrap().unwrap();
        let got = ours.eval_out_of_plan(tvec!(input.into_tvalue())).unwrap().unwrap();
        assert_eq!(expected[0], got[0]);
        let facts = ours.output_facts(&[&fact]).unwrap();
        assert_eq!(facts[0].shape.as_concrete().unwrap(), &[2, 3, 7, 9]);
    }

    #[test]
    fn only_spatial_zero_pads_are_taken() {
        let fact = f32::fact([1, 1, 4, 4]);
        let channel = Pad { pads: vec![(0, 0), (1, 0), (1, 1), (1, 1)], mode: PadMode::Constant(rctensor0(0f32)) };
        let one = Pad { pads: vec![(0, 0), (0, 0), (1, 1), (1, 1)], mode: PadMode::Constant(rctensor0(1f32)) };
        let edge = Pad { pads: vec![(0, 0), (0, 0), (1, 1), (1, 1)], mode: PadMode::Edge };
        for p in [channel, one, edge] {
            assert!(ZeroPad2d::from_pad(&p, &fact).is_none(), "{p:?}");
        }
    }
}
