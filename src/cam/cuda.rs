//! The CAM kernels on the GPU: `kernels.cu` behind [`device::Device`], compiled by NVRTC on
//! first use and cached for the process. A tap's activations and gradients are read where the
//! network left them on the GPU ([`TapData::Device`]), or go up once from the host. Anything
//! that goes wrong here (no NVRTC, a kernel that fails to load or launch, a panic inside
//! cudarc) is an error the caller answers by using the CPU path.

use super::device::{self, Eigenvectors, TapBatch, TapData};
use crate::gpu::{driver_error as e, Launch, Res};
use crate::{Error, Result};
use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, PushKernelArg};
use std::sync::{Arc, OnceLock};

const SOURCE: &str = include_str!("kernels.cu");

/// The loaded kernels and the stream they run on.
struct Kernels {
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    layercam: CudaFunction,
    center: CudaFunction,
    covariance: CudaFunction,
    project: CudaFunction,
    image_stats: CudaFunction,
    normalize: CudaFunction,
    resize: CudaFunction,
    combine: CudaFunction,
    amplify: CudaFunction,
}

fn kernels() -> std::result::Result<&'static Kernels, String> {
    static KERNELS: OnceLock<std::result::Result<Kernels, String>> = OnceLock::new();
    KERNELS.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> std::result::Result<Kernels, String> {
    let (stream, module) = crate::gpu::load_kernels(SOURCE, "CAM")?;
    let f = |name: &str| module.load_function(name).map_err(|e| format!("kernel {name}: {e}"));
    Ok(Kernels {
        layercam: f("layercam")?,
        center: f("center")?,
        covariance: f("covariance")?,
        project: f("project")?,
        image_stats: f("image_stats")?,
        normalize: f("normalize")?,
        resize: f("resize")?,
        combine: f("combine")?,
        amplify: f("amplify")?,
        stream,
        _module: module,
    })
}

/// Why the GPU CAM kernels cannot be used here, or `Ok` once they are compiled and loaded.
pub(crate) fn available() -> std::result::Result<(), String> {
    kernels().map(|_| ())
}

/// [`device::tap_maps`] on the GPU: the maps of `tap` on the native grid, `[batch, rows, cols]`
/// flattened.
pub(crate) fn tap_maps(tap: &TapBatch, eigenvectors: &Eigenvectors) -> Result<Vec<f32>> {
    let k = kernels().map_err(Error::Unsupported)?;
    // After a failure, work queued before it may still read the caller's device taps, which are
    // freed once the caller drops them: let it finish first.
    crate::gpu::guarded(
        "GPU CAMs",
        || device::tap_maps(k, tap, eigenvectors),
        || {
            let _ = k.stream.synchronize();
        },
    )
}

type F = CudaSlice<f32>;
type D = CudaSlice<f64>;

/// A tap's device address, and the upload that holds it when the values came from the host.
struct Tap {
    address: u64,
    _upload: Option<F>,
}

/// An absent `p` (LayerCAM): the kernels' null pointer.
const NULL: u64 = 0;

