//! 2x2, stride-2 transposed convolutions (a U-Net's upsampling) as four matrix products.
//!
//! Output pixel (2y + i, 2x + j) receives exactly one kernel tap, (i, j), of input pixel (y, x),
//! so the output is the four products `W_ij X`, one per tap, interleaved. tract computes them
//! into a buffer as large as the output and adds that into a zeroed output (`DeconvSum`); here
//! each block of input rows is multiplied while it is in cache and its results are written in
//! place, with the bias (and a folded Relu).

use crate::conv::{executor_threads, run_tasks, with_buffer, ConvParts, ConvWeights, OutPtr};
use crate::sgemm::sgemm;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Kernel taps: (0, 0), (0, 1), (1, 0), (1, 1).
const TAPS: usize = 4;
/// Values of the four products per block aimed at, so that a block stays in a core's cache.
const BLOCK_VALUES: usize = 1 << 16;
/// Pixels per block at least: wide enough for efficient matrix products (deep layers have many
/// output channels and short rows).
const MIN_PIXELS: usize = 192;

/// A 2x2, stride-2, unpadded, ungrouped f32 transposed convolution in NCHW with constant weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpConv2x2 {
    cin: usize,
    /// Input rows and columns the plan was built for.
    rows: usize,
    cols: usize,
    /// The kernel as four matrices `[TAPS][cout][cin]`.
    conv: ConvWeights,
}

impl UpConv2x2 {
    /// `kernel` is `[cout][cin][2][2]` (tract's OIHW form of an ONNX ConvTranspose kernel),
    /// `bias` has cout values; the input channels come as `parts`.
    pub fn new(kernel: &[f32], bias: &[f32], cout: usize, rows: usize, cols: usize, parts: ConvParts) -> Self {
        let cin = parts.channels();
        assert_eq!(kernel.len(), cout * cin * TAPS);
        assert_eq!(bias.len(), cout);
        let mut weights = vec![0f32; TAPS * cout * cin];
        for (o, kernels) in kernel.chunks_exact(cin * TAPS).enumerate() {
            for (c, taps) in kernels.chunks_exact(TAPS).enumerate() {
                for (t, &value) in taps.iter().enumerate() {
                    weights[(t * cout + o) * cin + c] = value;
                }
            }
        }
        UpConv2x2 { cin, rows, cols, conv: ConvWeights::new(weights, bias, parts) }
    }

    /// Input rows per block: about BLOCK_VALUES values of products, at least MIN_PIXELS
    /// pixels, and blocks enough for two per thread where the image has the rows.
    fn rows_per_block(&self, threads: usize) -> usize {
        let pixels = (BLOCK_VALUES / (TAPS * self.conv.cout).max(1)).max(MIN_PIXELS);
        pixels.div_ceil(self.cols.max(1)).min(self.rows.div_ceil(2 * threads)).clamp(1, self.rows.max(1))
    }

    /// Convolves `images` NCHW images into `y` (`[images][cout][2 rows][2 cols]`); `inputs`
    /// holds one NCHW batch per part, together the `cin` channels.
    pub fn convolve(&self, inputs: &[&[f32]], images: usize, y: &mut [f32]) {
        let (rows, cols, cout) = (self.rows, self.cols, self.conv.cout);
        let plane = rows * cols;
        assert_eq!(inputs.len(), self.conv.parts.sizes.len());
        for (x, channels) in inputs.iter().zip(&self.conv.parts.sizes) {
            assert_eq!(x.len(), images * channels * plane);
        }
        assert_eq!(y.len(), images * cout * 4 * plane);
        if plane == 0 || cout == 0 {
            return;
        }
        let step = self.rows_per_block(executor_threads());
        let tasks: Vec<(usize, usize)> =
            (0..images).flat_map(|n| (0..rows).step_by(step).map(move |r0| (n, r0))).collect();
        let out = OutPtr(y.as_mut_ptr());
        run_tasks(&tasks, |&(n, r0)| {
            let block = step.min(rows - r0);
            let pixels = block * cols;
            with_buffer(TAPS * cout * pixels, |products| {
                // W_t X for the block's pixels, input part by part: the four taps' matrices are
                // one of TAPS x cout rows, so X is packed once for all four
                let mut c0 = 0;
                for (x, &channels) in inputs.iter().zip(&self.conv.parts.sizes) {
                    let x = &x[n * channels * plane..][..channels * plane];
                    // SAFETY: `products` holds TAPS x cout rows of `pixels`; the weights TAPS x
                    // cout rows of cin; x `channels` planes, of which the block's pixels start
                    // at r0 * cols.
                    unsafe {
                        sgemm(
                            self.conv.level,
                            TAPS * cout,
                            pixels,
                            channels,
                            products.as_mut_ptr(),
                            pixels,
                            c0 > 0,
                            self.conv.weights.as_ptr().add(c0),
                            self.cin,
                            x.as_ptr().add(r0 * cols),
                            plane,
                        )
                    };
                    c0 += channels;
                }
                // SAFETY: this task writes the output rows 2 r0 .. 2 (r0 + block) of image n,
                // which no other task writes.
                unsafe { self.interleave(products, n, r0, block, &out) };
            })
        });
    }

