//! libichseg's own CPU convolutions in tract plans: [`rewrite`] swaps each eligible `Conv` of a
//! decluttered model, before tract optimises it, for
//! - `WinogradConv` (3x3, stride 1: Winograd F(4x4, 3x3), winograd.rs), or
//! - `PointwiseConv` (1x1, stride 1, no padding: one matrix product in place,
//!   pointwise.rs), or
//! - `GemmConv` (any other: strides, dilations, larger kernels, few channels; im2col + matrix
//!   product by blocks in cache, gemm_conv.rs),
//!
//! and each 2x2, stride-2 `Deconv` (an ONNX ConvTranspose: a U-Net's upsampling) for
//! `UpConv2x2` (four matrix products by blocks of rows, interleaved in place, upconv.rs),
//! folding in a channel `Concat` that feeds only the convolution (its inputs are read in place),
//! the per-channel `Mul`/`Add` by constants after it (a BatchNormalization tract did not fold
//! into the weights, a bias) and a `Relu` that only the convolution feeds. tract declutters a
//! 1x1 convolution into an `EinSum` "NIHW,OI->NOHW" (+ bias): those are taken too. The Relu
//! gradients of gradient graphs become one-pass [`ReluGrad`](relu_grad::ReluGrad)s (relu_grad.rs),
//! 2x2, stride-2 max pools `MaxPool2x2`s (maxpool.rs), and constant f32 `Pad`s (the zero
//! insertion of a strided convolution's gradient) one-pass `ConstantPad`s (pad.rs).
//! Everything else stays tract's. How they compare with tract's im2col + matrix product and with
//! onnxruntime, per CPU: docs/BENCHMARKS.md.
//! `ICHSEG_TRACT_CONV=1` in the environment keeps tract's convolutions, for comparisons.
//!
//! All four do their matrix products with [`sgemm::sgemm`] (sgemm.rs), at the
//! instruction-set level ([`CpuLevel`]) the op was built with: our AVX-512 kernel, the `gemm`
//! crate's AVX2 kernels, or our portable kernel. The level is detected once at run time
//! ([`cpu_level`], which the library can report); `ICHSEG_CPU_LEVEL=avx2` or `=portable` in the
//! environment forces a lower one for comparisons (a higher level than the CPU has, or an unknown
//! value, keeps the detected one).
//!
//! The crate's entry point is the pass ([`rewrite`], with [`enabled`]); the ops themselves are
//! private, the matrix product public for benchmarks. [`relu_grad`] also owns the ONNX form of a Relu gradient that gradient graphs
//! emit and the pass recognises ([`relu_grad::emit_onnx`]), so the two sides cannot drift.

mod conv;
mod gemm_conv;
mod maxpool;
mod pad;
mod pass;
mod pointwise;
pub mod relu_grad;
pub mod sgemm;
mod upconv;
mod vector;
mod winograd;

pub use pass::{enabled, rewrite, rewrite_with, RewriteOptions};
pub use sgemm::{cpu_level, CpuLevel};
