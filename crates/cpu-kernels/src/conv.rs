//! What our convolution ops share: where their inputs come from, their constants, the output
//! written by several threads, per-thread scratch buffers, and tasks spread over tract's pool.

use crate::sgemm::{cpu_level, CpuLevel};
use std::sync::Arc;
use tract_linalg::multithread::{current_tract_executor, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Where a rewritten convolution reads its channels from, and whether it applies a Relu.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConvParts {
    /// Channels of each input: several when a channel Concat was folded in.
    pub sizes: Vec<usize>,
    /// max(0, y) on the output: a folded Relu.
    pub relu: bool,
}

impl ConvParts {
    /// One input of `channels` channels, no Relu.
    pub fn single(channels: usize) -> Self {
        ConvParts { sizes: vec![channels], relu: false }
    }

    /// Input channels in all.
    pub fn channels(&self) -> usize {
        self.sizes.iter().sum()
    }

    /// Checks that `inputs` are `[N, size, rows, cols]` batches, one per part, with the same
    /// N, rows and cols; returns N and [rows, cols].
    fn check_inputs(&self, inputs: &[TValue]) -> TractResult<(usize, [usize; 2])> {
        ensure!(inputs.len() == self.sizes.len(), "expected {} inputs, given {}", self.sizes.len(), inputs.len());
        let first = inputs[0].shape();
        ensure!(first.len() == 4, "expected an NCHW input, given {first:?}");
        let (images, rows, cols) = (first[0], first[2], first[3]);
        for (input, &channels) in inputs.iter().zip(&self.sizes) {
            ensure!(
                input.shape() == [images, channels, rows, cols],
                "expected [{images}, {channels}, {rows}, {cols}], given {:?}",
                input.shape()
            );
        }
        Ok((images, [rows, cols]))
    }

    /// Image `n`'s input channels, input by input, one plane of `plane` values each.
    pub fn image_planes<'a>(&self, inputs: &[&'a [f32]], n: usize, plane: usize) -> Vec<&'a [f32]> {
        inputs
            .iter()
            .zip(&self.sizes)
            .flat_map(|(x, &channels)| x[n * channels * plane..][..channels * plane].chunks_exact(plane))
            .collect()
    }
}

/// Threads of the tract executor the running plan uses (1 without a pool).
pub fn executor_threads() -> usize {
    match current_tract_executor() {
        Executor::MultiThread(pool) => pool.current_num_threads(),
        _ => 1,
    }
}

/// The eval of an op `name` of one f32 input: the output shape `output_shape` gives for the
/// input's (an error for one the op was not planned for), then `fill(x, y)`, which must write
/// every value of the new output `y`.
pub fn eval_one_input(
    name: &str,
    inputs: TVec<TValue>,
    output_shape: impl FnOnce(&[usize]) -> TractResult<Vec<usize>>,
    fill: impl FnOnce(&[f32], &[usize], &mut [f32]),
) -> TractResult<TVec<TValue>> {
    ensure!(inputs.len() == 1, "{name} takes one input, given {}", inputs.len());
    let shape = inputs[0].shape();
    // SAFETY: `fill` writes every output value.
    let mut y = unsafe { Tensor::uninitialized::<f32>(&output_shape(shape)?)? };
    let x = inputs[0].try_as_plain_ram()?.as_slice::<f32>()?;
    fill(x, shape, y.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
    Ok(tvec!(y.into_tvalue()))
}

/// `run` on each of `tasks`, spread over the current tract executor's threads (in order on one).
pub fn run_tasks<T: Sync>(tasks: &[T], run: impl Fn(&T) + Sync + Send) {
    match current_tract_executor() {
        Executor::MultiThread(pool) if pool.current_num_threads() > 1 => {
            use rayon::prelude::*;
            pool.install(|| tasks.par_iter().for_each(run))
        }
        _ => tasks.iter().for_each(run),
    }
}

impl std::fmt::Display for ConvParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<String> = self.sizes.iter().map(|s| s.to_string()).collect();
        write!(f, "{}", sizes.join("+"))
    }
}

/// The constants of a rewritten convolution: its weights (in the op's own layout), bias, where
/// its input channels come from, and the instruction set of its matrix products.
#[derive(Debug, Clone)]
pub struct ConvWeights {
    pub cout: usize,
    pub weights: Arc<Vec<f32>>,
    pub bias: Arc<Vec<f32>>,
    pub parts: ConvParts,
    pub level: CpuLevel,
}

// Two ops are equal when they share their weights (tract compares ops when it merges identical
// nodes); f32 weights have no total equality of their own.
impl PartialEq for ConvWeights {
    fn eq(&self, other: &Self) -> bool {
        (self.cout, &self.parts, self.level) == (other.cout, &other.parts, other.level)
            && Arc::ptr_eq(&self.weights, &other.weights)
            && Arc::ptr_eq(&self.bias, &other.bias)
    }
}
impl Eq for ConvWeights {}

impl ConvWeights {
    /// `weights` for `bias.len()` output channels, multiplied at the default level ([`cpu_level`]).
    pub fn new(weights: Vec<f32>, bias: &[f32], parts: ConvParts) -> Self {
        let (weights, bias) = (Arc::new(weights), Arc::new(bias.to_vec()));
        ConvWeights { cout: bias.len(), weights, bias, parts, level: cpu_level() }
    }

