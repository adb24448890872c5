//! The pass: finds the convolutions (and Relu gradients, pools and pads) our kernels take and swaps them in.

use crate::conv::ConvParts;
use crate::gemm_conv::{ConvGeometry, GemmConv};
use crate::maxpool;
use crate::pad;
use crate::pointwise::PointwiseConv;
use crate::relu_grad;
use crate::upconv::UpConv2x2;
use crate::winograd::{KernelForm, WinogradConv};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::TypedConcat;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, Deconv, KernelFormat};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Whether plans should use our convolutions: yes unless `ICHSEG_TRACT_CONV=1`.
pub fn enabled() -> bool {
    std::env::var("ICHSEG_TRACT_CONV").map(|v| v != "1").unwrap_or(true)
}

/// Choices of [`rewrite_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewriteOptions {
    /// Every 3x3 stride-1 convolution (Winograd F(4x4, 3x3)) keeps its kernel as given and
    /// transforms it during each convolution, instead of keeping the transformed kernel, 4x its
    /// size, as by default only the widest layers do (`KernelForm::for_layer`): a smaller
    /// plan, somewhat slower (docs/BENCHMARKS.md, Memory).
    pub low_memory: bool,
}

/// Replaces every eligible `Conv` of `model` and the Relu gradients (see the module comment);
/// returns how many operators were replaced.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    rewrite_with(model, &RewriteOptions::default())
}

/// [`rewrite`] with these choices.
pub fn rewrite_with(model: &mut TypedModel, options: &RewriteOptions) -> TractResult<usize> {
    let mut count = relu_grad::rewrite(model)? + maxpool::rewrite(model)? + pad::rewrite(model)?;
    for id in model.eval_order()? {
        let node = model.node(id);
        let spec = if let Some(conv) = node.op_as::<Conv>() {
            ConvSpec::of_conv(model, node, conv)?
        } else if let Some(einsum) = node.op_as::<EinSum>() {
            ConvSpec::of_einsum(model, node, einsum)?
        } else if let Some(deconv) = node.op_as::<Deconv>() {
            ConvSpec::of_deconv(model, node, deconv)?
        } else {
            None
        };
        let Some(mut spec) = spec else { continue };
        let mut replaced = fold_channel_arithmetic(model, &mut spec)?;
        let mut inputs = vec![node.inputs[0]];
        let mut parts = ConvParts::single(spec.cin);
        if let Some(folded) = folded_concat(model, node.inputs[0])? {
            parts.sizes = folded.iter().map(|(_, channels)| *channels).collect();
            inputs = folded.into_iter().map(|(outlet, _)| outlet).collect();
        }
        if let Some(relu) = folded_relu(model, replaced)? {
            parts.relu = true;
            replaced = OutletId::new(relu, 0);
        }
        let Some(op) = spec.op(parts, options) else { continue };
        let mut patch = TypedModelPatch::default();
        let taps = patch.taps(model, &inputs)?;
        let mut wire = patch.wire_node(&node.name, op, &taps)?[0];
        for (k, &axis) in spec.unit_axes.iter().enumerate() {
            wire = patch.wire_node(format!("{}.unit_axis{k}", node.name), AxisOp::Add(axis), &[wire])?[0];
        }
        patch.shunt_outside(model, replaced, wire)?;
        patch.obliterate(node.id)?;
        patch.apply(model)?;
        count += 1;
    }
    if count > 0 {
        model.compact()?;
    }
    Ok(count)
}

/// A convolution our ops may take: 2D, f32 NCHW with a known input shape, one group, constant
/// OIHW weights and bias.
struct ConvSpec {
    cin: usize,
    cout: usize,
    /// Input [N, C, rows, cols] and output shapes.
    input: [usize; 4],
    output: Vec<usize>,
    window: ConvGeometry,
    kernel: Vec<f32>,
    bias: Vec<f32>,
    /// A transposed convolution (ConvTranspose; `kernel` still `[cout][cin][kh][kw]`).
    transposed: bool,
    /// The node computing it.
    node: usize,
    /// Axes of size 1 the node's output has besides NCHW, in increasing order of their place
    /// there (a 1x1 convolution followed by a Reshape that tract folded into the EinSum).
    unit_axes: Vec<usize>,
}

