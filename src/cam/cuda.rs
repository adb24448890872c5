//! SF-CAM and LayerCAM of a batch of slices on the GPU: the twins of [`super::sfcam`] and
//! `normalize_max(layercam)`, followed by the resize to the native grid.
//!
//! The kernels (`kernels.cu`) are compiled by NVRTC on first use and cached for the process.
//! The activations and gradients of one tap are read where the network left them on the GPU
//! ([`TapData::Device`]), or go up once from the host; the maps come back once, on the native
//! grid. PC1's `K x K` covariance is computed on the GPU and its top eigenvector on the CPU
//! (the same power iteration as the CPU path, a few kilobytes each way), so both paths pick the
//! same direction. Anything that goes wrong here (no NVRTC, a kernel that fails to load or
//! launch, a panic inside cudarc) is an error the caller answers by using the CPU path.

use crate::model::gpu::grid;
use crate::{Error, Result};
use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use std::sync::{Arc, OnceLock};

const SOURCE: &str = include_str!("kernels.cu");
const BLOCK: u32 = 256;
const TILE: u32 = 16;

type Res<T> = std::result::Result<T, String>;
/// Top eigenvectors of `batch` row-major `K x K` covariances, `[batch, K]` flattened.
pub(crate) type Eigenvectors<'a> = dyn Fn(&[f32], usize, usize) -> Vec<f64> + 'a;

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
    let (stream, module) = crate::model::gpu::load_kernels(SOURCE, "CAM")?;
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

/// Where a tap's activations or gradients are, `[batch, k, h, w]` contiguous.
#[derive(Clone, Copy)]
pub(crate) enum TapData<'a> {
    /// On the host: uploaded for the kernels.
    Host(&'a [f32]),
    /// Already on the GPU at this device address, at least `batch * k * h * w` values (a network
    /// output tract-cuda kept there, [`crate::model::gpu::device_f32`]): read in place.
    Device(u64),
}

/// One tap of a batch: the layout of its activations and gradients and what to make of them.
pub(crate) struct TapBatch<'a> {
    pub a: TapData<'a>,
    pub g: TapData<'a>,
    pub batch: usize,
    pub k: usize,
    pub h: usize,
    pub w: usize,
    /// SF-CAM (`true`) or LayerCAM alone.
    pub sf: bool,
    /// SF-CAM's layer-1 amplification with this `lambda`.
    pub amplify: Option<f32>,
    /// The model's input size, where the CAM is formed.
    pub input: (usize, usize),
    /// The volume's slice grid, where the maps are returned.
    pub native: (usize, usize),
}

/// The maps of `tap` on the native grid, `[batch, rows, cols]` flattened; `eigenvector` finds
/// PC1's direction from a `K x K` covariance (the CPU path's own routine, run in parallel by the
/// caller over the batch).
pub(crate) fn tap_maps(tap: &TapBatch, eigenvectors: &Eigenvectors) -> Result<Vec<f32>> {
    let k = kernels().map_err(Error::Unsupported)?;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(k, tap, eigenvectors)))
        .unwrap_or_else(|_| Err("the CUDA driver panicked while computing CAMs".into()))
        .map_err(|e| {
            // Work queued before the failure may still read the caller's device taps, which
            // are freed once the caller drops them: let it finish first.
            let _ = std::panic::catch_unwind(|| k.stream.synchronize());
            let message = format!("GPU CAMs: {e}");
            if crate::model::runtime::is_out_of_memory(&message) {
                Error::DeviceMemory(message)
            } else {
                Error::Inference(message)
            }
        })
}

