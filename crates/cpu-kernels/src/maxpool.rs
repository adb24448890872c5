//! 2x2, stride-2 max pooling (a U-Net's downsampling) in one pass over the input.
//!
//! tract's generic pooling walks each output value's window through index arithmetic; here each
//! output row is the maximum of two input rows, then of each pair of neighbours, which the
//! compiler vectorises. [`rewrite`] puts [`MaxPool2x2`] in place of each f32 NCHW `MaxPool`
//! with that window and no padding before (the output shape the graph expects is checked, so a
//! ceil-mode pool over an odd side stays tract's).

use crate::conv::{eval_one_input, run_tasks, OutPtr};
use crate::sgemm::cpu_level;
use crate::vector::{at_level, ForLevel, Vector};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{MaxPool, PaddingSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Output values per parallel task at least, so that small layers are not split thinly.
const TASK_VALUES: usize = 1 << 14;

/// Max over 2x2 windows with stride 2 of f32 NCHW images planned for `rows` x `cols` input
/// planes; odd last rows and columns are dropped, as ONNX's floor rounding does.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct MaxPool2x2 {
    rows: usize,
    cols: usize,
}

impl MaxPool2x2 {
    pub fn new(rows: usize, cols: usize) -> Self {
        MaxPool2x2 { rows, cols }
    }

    /// Output rows and columns.
    pub fn output_hw(&self) -> (usize, usize) {
        (self.rows / 2, self.cols / 2)
    }

    /// Pools `planes` input planes `x` (each rows x cols) into `y` (each output size). NaNs are
    /// skipped unless a whole window is NaN (`f32::max`).
    pub fn pool(&self, x: &[f32], planes: usize, y: &mut [f32]) {
        let (oh, ow) = self.output_hw();
        let plane = self.rows * self.cols;
        assert_eq!(x.len(), planes * plane);
        assert_eq!(y.len(), planes * oh * ow);
        if oh == 0 || ow == 0 {
            return;
        }
        let per_task = TASK_VALUES.div_ceil(oh * ow).max(1);
        let tasks: Vec<usize> = (0..planes).step_by(per_task).collect();
        let out = OutPtr(y.as_mut_ptr());
        run_tasks(&tasks, |&first| {
            let count = per_task.min(planes - first);
            // SAFETY: each task writes its own planes of `y`.
            let y = unsafe { std::slice::from_raw_parts_mut(out.get().add(first * oh * ow), count * oh * ow) };
            let x = &x[first * plane..][..count * plane];
            let planes = PoolPlanes { x, rows: self.rows, cols: self.cols, y, oh, ow };
            // SAFETY: `at_level` picks a level the CPU has; the work asks nothing else.
            unsafe { at_level(planes, cpu_level()) }
        });
    }
}

/// The pooling of whole planes, in plain loops the compiler vectorises for the level
/// [`at_level`] compiles them for.
struct PoolPlanes<'a> {
    x: &'a [f32],
    rows: usize,
    cols: usize,
    y: &'a mut [f32],
    oh: usize,
    ow: usize,
}

impl ForLevel for PoolPlanes<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: Vector>(self) {
        let PoolPlanes { x, rows, cols, y, oh, ow } = self;
        for (x, y) in x.chunks_exact(rows * cols).zip(y.chunks_exact_mut(oh * ow)) {
            for (r, out) in y.chunks_exact_mut(ow).enumerate() {
                let top = &x[2 * r * cols..][..2 * ow];
                let bottom = &x[(2 * r + 1) * cols..][..2 * ow];
                for ((o, t), b) in out.iter_mut().zip(top.chunks_exact(2)).zip(bottom.chunks_exact(2)) {
                    *o = t[0].max(t[1]).max(b[0].max(b[1]));
                }
            }
        }
    }
}

impl Op for MaxPool2x2 {
    fn name(&self) -> StaticName {
        "MaxPool2x2".into()
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool2x2 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (oh, ow) = self.output_hw();
        let output_shape = |shape: &[usize]| {
            ensure!(
                shape.len() == 4 && shape[2..] == [self.rows, self.cols],
                "MaxPool2x2 planned for NCHW {}x{}, given {shape:?}",
                self.rows,
                self.cols
            );
            Ok(vec![shape[0], shape[1], oh, ow])
        };
        // `pool` writes every output value (its test starts from NaNs)
        eval_one_input("MaxPool2x2", inputs, output_shape, |x, shape, y| self.pool(x, shape[0] * shape[1], y))
    }
}

