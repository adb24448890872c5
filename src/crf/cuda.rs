//! The dense CRF's mean-field iterations on the GPU: `kernels.cu` behind [`device::Device`],
//! compiled by NVRTC on first use and cached for the process. Anything that goes wrong (no
//! NVRTC, a kernel that fails to load or launch, a panic inside cudarc) is an error the caller
//! answers by using the CPU.

use super::device;
use super::{CrfParams, Kernel};
use crate::gpu::{driver_error as e, Launch, Res};
use crate::{Error, Result};
use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, CudaStream, PushKernelArg};
use std::sync::{Arc, OnceLock};

const SOURCE: &str = include_str!("kernels.cu");

struct Cuda {
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    init: CudaFunction,
    scale: CudaFunction,
    splat: CudaFunction,
    blur: CudaFunction,
    slice: CudaFunction,
    update: CudaFunction,
    argmax: CudaFunction,
}

fn kernels() -> std::result::Result<&'static Cuda, String> {
    static KERNELS: OnceLock<std::result::Result<Cuda, String>> = OnceLock::new();
    KERNELS.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> std::result::Result<Cuda, String> {
    let (stream, module) = crate::gpu::load_kernels(SOURCE, "CRF")?;
    let f = |name: &str| module.load_function(name).map_err(|e| format!("kernel {name}: {e}"));
    Ok(Cuda {
        init: f("crf_init")?,
        scale: f("crf_scale")?,
        splat: f("crf_splat")?,
        blur: f("crf_blur")?,
        slice: f("crf_slice")?,
        update: f("crf_update")?,
        argmax: f("crf_argmax")?,
        stream,
        _module: module,
    })
}

/// Why the GPU CRF cannot be used here, or `Ok` once its kernels are compiled and loaded.
pub(crate) fn available() -> std::result::Result<(), String> {
    kernels().map(|_| ())
}

/// [`device::mean_field`] on the GPU: the refined labels of a batch of slices.
pub(crate) fn mean_field(labels: &[u8], slices: &[[&Kernel; 2]], params: &CrfParams) -> Result<Vec<u8>> {
    let cuda = kernels().map_err(Error::Unsupported)?;
    let run = || {
        let out = device::mean_field(cuda, labels, slices, params)?;
        cuda.stream.synchronize().map_err(e("CRF kernels"))?;
        Ok(out)
    };
    crate::gpu::guarded("GPU CRF", run, || {})
}

type F = CudaSlice<f32>;
type U = CudaSlice<u32>;
type B = CudaSlice<u8>;

// SAFETY (every launch below): the arguments match the kernel's signature in kernels.cu, and
// `device::mean_field` allocates each buffer with the length the kernel indexes for `n` / `m`.
impl device::Device for Cuda {
    type F = F;
    type U = U;
    type B = B;
    fn upload_f32(&self, v: &[f32]) -> Res<F> {
        self.stream.clone_htod(v).map_err(e("upload"))
    }
    fn upload_u32(&self, v: &[u32]) -> Res<U> {
        self.stream.clone_htod(v).map_err(e("upload"))
    }
    fn upload_u8(&self, v: &[u8]) -> Res<B> {
        self.stream.clone_htod(v).map_err(e("upload"))
    }
    fn zeros_f32(&self, len: usize) -> Res<F> {
        self.stream.alloc_zeros(len).map_err(e("alloc"))
    }
    fn zeros_u8(&self, len: usize) -> Res<B> {
        self.stream.alloc_zeros(len).map_err(e("alloc"))
    }
    fn download_u8(&self, b: &B) -> Res<Vec<u8>> {
        self.stream.clone_dtoh(b).map_err(e("download"))
    }
    fn init(&self, labels: &B, pe: f32, ne: f32, nu: &mut F, q: &mut F, n: usize) -> Res<()> {
        let count = n as i64;
        let mut l = self.stream.launch_builder(&self.init);
        l.arg(labels).arg(&pe).arg(&ne).arg(nu).arg(q).arg(&count);
        unsafe { l.launch(Launch::elements(n).into()) }.map(drop).map_err(e("crf_init"))
    }
    fn scale(&self, q: &F, norm: &F, scaled: &mut F, n: usize) -> Res<()> {
        let count = n as i64;
        let mut l = self.stream.launch_builder(&self.scale);
        l.arg(q).arg(norm).arg(scaled).arg(&count);
        unsafe { l.launch(Launch::elements(n).into()) }.map(drop).map_err(e("crf_scale"))
    }
    fn splat(&self, start: &U, pixel: &U, weight: &F, scaled: &F, values: &mut F, m: usize) -> Res<()> {
        let count = m as i64;
        let mut l = self.stream.launch_builder(&self.splat);
        l.arg(start).arg(pixel).arg(weight).arg(scaled).arg(values).arg(&count);
        unsafe { l.launch(Launch::elements(m).into()) }.map(drop).map_err(e("crf_splat"))
    }
    fn blur(&self, neighbors: &U, axis: usize, values: &F, out: &mut F, m: usize) -> Res<()> {
        let (axis, count) = (axis as i32, m as i64);
        let mut l = self.stream.launch_builder(&self.blur);
        l.arg(neighbors).arg(&axis).arg(values).arg(out).arg(&count);
        unsafe { l.launch(Launch::elements(m).into()) }.map(drop).map_err(e("crf_blur"))
    }
    fn slice(
        &self,
        offset: &U,
        bary: &F,
        d1: usize,
        alpha: f32,
        values: &F,
        norm: &F,
        msg: &mut F,
        n: usize,
    ) -> Res<()> {
        let (d1, count) = (d1 as i32, n as i64);
        let mut l = self.stream.launch_builder(&self.slice);
        l.arg(offset).arg(bary).arg(&d1).arg(&alpha).arg(values).arg(norm).arg(msg).arg(&count);
        unsafe { l.launch(Launch::elements(n).into()) }.map(drop).map_err(e("crf_slice"))
    }
    fn update(&self, nu: &F, a: &F, wa: f32, b: &F, wb: f32, q: &mut F, n: usize) -> Res<()> {
        let count = n as i64;
        let mut l = self.stream.launch_builder(&self.update);
        l.arg(nu).arg(a).arg(&wa).arg(b).arg(&wb).arg(q).arg(&count);
        unsafe { l.launch(Launch::elements(n).into()) }.map(drop).map_err(e("crf_update"))
    }
    fn argmax(&self, q: &F, out: &mut B, n: usize) -> Res<()> {
        let count = n as i64;
        let mut l = self.stream.launch_builder(&self.argmax);
        l.arg(q).arg(out).arg(&count);
        unsafe { l.launch(Launch::elements(n).into()) }.map(drop).map_err(e("crf_argmax"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernels_compile_with_nvrtc() {
        let names = ["crf_init", "crf_scale", "crf_splat", "crf_blur", "crf_slice", "crf_update", "crf_argmax"];
        crate::gpu::assert_compiles(super::SOURCE, &names);
    }
}
