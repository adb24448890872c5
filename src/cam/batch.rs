//! The CAMs of one batch of slices, from a gradient graph's outputs: on our CUDA kernels when the
//! networks run on CUDA, the method has a kernel and the kernels load; otherwise on the engine's
//! CPU threads. Either way, one map per (slice, tap) on the slice's native grid.

use super::{tap_cam, CamMethod};
use crate::error::{Error, Result};
use crate::model::runtime::Engine;
use crate::model::GradientGraph;
use crate::preprocess::resize_bilinear;
use ndarray::{Array2, Array3, ArrayView3, ArrayViewD, Axis, Ix3};
use tract_onnx::prelude::*;

/// One run of a classifier's gradient graph, as the CAMs need it.
pub(crate) struct TapOutputs<'a> {
    /// The graph's outputs: logits, then activation and gradient per tap ([`GradientGraph`]).
    pub outputs: &'a [TValue],
    /// For messages: the model's name and its tap tensors.
    pub model: &'a str,
    pub taps: &'a [String],
    /// Images of the batch that are real slices (a fixed-batch model pads the rest).
    pub count: usize,
    /// The network's input size and the native slice grid, rows by columns.
    pub input: (usize, usize),
    pub native: (usize, usize),
}

/// The batch's maps and where they were computed.
pub(crate) struct BatchMaps {
    /// Per tap, `[count, rows, cols]` on the native grid.
    pub maps: Vec<Array3<f32>>,
    pub on_gpu: bool,
    /// On the GPU: whether every tap was read where the network left it (no host round trip).
    pub in_place: bool,
}

/// Compiles and loads the GPU CAM kernels when `engine` will use them for `method`, so that it
/// happens with the plans rather than in the first call's timing; a failure only means the CPU
/// computes the CAMs.
pub(crate) fn prepare(engine: &Engine, method: CamMethod) {
    #[cfg(feature = "gpu")]
    if engine.is_cuda() && method != CamMethod::Grad {
        let _ = super::cuda::available();
    }
    let _ = (engine, method);
}

/// Where a call's CAMs were computed, over all its batches.
pub(crate) struct CamPlace {
    on_gpu: bool,
    in_place: bool,
}

impl CamPlace {
    pub(crate) fn new() -> Self {
        CamPlace { on_gpu: false, in_place: true }
    }
    pub(crate) fn add(&mut self, batch: &BatchMaps) {
        self.on_gpu |= batch.on_gpu;
        self.in_place &= batch.in_place;
    }
    /// `"cuda"` when any batch's CAMs ran on the GPU kernels, else `"cpu"`.
    pub(crate) fn device(&self) -> &'static str {
        if self.on_gpu {
            "cuda"
        } else {
            "cpu"
        }
    }
    /// Whether the GPU kernels read every tap in place (false on the CPU).
    pub(crate) fn taps_on_device(&self) -> bool {
        self.on_gpu && self.in_place
    }
}

/// CAMs of every tap of every slice of the batch ([`tap_cam`]; tap 0 is the one SF-CAM
/// amplifies by `tanh(lambda * .)`).
pub(crate) fn batch_maps(engine: &Engine, method: CamMethod, lambda: f32, t: &TapOutputs) -> Result<BatchMaps> {
    if let Some((flat, in_place)) = gpu_maps(engine, method, lambda, t)? {
        let maps = flat
            .into_iter()
            .map(|m| Array3::from_shape_vec((t.count, t.native.0, t.native.1), m).expect("count maps per tap"))
            .collect();
        return Ok(BatchMaps { maps, on_gpu: true, in_place });
    }
    to_host(engine, t.outputs)?;
    let mut taps = Vec::with_capacity(t.taps.len());
    for (i, name) in t.taps.iter().enumerate() {
        let acts = f32_view(&t.outputs[GradientGraph::activation_output(i)], t.model, name)?;
        let grads = f32_view(&t.outputs[GradientGraph::gradient_output(i)], t.model, name)?;
        taps.push((acts, grads));
    }
    // Every (slice, tap) CAM of the batch at once, on the engine's threads.
    let jobs: Vec<(usize, usize)> = (0..t.count).flat_map(|b| (0..taps.len()).map(move |i| (b, i))).collect();
    let cams = engine.par_map(&jobs, |&(b, i)| -> Result<Array2<f32>> {
        let a = slice_view(&taps[i].0, b, t.model, &t.taps[i])?;
        let g = slice_view(&taps[i].1, b, t.model, &t.taps[i])?;
        let cam_in = tap_cam(method, a, g, t.input, i == 0, lambda)?;
        Ok(resize_bilinear(cam_in.view(), t.native.0, t.native.1))
    });
    let mut maps = vec![Array3::zeros((t.count, t.native.0, t.native.1)); taps.len()];
    for (&(b, i), cam) in jobs.iter().zip(cams) {
        maps[i].index_axis_mut(Axis(0), b).assign(&cam?);
    }
    Ok(BatchMaps { maps, on_gpu: false, in_place: false })
}