/// What a convolution node with constant weights reads and makes: its f32 NCHW input shape,
/// its output shape, its kernel, and its bias with one value per output channel.
struct ConstantConv {
    input: [usize; 4],
    output: Vec<usize>,
    kernel: Vec<f32>,
    bias: Vec<f32>,
}

impl ConstantConv {
    /// `node`'s, if its inputs are the data (f32, known shape), a constant f32 kernel of shape
    /// `kernel_shape(input channels)` and a constant f32 bias of `cout` values or one (broadcast).
    fn of(
        model: &TypedModel,
        node: &TypedNode,
        cout: usize,
        kernel_shape: impl FnOnce(usize) -> [usize; 4],
    ) -> TractResult<Option<ConstantConv>> {
        let fact = model.outlet_fact(node.inputs[0])?;
        let (Some(&[n, cin, rows, cols]), true) = (fact.shape.as_concrete(), fact.datum_type == f32::datum_type())
        else {
            return Ok(None);
        };
        let (Some(kernel), Some(bias)) =
            (&model.outlet_fact(node.inputs[1])?.konst, &model.outlet_fact(node.inputs[2])?.konst)
        else {
            return Ok(None);
        };
        let Some(output) = node.outputs[0].fact.shape.as_concrete() else { return Ok(None) };
        if kernel.datum_type() != f32::datum_type()
            || kernel.shape() != kernel_shape(cin)
            || bias.datum_type() != f32::datum_type()
            || !(bias.len() == cout || bias.len() == 1)
        {
            return Ok(None);
        }
        let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?;
        Ok(Some(ConstantConv {
            input: [n, cin, rows, cols],
            output: output.to_vec(),
            kernel: kernel.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
            bias: if bias.len() == cout { bias.to_vec() } else { vec![bias[0]; cout] },
        }))
    }
}