// SAFETY (every launch below): the arguments match the kernel's signature in kernels.cu, and
// `device::tap_maps` allocates each buffer with the length the kernel indexes; a device tap
// holds what `TapData::Device` promises.
impl device::Device for Kernels {
    type F = F;
    type D = D;
    type Tap = Tap;
    fn tap(&self, data: TapData, len: usize, what: &str) -> Res<Tap> {
        match data {
            TapData::Device(address) => Ok(Tap { address, _upload: None }),
            TapData::Host(values) => {
                let up = self.stream.clone_htod(&values[..len]).map_err(|err| format!("upload {what}: {err}"))?;
                let address = up.device_ptr(&self.stream).0;
                Ok(Tap { address, _upload: Some(up) })
            }
        }
    }
    fn zeros_f32(&self, len: usize) -> Res<F> {
        self.stream.alloc_zeros(len).map_err(e("alloc"))
    }
    fn zeros_f64(&self, len: usize) -> Res<D> {
        self.stream.alloc_zeros(len).map_err(e("alloc"))
    }
    fn upload_f64(&self, v: &[f64]) -> Res<D> {
        self.stream.clone_htod(v).map_err(e("upload"))
    }
    fn download_f32(&self, b: &F, what: &str) -> Res<Vec<f32>> {
        let out = self.stream.clone_dtoh(b).map_err(|err| format!("download {what}: {err}"))?;
        self.stream.synchronize().map_err(|err| format!("CAM kernels: {err}"))?;
        Ok(out)
    }
    fn layercam(&self, cfg: Launch, a: &Tap, g: &Tap, l: &mut F, batch: i32, k: i32, hw: i32) -> Res<()> {
        let mut b = self.stream.launch_builder(&self.layercam);
        b.arg(&a.address).arg(&g.address).arg(l).arg(&batch).arg(&k).arg(&hw);
        unsafe { b.launch(cfg.into()) }.map(drop).map_err(e("layercam"))
    }
    fn center(&self, cfg: Launch, a: &Tap, x: &mut F, hw: i32) -> Res<()> {
        let mut b = self.stream.launch_builder(&self.center);
        b.arg(&a.address).arg(x).arg(&hw);
        unsafe { b.launch(cfg.into()) }.map(drop).map_err(e("center"))
    }
    fn covariance(&self, cfg: Launch, x: &F, c: &mut F, k: i32, hw: i32) -> Res<()> {
        let mut b = self.stream.launch_builder(&self.covariance);
        b.arg(x).arg(c).arg(&k).arg(&hw);
        unsafe { b.launch(cfg.into()) }.map(drop).map_err(e("covariance"))
    }
    fn project(&self, cfg: Launch, x: &F, v: &D, p: &mut D, batch: i32, k: i32, hw: i32) -> Res<()> {
        let mut b = self.stream.launch_builder(&self.project);
        b.arg(x).arg(v).arg(p).arg(&batch).arg(&k).arg(&hw);
        unsafe { b.launch(cfg.into()) }.map(drop).map_err(e("project"))
    }
    fn image_stats(&self, cfg: Launch, l: &F, p: Option<&D>, stats: &mut D, hw: i32) -> Res<()> {
        let mut b = self.stream.launch_builder(&self.image_stats);
        b.arg(l);
        match p {
            Some(p) => b.arg(p),
            None => b.arg(&NULL),
        };
        b.arg(stats).arg(&hw);
        unsafe { b.launch(cfg.into()) }.map(drop).map_err(e("image_stats"))
    }
    fn normalize(
        &self,
        cfg: Launch,
        l: &F,
        p: Option<&D>,
        stats: &D,
        c: &mut F,
        pn: &mut F,
        batch: i32,
        hw: i32,
    ) -> Res<()> {
        let mut b = self.stream.launch_builder(&self.normalize);
        b.arg(l);
        match p {
            Some(p) => b.arg(p),
            None => b.arg(&NULL),
        };
        b.arg(stats).arg(c).arg(pn).arg(&batch).arg(&hw);
        unsafe { b.launch(cfg.into()) }.map(drop).map_err(e("normalize"))
    }
    fn resize(&self, cfg: Launch, src: &F, dst: &mut F, dims: [i32; 5]) -> Res<()> {
        let mut b = self.stream.launch_builder(&self.resize);
        b.arg(src).arg(dst).arg(&dims[0]).arg(&dims[1]).arg(&dims[2]).arg(&dims[3]).arg(&dims[4]);
        unsafe { b.launch(cfg.into()) }.map(drop).map_err(e("resize"))
    }
    fn combine(&self, cfg: Launch, c: &mut F, p: &F, n: i64) -> Res<()> {
        let mut b = self.stream.launch_builder(&self.combine);
        b.arg(c).arg(p).arg(&n);
        unsafe { b.launch(cfg.into()) }.map(drop).map_err(e("combine"))
    }
    fn amplify(&self, cfg: Launch, cam: &mut F, n: i32, lambda: f32) -> Res<()> {
        let mut b = self.stream.launch_builder(&self.amplify);
        b.arg(cam).arg(&n).arg(&lambda);
        unsafe { b.launch(cfg.into()) }.map(drop).map_err(e("amplify"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernels_compile_with_nvrtc() {
        let names =
            ["layercam", "center", "covariance", "project", "image_stats", "normalize", "resize", "combine", "amplify"];
        crate::gpu::assert_compiles(super::SOURCE, &names);
    }
}