    /// "{inputs}->{cout} channels", with ", Relu" when one is folded, and the level: for the
    /// ops' `info`.
    pub fn describe(&self) -> String {
        let relu = if self.parts.relu { ", Relu" } else { "" };
        format!("{}->{} channels{relu}, {}", self.parts, self.cout, self.level)
    }

    /// An op's `eval`: checks `inputs` against the parts, asks `output_hw` (which checks the
    /// input rows and columns against the plan) for the output's, and runs `convolve` (inputs,
    /// images, output) into a new `[N, cout, rows, cols]` tensor it must fill entirely.
    pub fn evaluate(
        &self,
        inputs: &[TValue],
        output_hw: impl FnOnce([usize; 2]) -> TractResult<[usize; 2]>,
        convolve: impl FnOnce(&[&[f32]], usize, &mut [f32]),
    ) -> TractResult<TVec<TValue>> {
        let (images, shape) = self.parts.check_inputs(inputs)?;
        let [rows, cols] = output_hw(shape)?;
        let slices = input_slices(inputs)?;
        // SAFETY: `convolve` writes every output value.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[images, self.cout, rows, cols])? };
        convolve(&slices, images, output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
        Ok(tvec!(output.into_tvalue()))
    }
}

/// The f32 data of each input.
fn input_slices(inputs: &[TValue]) -> TractResult<Vec<&[f32]>> {
    inputs.iter().map(|i| i.try_as_plain_ram()?.as_slice::<f32>()).collect()
}

/// The output of a rewritten convolution, written by several threads at once.
pub struct OutPtr(pub *mut f32);
// SAFETY: the ops' tasks write disjoint parts of the output (see their `convolve`).
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `OutPtr`, which is `Sync`).
    pub fn get(&self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    static WORK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static KERNEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` on a zeroed buffer of `len` floats, reused by the thread across calls (a network's
/// convolutions need the same few megabytes again and again; fresh allocations cost page
/// faults). Each thread keeps its largest buffer: one block of a convolution's work, bounded
/// by the ops' block sizes.
pub fn with_buffer<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    reuse(&WORK, len, f)
}

/// [`with_buffer`] for a block of transformed kernel weights: a second buffer per thread, so that
/// a task inside a convolution's work block (on the same thread when there is no pool) has its own.
pub fn with_kernel_buffer<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    reuse(&KERNEL, len, f)
}

fn reuse<R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            if buffer.len() < len {
                // exactly: the buffer is kept, and doubling the largest would be waste
                let more = len - buffer.len();
                buffer.reserve_exact(more);
                buffer.resize(len, 0.);
            }
            f(&mut buffer[..len])
        }
        // in use further up this thread's stack: a buffer of its own
        Err(_) => f(&mut vec![0.; len]),
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::ConvParts;
    use crate::gemm_conv::ConvGeometry;
    use crate::sgemm::CpuLevel;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    /// Seeded values in [-0.5, 0.5).
    pub fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    /// The instruction-set levels this CPU has, highest first; says which it skips.
    pub fn levels() -> Vec<CpuLevel> {
        CpuLevel::ALL
            .into_iter()
            .filter(|level| {
                let available = level.is_available();
                if !available {
                    eprintln!("skipped: this CPU has no {level}");
                }
                available
            })
            .collect()
    }

    /// `f` with a tract executor of `threads` threads.
    pub fn threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
        let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
        multithread_tract_scope(executor, f)
    }

    /// Direct convolution in f64 over `window`, reading the channels from the `parts` inputs:
    /// the reference.
    pub fn reference(
        w: &[f32],
        b: &[f32],
        inputs: &[Vec<f32>],
        parts: &ConvParts,
        n: usize,
        cout: usize,
        window: &ConvGeometry,
    ) -> Vec<f32> {
        let cin = parts.channels();
        let ([h, wd], [oh, ow], [kh, kw]) = (window.input, window.output(), window.kernel);
        // channel c of image i, wherever its part keeps it
        let mut planes = vec![];
        for img in 0..n {
            for (x, &size) in inputs.iter().zip(&parts.sizes) {
                for c in 0..size {
                    planes.push(&x[((img * size) + c) * h * wd..][..h * wd]);
                }
            }
        }
        let mut y = vec![0f32; n * cout * oh * ow];
        for img in 0..n {
            for o in 0..cout {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = b[o] as f64;
                        for c in 0..cin {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * window.strides[0] + ky * window.dilations[0]) as isize
                                        - window.pads[0] as isize;
                                    let ix = (ox * window.strides[1] + kx * window.dilations[1]) as isize
                                        - window.pads[1] as isize;
                                    if iy >= 0 && iy < h as isize && ix >= 0 && ix < wd as isize {
                                        s += w[((o * cin + c) * kh + ky) * kw + kx] as f64
                                            * planes[img * cin + c][iy as usize * wd + ix as usize] as f64;
                                    }
                                }
                            }
                        }
                        let v = s as f32;
                        y[((img * cout + o) * oh + oy) * ow + ox] = if parts.relu { v.max(0.) } else { v };
                    }
                }
            }
        }
        y
    }

    /// A stride-1, undilated window with a `k` x `k` kernel.
    pub fn unit_window(k: usize, pads: [usize; 4], input: [usize; 2]) -> ConvGeometry {
        ConvGeometry { kernel: [k, k], strides: [1, 1], dilations: [1, 1], pads, input }
    }
}
