//! Graph rewrites that keep U-Nets and classifiers on the GPU.
//!
//! tract-cuda translates convolutions, matrix products, element-wise and copy operators, but not
//! MaxPool, ConvTranspose (tract's `Deconv`) or the strided subsampling (`Downsample`) that
//! tract makes of a 1x1 stride-2 convolution; each of those costs a device-to-host round trip
//! and runs on the CPU (where a U-Net spent most of its time on an H200: docs/BENCHMARKS.md).
//! Their common cases are re-expressed here with operators it does translate, on the typed
//! model (shapes known) before the CUDA translation:
//!
//! - MaxPool with kernel = stride, no padding, sizes divisible: split each spatial axis into
//!   (size / k, k), take the max over each k axis, drop them;
//! - any other 2D MaxPool without dilation (the classifier stem's 3x3 stride-2 padded pool):
//!   per spatial axis, pad with -inf (or trim unused tail elements) to `m * s`, split into
//!   `(m, s)`, and take the max over the window's `k` shifted slices (tap `t = q * s + r` is
//!   rows `q..q + out` of column `r`);
//! - ConvTranspose with kernel = stride, no padding (the U-Net up-convolution): a 1x1
//!   convolution to `C_out * k_h * k_w` channels, then a depth-to-space reshuffle;
//! - Downsample (keep every s-th element): split the axis into (size / s, s) and keep the
//!   first of each s;
//! - bilinear Resize by exactly 2 with half-pixel centres (PyTorch's `align_corners=False`
//!   upsampling): per axis, `0.75 * x[i] + 0.25 * x[i -/+ 1]` (edges repeated) for the even / odd
//!   outputs, interleaved.
//!
//! A max over a few elements is a chain of element-wise maxima of slices, never a `Reduce`:
//! tract-cuda's Reduce launches a thread block per output element, which made the U-Net's pools
//! most of its GPU time (docs/BENCHMARKS.md).
//!
//! Each rewrite computes the same numbers as the operator it replaces (up to float summation
//! order); the tests check that on the CPU, where no GPU is needed.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::model::Rewriter;
use tract_onnx::tract_core::ops::array::{Slice, TypedConcat};
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, Deconv, KernelFormat, MaxPool, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::downsample::Downsample;
use tract_onnx::tract_core::ops::math::{add, max, mul};
use tract_onnx::tract_core::ops::nn::resize::{CoordTransformer, Interpolator, Resize};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Applies every rewrite until none applies.
pub fn rewrite_for_gpu(model: &mut TypedModel) -> TractResult<()> {
    Rewriter::default()
        .with_rule_for("maxpool-tiles-as-maxima", maxpool_tiles_as_maxima)
        .with_rule_for("maxpool-windows-as-slices", maxpool_windows_as_slices)
        .with_rule_for("deconv-as-conv-and-shuffle", deconv_as_conv)
        .with_rule_for("downsample-as-slice", downsample_as_slice)
        .with_rule_for("bilinear-x2-as-shifts", bilinear_x2_as_shifts)
        .rewrite(&(), model)
}

/// Concrete spatial sizes of an NCHW input, with the kernel = stride, unpadded, undilated pool
/// spec this module handles; `None` for anything else.
fn tiled_spatial(model: &TypedModel, node: &TypedNode, spec: &PoolSpec) -> TractResult<Option<[usize; 2]>> {
    let shape = model.outlet_fact(node.inputs[0])?.shape.as_concrete().map(|s| s.to_vec());
    let Some(shape) = shape else { return Ok(None) };
    let strides = spec.strides();
    let unpadded = match &spec.padding {
        PaddingSpec::Valid => true,
        PaddingSpec::Explicit(before, after) => before.iter().chain(after.iter()).all(|p| *p == 0),
        _ => false,
    };
    let ok = spec.data_format == DataFormat::NCHW
        && shape.len() == 4
        && spec.kernel_shape.len() == 2
        && spec.kernel_shape[..] == strides[..]
        && spec.dilations().iter().all(|d| *d == 1)
        && unpadded;
    Ok(ok.then_some([shape[2], shape[3]]))
}