fn per_image(count: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (count as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

fn run(ks: &Kernels, t: &TapBatch, eigenvectors: &Eigenvectors) -> Res<Vec<f32>> {
    let (b, k, hw) = (t.batch, t.k, t.h * t.w);
    let (rows, cols) = t.input;
    let (ny, nx) = t.native;
    if b == 0 || hw == 0 || k == 0 {
        return Err(format!("an empty tap batch [{b}, {k}, {}, {}]", t.h, t.w));
    }
    let s = &ks.stream;
    let e = |what: &'static str| move |err: cudarc::driver::DriverError| format!("{what}: {err}");
    let (bi, ki, hwi) = (b as i32, k as i32, hw as i32);
    // The kernels take plain addresses: the network's own buffer, or an upload kept alive here.
    let mut uploads = Vec::new();
    let mut address = |data: TapData, what: &'static str| -> Res<u64> {
        match data {
            TapData::Device(address) => Ok(address),
            TapData::Host(values) if values.len() == b * k * hw => {
                let up = s.clone_htod(values).map_err(e(what))?;
                let address = up.device_ptr(s).0;
                uploads.push(up);
                Ok(address)
            }
            TapData::Host(values) => Err(format!("{what}: {} values for [{b}, {k}, {}, {}]", values.len(), t.h, t.w)),
        }
    };
    let a = address(t.a, "upload activations")?;
    let g = address(t.g, "upload gradients")?;
    let mut l: CudaSlice<f32> = s.alloc_zeros(b * hw).map_err(e("alloc"))?;
    let mut stats: CudaSlice<f64> = s.alloc_zeros(b * 4).map_err(e("alloc"))?;
    let mut c: CudaSlice<f32> = s.alloc_zeros(b * hw).map_err(e("alloc"))?;
    let mut pn: CudaSlice<f32> = s.alloc_zeros(b * hw).map_err(e("alloc"))?;
    // SAFETY (every launch below): arguments match the kernel signatures in kernels.cu and the
    // buffers hold the sizes the kernels index: uploads checked above, a device tap as
    // `TapData::Device` promises, the rest allocated here.
    unsafe {
        s.launch_builder(&ks.layercam).arg(&a).arg(&g).arg(&mut l).arg(&bi).arg(&ki).arg(&hwi).launch(grid(b * hw))
    }
    .map_err(e("layercam"))?;
    let null = 0u64;
    let p = if t.sf {
        let mut x: CudaSlice<f32> = s.alloc_zeros(b * k * hw).map_err(e("alloc"))?;
        unsafe { s.launch_builder(&ks.center).arg(&a).arg(&mut x).arg(&hwi).launch(per_image(b * k)) }
            .map_err(e("center"))?;
        let mut cov: CudaSlice<f32> = s.alloc_zeros(b * k * k).map_err(e("alloc"))?;
        let tiles = (k as u32).div_ceil(TILE);
        let cfg = LaunchConfig { grid_dim: (tiles, tiles, b as u32), block_dim: (TILE, TILE, 1), shared_mem_bytes: 0 };
        unsafe { s.launch_builder(&ks.covariance).arg(&x).arg(&mut cov).arg(&ki).arg(&hwi).launch(cfg) }
            .map_err(e("covariance"))?;
        let cov = s.clone_dtoh(&cov).map_err(e("download covariance"))?;
        s.synchronize().map_err(e("covariance"))?;
        let v = eigenvectors(&cov, b, k);
        let v = s.clone_htod(&v).map_err(e("upload eigenvectors"))?;
        let mut p: CudaSlice<f64> = s.alloc_zeros(b * hw).map_err(e("alloc"))?;
        unsafe {
            s.launch_builder(&ks.project).arg(&x).arg(&v).arg(&mut p).arg(&bi).arg(&ki).arg(&hwi).launch(grid(b * hw))
        }
        .map_err(e("project"))?;
        Some(p)
    } else {
        None
    };
    unsafe {
        let mut launch = s.launch_builder(&ks.image_stats);
        launch.arg(&l);
        match &p {
            Some(p) => launch.arg(p),
            None => launch.arg(&null),
        };
        launch.arg(&mut stats).arg(&hwi).launch(per_image(b))
    }
    .map_err(e("image_stats"))?;
    unsafe {
        let mut launch = s.launch_builder(&ks.normalize);
        launch.arg(&l);
        match &p {
            Some(p) => launch.arg(p),
            None => launch.arg(&null),
        };
        launch.arg(&stats).arg(&mut c).arg(&mut pn).arg(&bi).arg(&hwi).launch(grid(b * hw))
    }
    .map_err(e("normalize"))?;
    let resize = |src: &CudaSlice<f32>, (sh, sw): (usize, usize), (dh, dw): (usize, usize)| -> Res<CudaSlice<f32>> {
        let mut dst: CudaSlice<f32> = s.alloc_zeros(b * dh * dw).map_err(e("alloc"))?;
        let dims = [bi, sh as i32, sw as i32, dh as i32, dw as i32];
        unsafe {
            s.launch_builder(&ks.resize)
                .arg(src)
                .arg(&mut dst)
                .arg(&dims[0])
                .arg(&dims[1])
                .arg(&dims[2])
                .arg(&dims[3])
                .arg(&dims[4])
                .launch(grid(b * dh * dw))
        }
        .map_err(e("resize"))?;
        Ok(dst)
    };
    let mut cam = resize(&c, (t.h, t.w), (rows, cols))?;
    if t.sf {
        let p_in = resize(&pn, (t.h, t.w), (rows, cols))?;
        let n = (b * rows * cols) as i64;
        unsafe { s.launch_builder(&ks.combine).arg(&mut cam).arg(&p_in).arg(&n).launch(grid(b * rows * cols)) }
            .map_err(e("combine"))?;
    }
    if let Some(lambda) = t.amplify {
        let n = (rows * cols) as i32;
        unsafe { s.launch_builder(&ks.amplify).arg(&mut cam).arg(&n).arg(&lambda).launch(per_image(b)) }
            .map_err(e("amplify"))?;
    }
    let native = resize(&cam, (rows, cols), (ny, nx))?;
    let out = s.clone_dtoh(&native).map_err(e("download maps"))?;
    s.synchronize().map_err(e("CAM kernels"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernels_compile_with_nvrtc() {
        let names =
            ["layercam", "center", "covariance", "project", "image_stats", "normalize", "resize", "combine", "amplify"];
        crate::model::gpu::assert_compiles(super::SOURCE, &names);
    }
}