    /// Writes the block's four products into the output rows of image `n`: tap (i, j) of input
    /// pixel (y, x) to (2y + i, 2x + j), plus the bias (and the Relu).
    ///
    /// # Safety
    /// `out` points to the whole output batch; no one else writes these rows.
    unsafe fn interleave(&self, products: &[f32], n: usize, r0: usize, block: usize, out: &OutPtr) {
        let (cols, cout) = (self.cols, self.conv.cout);
        let (out_rows, out_cols, pixels) = (2 * self.rows, 2 * cols, block * cols);
        for o in 0..cout {
            let bias = self.conv.bias[o];
            for r in 0..block {
                for i in 0..2 {
                    let row = ((n * cout + o) * out_rows + 2 * (r0 + r) + i) * out_cols;
                    let dst = std::slice::from_raw_parts_mut(out.get().add(row), out_cols);
                    let left = &products[((2 * i) * cout + o) * pixels + r * cols..][..cols];
                    let right = &products[((2 * i + 1) * cout + o) * pixels + r * cols..][..cols];
                    for ((pair, &a), &b) in dst.chunks_exact_mut(2).zip(left).zip(right) {
                        let (a, b) = (a + bias, b + bias);
                        (pair[0], pair[1]) = if self.conv.parts.relu { (a.max(0.), b.max(0.)) } else { (a, b) };
                    }
                }
            }
        }
    }
}

impl Op for UpConv2x2 {
    fn name(&self) -> StaticName {
        "UpConv2x2".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("2x2 stride 2 transposed, {}", self.conv.describe())])
    }

    op_as_typed_op!();
}

impl EvalOp for UpConv2x2 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let output_hw = |shape: [usize; 2]| {
            ensure!(
                shape == [self.rows, self.cols],
                "UpConv2x2 planned for {}x{}, given {shape:?}",
                self.rows,
                self.cols
            );
            Ok([2 * self.rows, 2 * self.cols])
        };
        self.conv.evaluate(&inputs, output_hw, |x, images, y| self.convolve(x, images, y))
    }
}

impl TypedOp for UpConv2x2 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = inputs[0].shape[0].clone();
        Ok(tvec!(f32::fact([n, self.conv.cout.to_dim(), (2 * self.rows).to_dim(), (2 * self.cols).to_dim()])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::test_support::{levels, random, threads};

    /// The transposed convolution in f64, straight from its definition.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        kernel: &[f32],
        bias: &[f32],
        x: &[f32],
        n: usize,
        cin: usize,
        cout: usize,
        h: usize,
        w: usize,
    ) -> Vec<f32> {
        let mut y = vec![0f64; n * cout * 4 * h * w];
        for b in 0..n {
            for o in 0..cout {
                for yy in 0..2 * h {
                    for xx in 0..2 * w {
                        let (i, j, r, c) = (yy % 2, xx % 2, yy / 2, xx / 2);
                        let sum: f64 = (0..cin)
                            .map(|ci| {
                                kernel[((o * cin + ci) * 2 + i) * 2 + j] as f64
                                    * x[((b * cin + ci) * h + r) * w + c] as f64
                            })
                            .sum();
                        y[((b * cout + o) * 2 * h + yy) * 2 * w + xx] = sum + bias[o] as f64;
                    }
                }
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }

    fn check(n: usize, sizes: &[usize], cout: usize, h: usize, w: usize, relu: bool) {
        let parts = ConvParts { sizes: sizes.to_vec(), relu };
        let cin = parts.channels();
        let (kernel, bias) = (random(cout * cin * 4, 1), random(cout, 2));
        let inputs: Vec<Vec<f32>> =
            sizes.iter().enumerate().map(|(k, &c)| random(n * c * h * w, 3 + k as u64)).collect();
        // the parts as one NCHW batch, for the reference
        let joined: Vec<f32> = (0..n)
            .flat_map(|b| inputs.iter().zip(sizes).flat_map(move |(x, &c)| x[b * c * h * w..][..c * h * w].to_vec()))
            .collect();
        let mut want = reference(&kernel, &bias, &joined, n, cin, cout, h, w);
        if relu {
            want.iter_mut().for_each(|v| *v = v.max(0.));
        }
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        for level in levels() {
            let mut op = UpConv2x2::new(&kernel, &bias, cout, h, w, parts.clone());
            op.conv.level = level;
            let mut y = vec![f32::NAN; n * cout * 4 * h * w];
            let slices: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
            threads(2, || op.convolve(&slices, n, &mut y));
            let err = y.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-5 * scale, "{level} {n}x{sizes:?}->{cout} {h}x{w}: error {err} (scale {scale})");
        }
    }

    #[test]
    fn matches_the_definition() {
        check(1, &[3], 2, 4, 5, false);
        check(2, &[8], 5, 7, 3, true);
        // several blocks of rows (and a short last one), a folded Concat
        check(2, &[16, 4], 32, 21, 40, false);
        let op = UpConv2x2::new(&vec![0.; 32 * 20 * 4], &[0.; 32], 32, 21, 40, ConvParts::single(20));
        assert!(op.rows_per_block(1) < 21 && 21 % op.rows_per_block(1) != 0);
        assert_eq!(op.rows_per_block(16), 1);
    }
}