fn maxpool_tiles_as_maxima(
    _: &(),
    model: &TypedModel,
    node: &TypedNode,
    name: &str,
    op: &MaxPool,
) -> TractResult<Option<TypedModelPatch>> {
    let Some([h, w]) = tiled_spatial(model, node, &op.pool_spec)? else { return Ok(None) };
    let (kh, kw) = (op.pool_spec.kernel_shape[0], op.pool_spec.kernel_shape[1]);
    if op.with_index_outputs.is_some() || h % kh != 0 || w % kw != 0 {
        return Ok(None);
    }
    let mut patch = TypedModelPatch::default();
    let mut x = patch.tap_model(model, node.inputs[0])?;
    // [N, C, H, W] -> [N, C, H/kh, kh, W/kw, kw]
    x = patch.wire_node(format!("{name}.split_h"), split_axis(2, h, kh), &[x])?[0];
    x = patch.wire_node(format!("{name}.split_w"), split_axis(4, w, kw), &[x])?[0];
    for (axis, k) in [(5, kw), (3, kh)] {
        let n = |what: &str| format!("{name}.ax{axis}.{what}");
        let taps = (0..k)
            .map(|i| Ok(patch.wire_node(n(&format!("t{i}")), Slice::new(axis, i, i + 1), &[x])?[0]))
            .collect::<TractResult<Vec<_>>>()?;
        x = max_of(&mut patch, &n("max"), &taps)?;
        x = patch.wire_node(n("rm"), AxisOp::Rm(axis), &[x])?[0];
    }
    patch.shunt_outside(model, node.id.into(), x)?;
    Ok(Some(patch))
}

fn maxpool_windows_as_slices(
    _: &(),
    model: &TypedModel,
    node: &TypedNode,
    name: &str,
    op: &MaxPool,
) -> TractResult<Option<TypedModelPatch>> {
    let spec = &op.pool_spec;
    let input = model.outlet_fact(node.inputs[0])?;
    let Some(mut shape) = input.shape.as_concrete().map(|s| s.to_vec()) else { return Ok(None) };
    if tiled_spatial(model, node, spec)?
        .is_some_and(|[h, w]| h % spec.kernel_shape[0] == 0 && w % spec.kernel_shape[1] == 0)
        || op.with_index_outputs.is_some()
        || spec.data_format != DataFormat::NCHW
        || shape.len() != 4
        || spec.kernel_shape.len() != 2
        || spec.dilations().iter().any(|d| *d != 1)
        || input.datum_type != f32::datum_type()
    {
        return Ok(None);
    }
    let strides = spec.strides();
    let padded = spec.padding.compute(&shape[2..], &spec.kernel_shape, &[1, 1], &strides);
    let mut patch = TypedModelPatch::default();
    let mut x = patch.tap_model(model, node.inputs[0])?;
    for (d, pad) in padded.iter().enumerate() {
        let (axis, len, k, s, out) = (2 + d, shape[2 + d], spec.kernel_shape[d], strides[d], pad.convoluted);
        let n = |what: &str| format!("{name}.ax{axis}.{what}");
        // Tap t = q * s + r of output i reads padded element i * s + t = (i + q) * s + r.
        let m = out + (k - 1) / s;
        let total = m * s;
        let mut dims = shape.clone();
        let mut cur = len;
        if pad.pad_before > 0 {
            dims[axis] = pad.pad_before;
            let fill = patch.add_const(n("pad_before"), neg_inf(&dims)?)?;
            x = patch.wire_node(n("padded_before"), TypedConcat::new(axis), &[fill, x])?[0];
            cur += pad.pad_before;
        }
        if cur > total {
            // Tail elements no window reaches.
            x = patch.wire_node(n("trim"), Slice::new(axis, 0, total), &[x])?[0];
        } else if cur < total {
            dims[axis] = total - cur;
            let fill = patch.add_const(n("pad_after"), neg_inf(&dims)?)?;
            x = patch.wire_node(n("padded_after"), TypedConcat::new(axis), &[x, fill])?[0];
        }
        x = patch.wire_node(n("split"), split_axis(axis, total, s), &[x])?[0];
        let mut taps = vec![];
        for t in 0..k {
            let (q, r) = (t / s, t % s);
            let rows = patch.wire_node(n(&format!("t{t}.rows")), Slice::new(axis, q, q + out), &[x])?[0];
            let col = patch.wire_node(n(&format!("t{t}.col")), Slice::new(axis + 1, r, r + 1), &[rows])?[0];
            taps.push(col);
        }
        // the max over the taps, then the length-1 column axis dropped
        x = max_of(&mut patch, &n("max"), &taps)?;
        x = patch.wire_node(n("rm"), AxisOp::Rm(axis + 1), &[x])?[0];
        shape[axis] = out;
    }
    patch.shunt_outside(model, node.id.into(), x)?;
    Ok(Some(patch))
}

