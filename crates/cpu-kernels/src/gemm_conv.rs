//! The other 2D convolutions on the CPU (strided, larger kernels, few input channels — a
//! ResNet's 7x7 stride-2 stem, its stride-2 convolutions, a U-Net's first layer) as im2col +
//! matrix product, a block of output rows at a time.
//!
//! tract does the same in principle, but spends much of its time building the whole patch matrix
//! (the ResNet stem: docs/BENCHMARKS.md). [`GemmConv`] gathers one
//! block's patch matrix `[cin x kh x kw][pixels]` into a per-thread buffer that stays in cache and
//! multiplies it ([`sgemm`]), starting from the bias; a folded Relu is applied
//! while the block is in cache.

use crate::conv::{executor_threads, run_tasks, with_buffer, ConvParts, ConvWeights, OutPtr};
use crate::sgemm::sgemm;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Patch matrix bytes per block at most (one thread's cache share).
const BLOCK_BYTES: usize = 1 << 20;

/// Geometry of a 2D convolution: kernel, strides, dilations, zero padding (top, left, bottom,
/// right), input rows and columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    pub pads: [usize; 4],
    pub input: [usize; 2],
}

impl ConvGeometry {
    /// Output rows and columns (0 when the kernel does not fit).
    pub fn output(&self) -> [usize; 2] {
        std::array::from_fn(|a| {
            let span = self.dilations[a] * (self.kernel[a] - 1) + 1;
            let padded = self.input[a] + self.pads[a] + self.pads[a + 2];
            if padded < span {
                0
            } else {
                (padded - span) / self.strides[a] + 1
            }
        })
    }
}

/// An ungrouped f32 convolution in NCHW with constant weights, by im2col + matrix product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GemmConv {
    window: ConvGeometry,
    /// Weights `[cout][cin x kh x kw]`.
    conv: ConvWeights,
}

impl GemmConv {
    /// `kernel` is `[cout][cin][kh][kw]`, `bias` has cout values.
    pub fn new(kernel: &[f32], bias: &[f32], cout: usize, window: ConvGeometry, parts: ConvParts) -> Self {
        assert_eq!(kernel.len(), cout * parts.channels() * window.kernel[0] * window.kernel[1]);
        assert_eq!(bias.len(), cout);
        assert!(window.strides.iter().chain(&window.dilations).all(|&s| s > 0));
        GemmConv { window, conv: ConvWeights::new(kernel.to_vec(), bias, parts) }
    }

    /// `images` NCHW images into `y`; `inputs` holds one batch per part of the input channels.
    pub fn convolve(&self, inputs: &[&[f32]], images: usize, y: &mut [f32]) {
        let w = &self.window;
        let [rows, cols] = w.input;
        let [oh, ow] = w.output();
        let (cout, plane) = (self.conv.cout, rows * cols);
        assert_eq!(inputs.len(), self.conv.parts.sizes.len());
        for (x, channels) in inputs.iter().zip(&self.conv.parts.sizes) {
            assert_eq!(x.len(), images * channels * plane);
        }
        assert_eq!(y.len(), images * cout * oh * ow);
        if oh == 0 || ow == 0 {
            return;
        }
        let depth = self.conv.parts.channels() * w.kernel[0] * w.kernel[1];
        let threads = executor_threads();
        // output rows per block: the patches within BLOCK_BYTES, and blocks for every thread
        let mut block = (BLOCK_BYTES / (depth * ow * 4).max(1)).clamp(1, oh);
        while block > 1 && images * oh.div_ceil(block) < 2 * threads {
            block = block.div_ceil(2);
        }
        let tasks: Vec<(usize, usize)> =
            (0..images).flat_map(|n| (0..oh).step_by(block).map(move |r| (n, r))).collect();
        let out = OutPtr(y.as_mut_ptr());
        let run = |&(n, oy0): &(usize, usize)| {
            let block_rows = block.min(oh - oy0);
            let pixels = block_rows * ow;
            let planes = self.conv.parts.image_planes(inputs, n, plane);
            with_buffer(depth * pixels, |patches| {
                let mut k = 0;
                for plane in planes {
                    for ky in 0..w.kernel[0] {
                        for kx in 0..w.kernel[1] {
                            self.gather(plane, [ky, kx], oy0, block_rows, &mut patches[k * pixels..][..pixels]);
                            k += 1;
                        }
                    }
                }
                let at = |o: usize| ((n * cout + o) * oh + oy0) * ow;
                // SAFETY: each task writes its own image and output rows of `y`; the product reads
                // the weights ([cout][depth]) and the patches ([depth][pixels]), in bounds.
                unsafe {
                    for o in 0..cout {
                        std::slice::from_raw_parts_mut(out.get().add(at(o)), pixels).fill(self.conv.bias[o]);
                    }
                    sgemm(
                        self.conv.level,
                        cout,
                        pixels,
                        depth,
                        out.get().add(at(0)),
                        oh * ow,
                        true,
                        self.conv.weights.as_ptr(),
                        depth,
                        patches.as_ptr(),
                        pixels,
                    );
                    if self.conv.parts.relu {
                        for o in 0..cout {
                            let values = std::slice::from_raw_parts_mut(out.get().add(at(o)), pixels);
                            values.iter_mut().for_each(|v| *v = v.max(0.));
                        }
                    }
                }
            })
        };
        run_tasks(&tasks, run);
    }

