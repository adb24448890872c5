//! 1x1, stride-1 convolutions on the CPU as plain matrix products.
//!
//! In NCHW a 1x1 convolution of one image is `Y[cout][pixels] = W[cout][cin] X[cin][pixels]`: no
//! data movement is needed. tract's plan moves the channel axis of every input first (a
//! `MoveAxis` copy that cost ResNet50's gradient graph more time than the products themselves:
//! docs/BENCHMARKS.md). [`PointwiseConv`] multiplies in place ([`sgemm`]), per image
//! and range of pixels, starting from the bias; each range goes in pieces whose outputs fit in
//! a core's cache, so that the bias, the product and a folded Relu pass over them there and not
//! in memory; a folded channel Concat becomes one product per input.

use crate::conv::{executor_threads, run_tasks, ConvParts, ConvWeights, OutPtr};
use crate::sgemm::sgemm;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Pixels per task at least: wide enough for efficient products.
const MIN_PIXELS: usize = 512;
/// Bytes of output a piece of a task's range aims at: within a core's L2 cache.
const PIECE_BYTES: usize = 512 << 10;
/// Pixels per piece at least, whatever the output channels: wide enough for efficient products.
const MIN_PIECE: usize = 64;

/// A 1x1, stride-1, unpadded, ungrouped f32 convolution in NCHW with constant weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointwiseConv {
    /// Pixels per image (rows x columns).
    pixels: usize,
    /// Weights `[cout][cin]`.
    conv: ConvWeights,
}

impl PointwiseConv {
    /// `kernel` is `[cout][cin]` (any trailing 1x1), `bias` has cout values.
    pub fn new(kernel: &[f32], bias: &[f32], cout: usize, pixels: usize, parts: ConvParts) -> Self {
        assert_eq!(kernel.len(), cout * parts.channels());
        assert_eq!(bias.len(), cout);
        PointwiseConv { pixels, conv: ConvWeights::new(kernel.to_vec(), bias, parts) }
    }

    /// `images` NCHW images into `y`; `inputs` holds one batch per part of the input channels.
    pub fn convolve(&self, inputs: &[&[f32]], images: usize, y: &mut [f32]) {
        let (cin, cout, pixels) = (self.conv.parts.channels(), self.conv.cout, self.pixels);
        assert_eq!(inputs.len(), self.conv.parts.sizes.len());
        for (x, channels) in inputs.iter().zip(&self.conv.parts.sizes) {
            assert_eq!(x.len(), images * channels * pixels);
        }
        assert_eq!(y.len(), images * cout * pixels);
        if pixels == 0 {
            return;
        }
        let threads = executor_threads();
        // enough ranges for every thread twice over, none narrower than MIN_PIXELS
        let ranges = (2 * threads).div_ceil(images).min(pixels.div_ceil(MIN_PIXELS)).max(1);
        let width = pixels.div_ceil(ranges);
        let tasks: Vec<(usize, usize)> =
            (0..images).flat_map(|n| (0..pixels).step_by(width).map(move |p| (n, p))).collect();
        let piece = (PIECE_BYTES / (4 * cout)).max(MIN_PIECE);
        let out = OutPtr(y.as_mut_ptr());
        let run = |&(n, first): &(usize, usize)| {
            let end = pixels.min(first + width);
            for p0 in (first..end).step_by(piece) {
                let width = piece.min(end - p0);
                let dst = |o: usize| ((n * cout + o) * pixels + p0) as isize;
                // SAFETY: each task writes its own image and pixel range of `y`; the products
                // read the weights, the bias and `inputs`, all in bounds (strides: a row of the
                // weights is cin long, a channel of an image `pixels`).
                unsafe {
                    for o in 0..cout {
                        std::slice::from_raw_parts_mut(out.get().offset(dst(o)), width).fill(self.conv.bias[o]);
                    }
                    let mut channel = 0;
                    for (x, &channels) in inputs.iter().zip(&self.conv.parts.sizes) {
                        sgemm(
                            self.conv.level,
                            cout,
                            width,
                            channels,
                            out.get().offset(dst(0)),
                            pixels,
                            true,
                            self.conv.weights.as_ptr().add(channel),
                            cin,
                            x.as_ptr().add(n * channels * pixels + p0),
                            pixels,
                        );
                        channel += channels;
                    }
                    if self.conv.parts.relu {
                        for o in 0..cout {
                            std::slice::from_raw_parts_mut(out.get().offset(dst(o)), width)
                                .iter_mut()
                                .for_each(|v| *v = v.max(0.));
                        }
                    }
                }
            }
        };
        run_tasks(&tasks, run);
    }
}

impl Op for PointwiseConv {
    fn name(&self) -> StaticName {
        "PointwiseConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("1x1 {}", self.conv.describe())])
    }

    op_as_typed_op!();
}

impl EvalOp for PointwiseConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let output_hw = |shape: [usize; 2]| {
            ensure!(
                shape[0] * shape[1] == self.pixels,
                "PointwiseConv planned for {} pixels, given {shape:?}",
                self.pixels
            );
            Ok(shape)
        };
        self.conv.evaluate(&inputs, output_hw, |x, images, y| self.convolve(x, images, y))
    }
}

impl TypedOp for PointwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        Ok(tvec!(f32::fact([shape[0].clone(), self.conv.cout.to_dim(), shape[2].clone(), shape[3].clone()])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::test_support::{levels, random, reference, threads, unit_window};

    fn check(images: usize, sizes: &[usize], cout: usize, rows: usize, cols: usize, relu: bool, threads_: usize) {
        let cin: usize = sizes.iter().sum();
        let weights = random(cout * cin, 1);
        let bias = random(cout, 2);
        let inputs: Vec<Vec<f32>> =
            sizes.iter().enumerate().map(|(k, &c)| random(images * c * rows * cols, 3 + k as u64)).collect();
        let parts = ConvParts { sizes: sizes.to_vec(), relu };
        let reference =
            reference(&weights, &bias, &inputs, &parts, images, cout, &unit_window(1, [0; 4], [rows, cols]));
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        for level in levels() {
            let mut conv = PointwiseConv::new(&weights, &bias, cout, rows * cols, parts.clone());
            conv.conv.level = level;
            assert!(conv.info().unwrap()[0].ends_with(&format!(", {level}")));
            let mut y = vec![f32::NAN; images * cout * rows * cols];
            let slices: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
            threads(threads_, || conv.convolve(&slices, images, &mut y));
            let err = y.iter().zip(&reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-5 * scale.max(1.0), "{level} {images}x{sizes:?}->{cout} {rows}x{cols}: error {err}");
        }
    }

    #[test]
    fn matches_direct_convolution() {
        check(1, &[3], 5, 7, 9, false, 1);
        check(3, &[16], 8, 40, 30, true, 2);
        // several ranges per image, a folded Concat
        check(1, &[8, 5], 7, 50, 41, true, 2);
        check(2, &[4, 4, 3], 6, 33, 65, false, 1);
        // ranges in several pieces (output channels enough that a piece is MIN_PIECE pixels)
        check(2, &[5, 3], PIECE_BYTES / (4 * MIN_PIECE) + 3, 10, 23, true, 2);
    }
}