/// The element-wise max of `taps` (same shapes), as a chain of binary maxima.
fn max_of(patch: &mut TypedModelPatch, name: &str, taps: &[OutletId]) -> TractResult<OutletId> {
    let Some((first, rest)) = taps.split_first() else { return Err(TractError::msg("a max over no taps")) };
    let mut acc = *first;
    for (i, tap) in rest.iter().enumerate() {
        acc = patch.wire_node(format!("{name}{i}"), max(), &[acc, *tap])?[0];
    }
    Ok(acc)
}

/// A constant f32 tensor of `-inf`, the max's identity, for padding.
fn neg_inf(shape: &[usize]) -> TractResult<Tensor> {
    tensor0(f32::NEG_INFINITY).broadcast_scalar_to_shape(shape)
}

/// `[.., len, ..] -> [.., len / k, k, ..]` at `axis`.
fn split_axis(axis: usize, len: usize, k: usize) -> AxisOp {
    AxisOp::Reshape(axis, tvec!(len.to_dim()), tvec!((len / k).to_dim(), k.to_dim()))
}

fn deconv_as_conv(
    _: &(),
    model: &TypedModel,
    node: &TypedNode,
    name: &str,
    op: &Deconv,
) -> TractResult<Option<TypedModelPatch>> {
    let Some([h, w]) = tiled_spatial(model, node, &op.pool_spec)? else { return Ok(None) };
    let kernel = model.outlet_fact(node.inputs[1])?.konst.clone();
    let bias = model.outlet_fact(node.inputs[2])?.konst.clone();
    let (Some(kernel), Some(bias)) = (kernel, bias) else { return Ok(None) };
    let (kh, kw) = (op.pool_spec.kernel_shape[0], op.pool_spec.kernel_shape[1]);
    let (cin, cout) = (op.pool_spec.input_channels, op.pool_spec.output_channels);
    // tract holds ConvTranspose weights as OIHW: [C_out, C_in, kh, kw].
    if op.group != 1
        || op.kernel_format != KernelFormat::OIHW
        || op.adjustments.iter().any(|a| *a != 0)
        || kernel.shape() != [cout, cin, kh, kw]
        || kernel.datum_type() != f32::datum_type()
    {
        return Ok(None);
    }
    let bias_values: Vec<f32> = match bias.len() {
        1 => vec![bias.cast_to_scalar::<f32>()?; cout],
        n if n == cout => bias.cast_to::<f32>()?.to_plain_array_view::<f32>()?.iter().copied().collect(),
        _ => return Ok(None),
    };
    // 1x1 kernel [(co, a, b), ci, 1, 1] and the bias repeated over each co's kh*kw outputs.
    let k = kernel.to_plain_array_view::<f32>()?;
    let taps = kh * kw;
    let mut weights = Vec::with_capacity(cout * taps * cin);
    for co in 0..cout {
        for a in 0..kh {
            for b in 0..kw {
                weights.extend((0..cin).map(|ci| k[[co, ci, a, b]]));
            }
        }
    }
    let weights = tensor1(&weights).into_shape(&[cout * taps, cin, 1, 1])?;
    let bias: Vec<f32> = bias_values.iter().flat_map(|b| std::iter::repeat_n(*b, taps)).collect();

    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, node.inputs[0])?;
    let wk = patch.add_const(format!("{name}.kernel1x1"), weights)?;
    let wb = patch.add_const(format!("{name}.bias1x1"), tensor1(&bias))?;
    let conv = Conv {
        pool_spec: PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec!(1, 1),
            padding: PaddingSpec::Valid,
            dilations: None,
            strides: None,
            input_channels: cin,
            output_channels: cout * taps,
        },
        kernel_fmt: KernelFormat::OIHW,
        group: 1,
        q_params: None,
    };
    let mut y = patch.wire_node(format!("{name}.conv1x1"), conv, &[x, wk, wb])?[0];
    // [N, co*kh*kw, H, W] -> [N, co, kh, kw, H, W] -> [N, co, H, kh, W, kw] -> [N, co, H*kh, W*kw]
    let d = |v: usize| v.to_dim();
    let steps = [
        AxisOp::Reshape(1, tvec!(d(cout * taps)), tvec!(d(cout), d(kh), d(kw))),
        AxisOp::Move(3, 5),
        AxisOp::Move(2, 3),
        AxisOp::Reshape(2, tvec!(d(h), d(kh), d(w), d(kw)), tvec!(d(h * kh), d(w * kw))),
    ];
    for (i, step) in steps.into_iter().enumerate() {
        y = patch.wire_node(format!("{name}.shuffle{i}"), step, &[y])?[0];
    }
    patch.shunt_outside(model, node.id.into(), y)?;
    Ok(Some(patch))
}