    /// One row of the patch matrix: input `plane` under kernel tap `[ky, kx]` for output rows
    /// `oy0..oy0 + rows`, zero where the tap falls in the padding.
    fn gather(&self, plane: &[f32], [ky, kx]: [usize; 2], oy0: usize, rows: usize, dst: &mut [f32]) {
        let w = &self.window;
        let [in_rows, in_cols] = w.input;
        let ow = w.output()[1];
        let (sx, dx) = (w.strides[1], (kx * w.dilations[1]) as isize - w.pads[1] as isize);
        for (r, dst) in dst.chunks_exact_mut(ow).take(rows).enumerate() {
            let y = ((oy0 + r) * w.strides[0] + ky * w.dilations[0]) as isize - w.pads[0] as isize;
            if y < 0 || y >= in_rows as isize {
                dst.fill(0.);
                continue;
            }
            let row = &plane[y as usize * in_cols..][..in_cols];
            // output columns whose tap lands inside the row: x = ox * sx + dx in [0, in_cols)
            let first = if dx < 0 { ((-dx) as usize).div_ceil(sx) } else { 0 };
            let end = if (in_cols as isize) > dx { ((in_cols as isize - dx) as usize).div_ceil(sx).min(ow) } else { 0 };
            let first = first.min(end);
            dst[..first].fill(0.);
            dst[end..].fill(0.);
            let start = (first * sx) as isize + dx;
            if sx == 1 {
                dst[first..end].copy_from_slice(&row[start as usize..][..end - first]);
            } else {
                for (i, d) in dst[first..end].iter_mut().enumerate() {
                    *d = row[start as usize + i * sx];
                }
            }
        }
    }
}

impl Op for GemmConv {
    fn name(&self) -> StaticName {
        "GemmConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let w = &self.window;
        Ok(vec![format!(
            "{}x{} stride {:?} dilation {:?} pads {:?}, {}",
            w.kernel[0],
            w.kernel[1],
            w.strides,
            w.dilations,
            w.pads,
            self.conv.describe()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for GemmConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let output_hw = |shape: [usize; 2]| {
            ensure!(shape == self.window.input, "GemmConv planned for {:?}, given {shape:?}", self.window.input);
            Ok(self.window.output())
        };
        self.conv.evaluate(&inputs, output_hw, |x, images, y| self.convolve(x, images, y))
    }
}

impl TypedOp for GemmConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let [oh, ow] = self.window.output();
        Ok(tvec!(f32::fact([inputs[0].shape[0].clone(), self.conv.cout.to_dim(), oh.to_dim(), ow.to_dim()])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::test_support::{levels, random, reference, threads};

    fn check(images: usize, sizes: &[usize], cout: usize, window: ConvGeometry, relu: bool, threads_: usize) {
        let parts = ConvParts { sizes: sizes.to_vec(), relu };
        let [kh, kw] = window.kernel;
        let weights = random(cout * parts.channels() * kh * kw, 1);
        let bias = random(cout, 2);
        let [rows, cols] = window.input;
        let inputs: Vec<Vec<f32>> =
            sizes.iter().enumerate().map(|(k, &c)| random(images * c * rows * cols, 3 + k as u64)).collect();
        let want = reference(&weights, &bias, &inputs, &parts, images, cout, &window);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for level in levels() {
            let mut conv = GemmConv::new(&weights, &bias, cout, window, parts.clone());
            conv.conv.level = level;
            let [oh, ow] = window.output();
            let mut y = vec![f32::NAN; images * cout * oh * ow];
            let slices: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
            threads(threads_, || conv.convolve(&slices, images, &mut y));
            let err = y.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-5 * scale.max(1.0), "{level} {window:?} {sizes:?}->{cout}: error {err}");
        }
    }

    #[test]
    fn matches_direct_convolution() {
        let w = |kernel, strides, dilations, pads, input| ConvGeometry { kernel, strides, dilations, pads, input };
        // a ResNet stem (7x7, stride 2, pad 3) on an odd size
        check(2, &[3], 8, w([7, 7], [2, 2], [1, 1], [3; 4], [37, 30]), true, 2);
        // a U-Net's first layer (one channel, 3x3), several blocks per image
        check(1, &[1], 6, w([3, 3], [1, 1], [1, 1], [1; 4], [70, 66]), false, 2);
        // stride 2 with asymmetric padding, dilation, a 1x1 stride-2 shortcut, a folded Concat
        check(1, &[4], 5, w([3, 3], [2, 2], [1, 1], [0, 1, 1, 0], [17, 20]), false, 1);
        check(2, &[2, 3], 4, w([3, 2], [1, 3], [2, 1], [2, 0, 1, 1], [15, 16]), true, 2);
        check(1, &[8], 4, w([1, 1], [2, 2], [1, 1], [0; 4], [13, 12]), false, 2);
    }

    #[test]
    fn output_size() {
        let w = ConvGeometry { kernel: [7, 7], strides: [2, 2], dilations: [1, 1], pads: [3; 4], input: [384, 384] };
        assert_eq!(w.output(), [192, 192]);
        assert_eq!(ConvGeometry { kernel: [5, 5], pads: [0; 4], input: [3, 9], ..w }.output(), [0, 3]);
    }
}