impl ConvSpec {
    fn of_conv(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<Option<ConvSpec>> {
        let spec = &conv.pool_spec;
        if conv.q_params.is_some()
            || conv.group != 1
            || conv.kernel_fmt != KernelFormat::OIHW
            || spec.data_format != DataFormat::NCHW
            || spec.kernel_shape.len() != 2
            || spec.strides().len() != 2
            || spec.dilations().len() != 2
            || node.inputs.len() != 3
        {
            return Ok(None);
        }
        let (cout, kernel_hw) = (conv.output_channels(), [spec.kernel_shape[0], spec.kernel_shape[1]]);
        let Some(c) = ConstantConv::of(model, node, cout, |cin| [cout, cin, kernel_hw[0], kernel_hw[1]])? else {
            return Ok(None);
        };
        let [n, cin, rows, cols] = c.input;
        if cin != conv.input_channels() {
            return Ok(None);
        }
        let padding = spec.computed_padding(&[rows, cols]);
        let window = ConvGeometry {
            kernel: kernel_hw,
            strides: [spec.stride(0), spec.stride(1)],
            dilations: [spec.dilation(0), spec.dilation(1)],
            pads: [padding[0].pad_before, padding[1].pad_before, padding[0].pad_after, padding[1].pad_after],
            input: [rows, cols],
        };
        Ok(Some(ConvSpec {
            cin,
            cout,
            input: [n, cin, rows, cols],
            output: c.output,
            window,
            kernel: c.kernel,
            bias: c.bias,
            transposed: false,
            node: node.id,
            unit_axes: vec![],
        }))
    }

    /// A 2x2, stride-2 transposed convolution without padding (a U-Net's upsampling), as tract
    /// declutters an ONNX ConvTranspose: `Deconv` with constant OIHW weights.
    fn of_deconv(model: &TypedModel, node: &TypedNode, deconv: &Deconv) -> TractResult<Option<ConvSpec>> {
        let spec = &deconv.pool_spec;
        if deconv.group != 1
            || deconv.kernel_format != KernelFormat::OIHW
            || deconv.adjustments.iter().any(|&a| a != 0)
            || spec.data_format != DataFormat::NCHW
            || spec.kernel_shape.as_slice() != [2, 2]
            || spec.strides().as_ref() != [2, 2]
            || spec.dilations().as_ref() != [1, 1]
            || node.inputs.len() != 3
        {
            return Ok(None);
        }
        let cout = spec.output_channels;
        let Some(c) = ConstantConv::of(model, node, cout, |cin| [cout, cin, 2, 2])? else { return Ok(None) };
        let [n, cin, rows, cols] = c.input;
        if cin != spec.input_channels || c.output != [n, cout, 2 * rows, 2 * cols] {
            return Ok(None);
        }
        Ok(Some(ConvSpec {
            cin,
            cout,
            input: c.input,
            output: c.output,
            window: ConvGeometry {
                kernel: [2, 2],
                strides: [2, 2],
                dilations: [1, 1],
                pads: [0; 4],
                input: [rows, cols],
            },
            kernel: c.kernel,
            bias: c.bias,
            transposed: true,
            node: node.id,
            unit_axes: vec![],
        }))
    }

    /// A 1x1 convolution as tract declutters it: `EinSum` "NIHW,OI->NOHW" with constant weights,
    /// or with axes of size 1 added to the output ("NIHW,OI->NOHbWa": the gradient of a strided 1x1
    /// convolution, whose zero insertion starts with such a Reshape).
    fn of_einsum(model: &TypedModel, node: &TypedNode, einsum: &EinSum) -> TractResult<Option<ConvSpec>> {
        let axes = einsum.axes.to_string();
        let Some(output_axes) = axes.strip_prefix("NIHW,OI->") else { return Ok(None) };
        let nchw: String = output_axes.chars().filter(|c| "NOHW".contains(*c)).collect();
        if einsum.q_params.is_some() || nchw != "NOHW" || node.inputs.len() != 2 {
            return Ok(None);
        }
        let unit_axes: Vec<usize> =
            output_axes.chars().enumerate().filter(|(_, c)| !"NOHW".contains(*c)).map(|(i, _)| i).collect();
        let fact = model.outlet_fact(node.inputs[0])?;
        let (Some(&[n, cin, rows, cols]), true) = (fact.shape.as_concrete(), fact.datum_type == f32::datum_type())
        else {
            return Ok(None);
        };
        let Some(kernel) = &model.outlet_fact(node.inputs[1])?.konst else { return Ok(None) };
        let (&[cout, k], true) = (kernel.shape(), kernel.datum_type() == f32::datum_type()) else { return Ok(None) };
        let mut shape = vec![n, cout, rows, cols];
        for &axis in &unit_axes {
            shape.insert(axis, 1);
        }
        if k != cin || fact.konst.is_some() || node.outputs[0].fact.shape.as_concrete() != Some(&shape[..]) {
            return Ok(None);
        }
        Ok(Some(ConvSpec {
            cin,
            cout,
            input: [n, cin, rows, cols],
            output: vec![n, cout, rows, cols],
            window: ConvGeometry {
                kernel: [1, 1],
                strides: [1, 1],
                dilations: [1, 1],
                pads: [0; 4],
                input: [rows, cols],
            },
            kernel: kernel.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
            bias: vec![0.; cout],
            transposed: false,
            node: node.id,
            unit_axes,
        }))
    }

    /// Our op for this convolution, reading `parts`, if it computes the output shape the graph
    /// expects.
    fn op(&self, parts: ConvParts, options: &RewriteOptions) -> Option<Box<dyn TypedOp>> {
        let w = &self.window;
        let [n, _, rows, cols] = self.input;
        if self.transposed {
            return Some(Box::new(UpConv2x2::new(&self.kernel, &self.bias, self.cout, rows, cols, parts)));
        }
        let [oh, ow] = w.output();
        if self.output != [n, self.cout, oh, ow] {
            return None;
        }
        let unit = w.strides == [1, 1] && w.dilations == [1, 1];
        Some(match w.kernel {
            [3, 3] if unit && WinogradConv::takes(self.cin, self.cout) => {
                let form = KernelForm::for_layer(self.cin, self.cout, options.low_memory);
                Box::new(WinogradConv::new(&self.kernel, &self.bias, self.cout, rows, cols, w.pads, parts, form))
            }
            [1, 1] if unit && w.pads == [0; 4] => {
                Box::new(PointwiseConv::new(&self.kernel, &self.bias, self.cout, rows * cols, parts))
            }
            _ => Box::new(GemmConv::new(&self.kernel, &self.bias, self.cout, *w, parts)),
        })
    }
}

/// Folds the per-channel `Mul`s and `Add`s by constants that follow the convolution, each the
/// only reader of the one before, into its weights and bias; returns the outlet the rewritten op
/// replaces (the last one folded).
fn fold_channel_arithmetic(model: &TypedModel, spec: &mut ConvSpec) -> TractResult<OutletId> {
    let mut outlet = OutletId::new(spec.node, 0);
    loop {
        let readers = model.outlet_successors(outlet);
        if readers.len() != 1 || model.outputs.contains(&outlet) {
            return Ok(outlet);
        }
        let node = model.node(readers[0].node);
        let Some(op) = node.op_as::<TypedBinOp>() else { return Ok(outlet) };
        let next = OutletId::new(node.id, 0);
        if node.inputs.len() != 2 || model.outlet_fact(next)?.shape != model.outlet_fact(outlet)?.shape {
            return Ok(outlet);
        }
        let Some(values) = per_channel(model, node.inputs[1 - readers[0].slot], spec.cout)? else { return Ok(outlet) };
        let per_output = spec.kernel.len() / spec.cout;
        match op.0.name() {
            "Mul" => {
                for (o, &scale) in values.iter().enumerate() {
                    spec.kernel[o * per_output..][..per_output].iter_mut().for_each(|w| *w *= scale);
                    spec.bias[o] *= scale;
                }
            }
            "Add" => spec.bias.iter_mut().zip(&values).for_each(|(b, v)| *b += v),
            _ => return Ok(outlet),
        }
        outlet = next;
    }
}

/// The `channels` values of a constant that broadcasts per channel over NCHW (a scalar, or
/// channels values along axis 1 of rank 4 or axis 0 of rank 3).
fn per_channel(model: &TypedModel, outlet: OutletId, channels: usize) -> TractResult<Option<Vec<f32>>> {
    let Some(k) = &model.outlet_fact(outlet)?.konst else { return Ok(None) };
    if k.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let values = k.try_as_plain_ram()?.as_slice::<f32>()?;
    let shape = k.shape();
    let along = |axis: usize| shape.iter().enumerate().all(|(i, &d)| d == if i == axis { channels } else { 1 });
    Ok(if values.len() == 1 && shape.len() <= 4 {
        Some(vec![values[0]; channels])
    } else if (shape.len() == 4 && along(1)) || (shape.len() == 3 && along(0)) {
        Some(values.to_vec())
    } else {
        None
    })
}

/// The inputs and channel counts of the channel Concat producing `outlet`, when the
/// convolution is its only reader and every input is a computed NCHW f32 tensor.
fn folded_concat(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Vec<(OutletId, usize)>>> {
    let producer = model.node(outlet.node);
    let Some(concat) = producer.op_as::<TypedConcat>() else { return Ok(None) };
    if concat.axis != 1 || model.outlet_successors(outlet).len() != 1 || model.outputs.contains(&outlet) {
        return Ok(None);
    }
    let mut parts = vec![];
    for &input in &producer.inputs {
        let fact = model.outlet_fact(input)?;
        match fact.shape.as_concrete() {
            Some(&[_, channels, _, _]) if fact.konst.is_none() && fact.datum_type == f32::datum_type() => {
                parts.push((input, channels))
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(parts))
}

/// The Relu (max with a constant zero) that is the only reader of `outlet`.
fn folded_relu(model: &TypedModel, outlet: OutletId) -> TractResult<Option<usize>> {
    let readers = model.outlet_successors(outlet);
    if readers.len() != 1 || model.outputs.contains(&outlet) {
        return Ok(None);
    }
    let node = model.node(readers[0].node);
    let is_max = node.op_as::<TypedBinOp>().is_some_and(|op| op.0.name() == "Max");
    if !is_max || node.inputs.len() != 2 {
        return Ok(None);
    }
    let other = node.inputs[1 - readers[0].slot];
    let zero = model.outlet_fact(other)?.konst.as_ref().is_some_and(|k| {
        k.datum_type() == f32::datum_type()
            && k.try_as_plain_ram()
                .and_then(|k| k.as_slice::<f32>().map(|v| v.iter().all(|&x| x == 0.)))
                .unwrap_or(false)
    });
    // the Relu's output must keep the convolution's shape (no broadcast by the zero)
    let same_shape = model.outlet_fact(OutletId::new(node.id, 0))?.shape == model.outlet_fact(outlet)?.shape;
    Ok((zero && same_shape).then_some(node.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_ops(m: &TypedModel, name: &str) -> usize {
        m.nodes().iter().filter(|n| n.op().name() == name).count()
    }

    /// 1x1 convolutions as tract declutters them.
    fn pointwise_einsums(m: &TypedModel) -> usize {
        m.nodes().iter().filter(|n| n.op_as::<EinSum>().is_some_and(|e| e.axes.to_string() == "NIHW,OI->NOHW")).count()
    }

    fn fixture(path: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../../tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// The model decluttered for `input`, and the same rewritten; checks both compute the same.
    fn rewritten(onnx: &[u8], input: [usize; 4]) -> (TypedModel, TypedModel) {
        rewritten_with(onnx, input, &RewriteOptions::default())
    }

    fn rewritten_with(onnx: &[u8], input: [usize; 4], options: &RewriteOptions) -> (TypedModel, TypedModel) {
        let model = tract_onnx::onnx().model_for_read(&mut &onnx[..]).unwrap();
        let typed = model.with_input_fact(0, f32::fact(input).into()).unwrap().into_typed().unwrap();
        let typed = typed.into_decluttered().unwrap();
        let mut ours = typed.clone();
        rewrite_with(&mut ours, options).unwrap();
        let x: Tensor = tract_ndarray::Array4::from_shape_fn(input, |(n, c, y, x)| {
            ((n * 7 + c * 5 + y * 3 + x) % 11) as f32 / 11.0
        })
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
        (typed, ours)
    }

    /// Inputs other than the planned ones are errors that say what was expected, never panics.
    #[test]
    fn ops_reject_unplanned_inputs() {
        let parts = ConvParts { sizes: vec![4, 2], relu: false };
        let window = ConvGeometry { kernel: [3, 3], strides: [2, 2], dilations: [1, 1], pads: [1; 4], input: [8, 8] };
        let ops: Vec<Box<dyn TypedOp>> = vec![
            Box::new(WinogradConv::new(
                &[0.; 5 * 6 * 9],
                &[0.; 5],
                5,
                8,
                8,
                [1; 4],
                parts.clone(),
                KernelForm::Transformed,
            )),
            Box::new(PointwiseConv::new(&[0.; 5 * 6], &[0.; 5], 5, 64, parts.clone())),
            Box::new(GemmConv::new(&[0.; 5 * 6 * 9], &[0.; 5], 5, window, parts)),
        ];
        let input = |c: usize, h: usize| Tensor::zero::<f32>(&[1, c, h, 8]).unwrap().into_tvalue();
        for op in &ops {
            let eval = |inputs: TVec<TValue>| op.as_op().eval_out_of_plan(inputs).map(|out| out.unwrap());
            // the right inputs work
            let out = eval(tvec![input(4, 8), input(2, 8)]).unwrap();
            assert_eq!(out[0].shape()[..2], [1, 5]);
            for (inputs, expected) in [
                (tvec![input(4, 8)], "expected 2 inputs"),
                (tvec![input(4, 8), input(3, 8)], "expected [1, 2, 8, 8]"),
                (tvec![input(4, 9), input(2, 9)], "planned for"),
            ] {
                let err = eval(inputs).unwrap_err().to_string();
                assert!(err.contains(expected), "{}: {err}", op.name());
            }
        }
    }

    #[test]
    fn unet_3x3_convolutions_concats_and_relus_are_ours() {
        let (tract, ours) = rewritten(&fixture("unet/unet_transpose.onnx"), [2, 1, 64, 64]);
        let (convs, winograd) = (count_ops(&tract, "Conv"), count_ops(&ours, "WinogradConv"));
        // the first convolution (1 input channel) goes through im2col; the last (1x1, an EinSum
        // once decluttered) is pointwise
        assert_eq!(count_ops(&ours, "GemmConv") + winograd, convs);
        assert!(count_ops(&ours, "GemmConv") == 1 && count_ops(&ours, "PointwiseConv") == 1);
        assert_eq!(count_ops(&ours, "Conv"), 0);
        assert!(pointwise_einsums(&tract) == 1 && pointwise_einsums(&ours) == 0);
        assert_eq!(count_ops(&tract, "Concat"), 2);
        assert_eq!(count_ops(&ours, "Concat"), 0, "both decoder Concats feed a 3x3 convolution only");
        assert!(count_ops(&ours, "Max") < count_ops(&tract, "Max"));
        // and its 2x2 stride-2 ConvTransposes (the outputs agree: `rewritten` checks them)
        assert!(count_ops(&tract, "Deconv") > 0);
        assert_eq!(count_ops(&ours, "UpConv2x2"), count_ops(&tract, "Deconv"));
        assert_eq!(count_ops(&ours, "Deconv"), 0);
        // and its 2x2 max pools
        assert!(count_ops(&tract, "MaxPool") > 0);
        assert_eq!(count_ops(&ours, "MaxPool2x2"), count_ops(&tract, "MaxPool"));
        assert_eq!(count_ops(&ours, "MaxPool"), 0);
    }

    #[test]
    fn low_memory_plans_transform_the_kernels_per_convolution() {
        let options = RewriteOptions { low_memory: true };
        let (_, ours) = rewritten_with(&fixture("unet/unet_transpose.onnx"), [2, 1, 64, 64], &options);
        let (_, fast) = rewritten(&fixture("unet/unet_transpose.onnx"), [2, 1, 64, 64]);
        assert_eq!(count_ops(&ours, "WinogradConv"), count_ops(&fast, "WinogradConv"));
        let per_convolution = |m: &TypedModel| {
            m.nodes()
                .iter()
                .filter(|n| n.op().info().unwrap().iter().any(|i| i.contains("kernel transformed per convolution")))
                .count()
        };
        assert_eq!(per_convolution(&ours), count_ops(&ours, "WinogradConv"));
        assert_eq!(per_convolution(&fast), 0);
    }

    /// Unfused BatchNormalization after 1x1 convolutions (left as Mul + Add by tract) is
    /// folded into our weights.
    #[test]
    fn batch_norm_after_pointwise_convolutions_is_folded() {
        let (tract, ours) = rewritten(&fixture("grad/resnet_bottleneck_op13_bn.onnx"), [2, 3, 64, 64]);
        assert!(pointwise_einsums(&tract) > 0 && pointwise_einsums(&ours) == 0);
        assert!(count_ops(&ours, "Mul") < count_ops(&tract, "Mul"), "{} Mul left", count_ops(&ours, "Mul"));
    }
}