/// The maps per tap (`[count, rows, cols]` flattened) from the GPU kernels ([`super::cuda`]),
/// with whether every tap was read in place on the device; `None` means the CPU computes them.
///
/// A tap the network left on the GPU ([`crate::model::gpu::device_f32`]) is read there, so its
/// activations and gradients never cross the bus; any other tap is read back and uploaded, as is
/// a tap whose in-place run fails other than for memory.
#[cfg(feature = "gpu")]
fn gpu_maps(engine: &Engine, method: CamMethod, lambda: f32, t: &TapOutputs) -> Result<Option<(Vec<Vec<f32>>, bool)>> {
    use super::device::{TapBatch, TapData};
    use crate::model::gpu::device_f32;
    if !engine.is_cuda() || method == CamMethod::Grad || super::cuda::available().is_err() {
        return Ok(None);
    }
    let eigenvectors = |cov: &[f32], b: usize, k: usize| -> Vec<f64> {
        let images: Vec<usize> = (0..b).collect();
        let per_image = engine.par_map(&images, |&j| {
            let m: Vec<f64> = cov[j * k * k..(j + 1) * k * k].iter().map(|&v| v as f64).collect();
            super::top_eigenvector(&m, k)
        });
        per_image.concat()
    };
    let mut out = Vec::with_capacity(t.taps.len());
    let mut in_place = true;
    for i in 0..t.taps.len() {
        let (a, g) = (&t.outputs[GradientGraph::activation_output(i)], &t.outputs[GradientGraph::gradient_output(i)]);
        let shape = a.shape();
        if shape.len() != 4 || g.shape() != shape || shape[0] < t.count {
            return Ok(None); // the CPU path reports the bad shape
        }
        let sf = method == CamMethod::Sf;
        let tap = |a, g| TapBatch {
            a,
            g,
            batch: t.count,
            k: shape[1],
            h: shape[2],
            w: shape[3],
            sf,
            amplify: (sf && i == 0).then_some(lambda),
            input: t.input,
            native: t.native,
        };
        let on_device = match (device_f32(a), device_f32(g)) {
            (Some(a), Some(g)) => {
                match super::cuda::tap_maps(&tap(TapData::Device(a), TapData::Device(g)), &eigenvectors) {
                    Err(Error::DeviceMemory(m)) => return Err(Error::DeviceMemory(m)),
                    result => result.ok(),
                }
            }
            _ => None,
        };
        let maps = match on_device {
            Some(maps) => maps,
            None => {
                in_place = false;
                to_host(engine, &[a.clone(), g.clone()])?;
                let per_image = shape[1] * shape[2] * shape[3];
                let host = |v| f32_view(v, t.model, &t.taps[i]).map(|view| view.to_slice());
                let (Some(a), Some(g)) = (host(a)?, host(g)?) else {
                    return Ok(None); // not contiguous: the CPU path reads any layout
                };
                let n = t.count * per_image;
                super::cuda::tap_maps(&tap(TapData::Host(&a[..n]), TapData::Host(&g[..n])), &eigenvectors)?
            }
        };
        out.push(maps);
    }
    Ok(Some((out, in_place)))
}

#[cfg(not(feature = "gpu"))]
fn gpu_maps(_: &Engine, _: CamMethod, _: f32, _: &TapOutputs) -> Result<Option<(Vec<Vec<f32>>, bool)>> {
    Ok(None)
}

/// A float32 output as an array view.
pub(crate) fn f32_view<'a>(value: &'a TValue, model: &str, what: &str) -> Result<ArrayViewD<'a, f32>> {
    value
        .to_plain_array_view::<f32>()
        .map_err(|e| Error::Inference(format!("{model}: output {what} is not float32: {e}")))
}

/// Outputs a GPU run left on the device ([`Engine::run_leaving_on_device`]), read back for the
/// host; on the CPU there is nothing to do.
fn to_host(engine: &Engine, outputs: &[TValue]) -> Result<()> {
    #[cfg(feature = "gpu")]
    if engine.is_cuda() {
        let tensors: Vec<&Tensor> = outputs.iter().map(|v| &**v).collect();
        return crate::model::gpu::to_host(&tensors);
    }
    let _ = (engine, outputs);
    Ok(())
}

/// Image `b` of an `[N, K, h, w]` tap output.
fn slice_view<'a>(batch: &ArrayViewD<'a, f32>, b: usize, model: &str, tap: &str) -> Result<ArrayView3<'a, f32>> {
    batch.clone().index_axis_move(Axis(0), b).into_dimensionality::<Ix3>().map_err(|_| {
        Error::Inference(format!(
            "{model}: tap {tap} has shape {:?}; CAMs need [N, K, h, w] feature maps",
            batch.shape()
        ))
    })
}