impl TypedOp for MaxPool2x2 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (oh, ow) = self.output_hw();
        let s = &inputs[0].shape;
        Ok(tvec!(f32::fact([s[0].clone(), s[1].clone(), oh.to_dim(), ow.to_dim()])))
    }

    as_op!();
}

/// Replaces each `MaxPool` [`MaxPool2x2`] computes (see the module comment); returns how many.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let mut count = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(pool) = node.op_as::<MaxPool>() else { continue };
        let spec = &pool.pool_spec;
        let no_padding_before = match &spec.padding {
            PaddingSpec::Valid => true,
            PaddingSpec::Explicit(before, _) | PaddingSpec::ExplicitOnnxPool(before, _, _) => {
                before.iter().all(|&b| b == 0)
            }
            _ => false,
        };
        let unit_dilations = spec.dilations.as_ref().is_none_or(|d| d.iter().all(|&d| d == 1));
        let window = spec.kernel_shape[..] == [2, 2] && spec.strides.as_deref() == Some(&[2, 2][..]);
        let input = model.outlet_fact(node.inputs[0])?;
        let Some(shape) = input.shape.as_concrete() else { continue };
        if pool.with_index_outputs.is_some()
            || spec.data_format != DataFormat::NCHW
            || !(window && unit_dilations && no_padding_before)
            || input.datum_type != f32::datum_type()
            || shape.len() != 4
        {
            continue;
        }
        let op = MaxPool2x2::new(shape[2], shape[3]);
        let (oh, ow) = op.output_hw();
        if node.outputs[0].fact.shape.as_concrete() != Some(&[shape[0], shape[1], oh, ow][..]) {
            continue;
        }
        let patch = TypedModelPatch::replace_single_op(model, node, &[node.inputs[0]], op)?;
        patch.apply(model)?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::test_support::{random, threads};

    /// The pooling straight from its definition, over `planes` planes.
    fn reference(x: &[f32], planes: usize, rows: usize, cols: usize) -> Vec<f32> {
        let (oh, ow) = (rows / 2, cols / 2);
        let mut y = Vec::with_capacity(planes * oh * ow);
        for p in 0..planes {
            for r in 0..oh {
                for c in 0..ow {
                    let at = |i: usize, j: usize| x[(p * rows + 2 * r + i) * cols + 2 * c + j];
                    y.push([at(0, 0), at(0, 1), at(1, 0), at(1, 1)].into_iter().fold(f32::NEG_INFINITY, f32::max));
                }
            }
        }
        y
    }

    #[test]
    fn matches_the_definition() {
        // even and odd sides, one plane and many (several tasks), one and two threads
        for (planes, rows, cols, threads_) in [(1, 4, 4, 1), (3, 7, 9, 2), (2, 1, 5, 1), (40, 66, 34, 2), (5, 2, 2, 2)]
        {
            let x = random(planes * rows * cols, 5);
            let op = MaxPool2x2::new(rows, cols);
            let (oh, ow) = op.output_hw();
            let mut y = vec![f32::NAN; planes * oh * ow];
            threads(threads_, || op.pool(&x, planes, &mut y));
            assert_eq!(y, reference(&x, planes, rows, cols), "{planes} planes {rows}x{cols}");
        }
    }

    #[test]
    fn unplanned_inputs_are_errors() {
        let op = MaxPool2x2::new(4, 6);
        let eval = |shape: &[usize]| op.eval_out_of_plan(tvec![Tensor::zero::<f32>(shape).unwrap().into_tvalue()]);
        assert_eq!(eval(&[1, 2, 4, 6]).unwrap().unwrap()[0].shape(), [1, 2, 2, 3]);
        let err = eval(&[1, 2, 6, 4]).unwrap_err().to_string();
        assert!(err.contains("planned for NCHW 4x6"), "{err}");
    }
}