fn downsample_as_slice(
    _: &(),
    model: &TypedModel,
    node: &TypedNode,
    name: &str,
    op: &Downsample,
) -> TractResult<Option<TypedModelPatch>> {
    let fact = model.outlet_fact(node.inputs[0])?;
    let Some(len) = fact.shape[op.axis].as_i64().map(|l| l as usize) else { return Ok(None) };
    let s = op.stride;
    if s <= 1 || op.modulo != 0 || len % s as usize != 0 || fact.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let s = s as usize;
    let mut patch = TypedModelPatch::default();
    let mut x = patch.tap_model(model, node.inputs[0])?;
    x = patch.wire_node(format!("{name}.split"), split_axis(op.axis, len, s), &[x])?[0];
    x = patch.wire_node(format!("{name}.first"), Slice::new(op.axis + 1, 0, 1), &[x])?[0];
    x = patch.wire_node(format!("{name}.rm"), AxisOp::Rm(op.axis + 1), &[x])?[0];
    patch.shunt_outside(model, node.id.into(), x)?;
    Ok(Some(patch))
}

fn bilinear_x2_as_shifts(
    _: &(),
    model: &TypedModel,
    node: &TypedNode,
    name: &str,
    op: &Resize,
) -> TractResult<Option<TypedModelPatch>> {
    let half_pixel = matches!(op.coord_transformer, CoordTransformer::HalfPixel | CoordTransformer::PytorchHalfPixel);
    let input = model.outlet_fact(node.inputs[0])?;
    let (Some(from), Some(to)) = (input.shape.as_concrete(), node.outputs[0].fact.shape.as_concrete()) else {
        return Ok(None);
    };
    if op.interpolator != Interpolator::Linear || !half_pixel || input.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let doubled: Vec<usize> = (0..from.len()).filter(|&a| to[a] == 2 * from[a] && from[a] >= 2).collect();
    if from.len() != to.len()
        || doubled.is_empty()
        || (0..from.len()).any(|a| to[a] != from[a] && !doubled.contains(&a))
    {
        return Ok(None);
    }
    let mut patch = TypedModelPatch::default();
    let mut x = patch.tap_model(model, node.inputs[0])?;
    let rank = from.len();
    let quarter = patch.add_const(format!("{name}.quarter"), tensor0(0.25f32).broadcast_into_rank(rank)?)?;
    let three_quarters = patch.add_const(format!("{name}.3quarters"), tensor0(0.75f32).broadcast_into_rank(rank)?)?;
    for a in doubled {
        let len = from[a];
        let n = |what: &str| format!("{name}.ax{a}.{what}");
        let slice = |patch: &mut TypedModelPatch, what: &str, start: usize, end: usize, x| {
            patch.wire_node(n(what), Slice::new(a, start, end), &[x]).map(|o| o[0])
        };
        let first = slice(&mut patch, "first", 0, 1, x)?;
        let last = slice(&mut patch, "last", len - 1, len, x)?;
        let head = slice(&mut patch, "head", 0, len - 1, x)?;
        let tail = slice(&mut patch, "tail", 1, len, x)?;
        let before = patch.wire_node(n("before"), TypedConcat::new(a), &[first, head])?[0];
        let after = patch.wire_node(n("after"), TypedConcat::new(a), &[tail, last])?[0];
        let centre = patch.wire_node(n("centre"), mul(), &[x, three_quarters])?[0];
        let mut halves = vec![];
        for (what, side) in [("even", before), ("odd", after)] {
            let q = patch.wire_node(n(&format!("{what}.q")), mul(), &[side, quarter])?[0];
            let v = patch.wire_node(n(what), add(), &[centre, q])?[0];
            halves.push(patch.wire_node(n(&format!("{what}.axis")), AxisOp::Add(a + 1), &[v])?[0]);
        }
        x = patch.wire_node(n("interleave"), TypedConcat::new(a + 1), &halves)?[0];
        let (l, two) = (len.to_dim(), 2.to_dim());
        x = patch.wire_node(n("merge"), AxisOp::Reshape(a, tvec!(l, two), tvec!((2 * len).to_dim())), &[x])?[0];
    }
    patch.shunt_outside(model, node.id.into(), x)?;
    Ok(Some(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OnnxModel;
    use std::path::PathBuf;
    use tract_onnx::tract_core::ops::nn::Reduce;

    fn fixture(path: &str) -> OnnxModel {
        OnnxModel::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)).unwrap()
    }

    fn count(model: &TypedModel, op: &str) -> usize {
        model.nodes.iter().filter(|n| n.op.name() == op).count()
    }

    /// Runs `model` as decluttered and as rewritten, on the CPU, on the same seeded input.
    fn check(model: &OnnxModel, shape: [usize; 4], replaced: &[&str]) {
        let typed = model
            .graph
            .clone()
            .with_input_fact(0, f32::fact(shape).into())
            .unwrap()
            .into_typed()
            .unwrap()
            .into_decluttered()
            .unwrap();
        let mut rewritten = typed.clone();
        rewrite_for_gpu(&mut rewritten).unwrap();
        for op in replaced {
            assert!(count(&typed, op) > 0, "the fixture has no {op} to rewrite");
            assert_eq!(count(&rewritten, op), 0, "{op} left after the rewrite");
        }
        // slow on the GPU for small axes: the rewrites use element-wise maxima instead
        let reduces = |m: &TypedModel| m.nodes.iter().filter(|n| n.op_is::<Reduce>()).count();
        assert_eq!(reduces(&rewritten), reduces(&typed), "the rewrite added a Reduce");
        let n: usize = shape.iter().product();
        let mut state = 12345u64;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect();
        let input = tract_ndarray::Array4::from_shape_vec(shape, data).unwrap();
        let run = |m: TypedModel| {
            let out = m.into_runnable().unwrap().run(tvec!(Tensor::from(input.clone()).into_tvalue())).unwrap();
            out[0].to_plain_array_view::<f32>().unwrap().to_owned()
        };
        let (a, b) = (run(typed), run(rewritten));
        assert_eq!(a.shape(), b.shape());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = a.iter().zip(b.iter()).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-5 * scale, "max abs difference {diff} (output scale {scale})");
    }

    #[test]
    fn unet_maxpool_and_convtranspose_are_rewritten_exactly() {
        check(&fixture("unet/unet_transpose.onnx"), [2, 1, 64, 64], &["MaxPool", "Deconv"]);
    }

    #[test]
    fn unet_bilinear_upsampling_is_rewritten_exactly() {
        check(&fixture("unet/unet_resize.onnx"), [2, 3, 64, 64], &["MaxPool", "Resize"]);
    }

    #[test]
    fn classifier_downsample_is_rewritten_exactly() {
        check(&fixture("classifier/tiny_classifier.onnx"), [1, 3, 64, 64], &["Downsample"]);
    }

    #[test]
    fn classifier_stem_maxpool_is_rewritten_exactly() {
        // The stem's 3x3 stride-2 pool with padding 1 (kernel != stride), at even and odd sizes.
        check(&fixture("classifier/tiny_classifier.onnx"), [1, 3, 64, 64], &["MaxPool", "Downsample"]);
        check(&fixture("classifier/tiny_classifier.onnx"), [2, 3, 67, 61], &["MaxPool"]);
    }

    #[test]
    fn what_cannot_be_expressed_is_left_alone() {
        // A dilated pool has no rewrite: kept as is, and the model still runs the same.
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 2, 9, 9])).unwrap();
        let spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec!(2, 2),
            padding: PaddingSpec::Valid,
            dilations: Some(tvec!(2, 2)),
            strides: Some(tvec!(1, 1)),
            input_channels: 2,
            output_channels: 2,
        };
        let y = model.wire_node("pool", MaxPool::new(spec, None), &[x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let mut rewritten = model.clone();
        rewrite_for_gpu(&mut rewritten).unwrap();
        assert_eq!(count(&rewritten, "MaxPool"), 1);
    }
}
