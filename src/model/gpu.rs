//! CUDA through tract-cuda: a probe that never panics, the shared context, GPU plans.
//!
//! cudarc binds CUDA libraries lazily and panics when one is missing, and tract-cuda's context
//! `expect`s success; so before anything touches them we dlopen every library ourselves, check
//! the toolkit headers its NVRTC kernels need, and only then create the context, behind a panic
//! guard. The verdict is computed once per process.

use super::cuda_thread::on_cuda_thread;
use super::runtime::{CudaLibrary, CudaReport, DevicePlacement, GpuDevice};
use crate::error::{Error, Result};
use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tract_gpu::fact::DeviceTypedFactExt;
use tract_gpu::sync::DeviceSync;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::RunOptions;

/// The libraries tract-cuda loads, with a symbol each that locates the file actually loaded.
const LIBRARIES: [(&str, &str, &str); 5] = [
    ("driver", "cuda", "cuInit"),
    ("runtime", "cudart", "cudaGetDeviceCount"),
    ("NVRTC", "nvrtc", "nvrtcVersion"),
    ("cuBLAS", "cublas", "cublasCreate_v2"),
    ("cuDNN", "cudnn", "cudnnGetVersion"),
];

/// The CUDA version these bindings were built for, e.g. `13.0`.
pub fn bindings() -> String {
    let v = tract_cuda::utils::REQUIRED_CUDA_API;
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// Looks for one library under every name cudarc tries, with the loader's own search.
fn find_library(label: &'static str, stem: &str, symbol: &str) -> CudaLibrary {
    let tried = cudarc::get_lib_name_candidates(stem);
    let path = tried.iter().find_map(|name| loaded_path(name, symbol));
    CudaLibrary { name: label, path, tried }
}

/// dlopen `name` and report the file that holds `symbol` (the library stays loaded, as cudarc
/// would load it anyway).
fn loaded_path(name: &str, symbol: &str) -> Option<String> {
    let cname = CString::new(name).ok()?;
    let csym = CString::new(symbol).ok()?;
    // SAFETY: plain dlopen/dlsym/dladdr calls with valid C strings; nothing is called through
    // the handle. Loading a CUDA library runs no code that can fail the process.
    unsafe {
        let handle = libc::dlopen(cname.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            return None;
        }
        let sym = libc::dlsym(handle, csym.as_ptr());
        let mut info: libc::Dl_info = std::mem::zeroed();
        if !sym.is_null() && libc::dladdr(sym, &mut info) != 0 && !info.dli_fname.is_null() {
            let file = CStr::from_ptr(info.dli_fname as *const c_char).to_string_lossy().into_owned();
            return Some(std::fs::canonicalize(&file).map(|p| p.display().to_string()).unwrap_or(file));
        }
        Some(name.to_string())
    }
}

/// The toolkit include folder tract-cuda's NVRTC kernels compile against (it holds
/// `cuda_fp16.h` and the CCCL headers), searched as tract-cuda searches it.
fn toolkit_headers() -> std::result::Result<PathBuf, String> {
    let root = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .find_map(|v| std::env::var_os(v).map(PathBuf::from))
        .or_else(|| Some(PathBuf::from("/usr/local/cuda")).filter(|p| p.exists()))
        .ok_or("no CUDA toolkit found (set CUDA_HOME; NVRTC needs its headers)")?;
    let mut candidates = vec![root.join("include")];
    if let Ok(entries) = std::fs::read_dir(root.join("targets")) {
        candidates.extend(entries.flatten().map(|e| e.path().join("include")));
    }
    let include = candidates
        .into_iter()
        .find(|c| c.join("cuda_fp16.h").exists())
        .ok_or_else(|| format!("no cuda_fp16.h under {}/include (cuda-cudart-dev missing?)", root.display()))?;
    let cccl = |p: &Path| p.join("cuda/std/cstdint").exists();
    if ![include.join("cccl"), include.join("libcudacxx/include"), include.clone()].iter().any(|p| cccl(p)) {
        return Err(format!("no CCCL headers (cuda/std/cstdint) under {} (cuda-cccl missing?)", include.display()));
    }
    Ok(include)
}

fn version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// Everything found about CUDA on this machine, without creating a context.
pub fn report() -> CudaReport {
    let libraries: Vec<CudaLibrary> = LIBRARIES.iter().map(|(l, s, sym)| find_library(l, s, sym)).collect();
    let found: Vec<&str> =
        LIBRARIES.iter().zip(&libraries).filter(|(_, lib)| lib.path.is_some()).map(|((_, s, _), _)| *s).collect();
    let has = |stem: &str| found.contains(&stem);
    let mut report = CudaReport::empty(Some(bindings()), Err(String::new()));
    report.libraries = libraries;
    report.headers = toolkit_headers().map(|p| p.display().to_string());
    // Each cudarc call below is made only once its library is known to load.
    if has("cuda") {
        report.driver_version = driver_version();
        report.devices = devices().unwrap_or_else(|e| {
            report.device_error = Some(e);
            vec![]
        });
    }
    if has("cudart") {
        report.runtime_version = cudarc::runtime::result::version::get_runtime_version().ok().map(version);
    }
    if has("cudnn") {
        let v = cudarc::cudnn::result::get_version();
        report.cudnn_version = Some(format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100));
    }
    if has("nvrtc") {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: out-pointers to two live ints; the library is loaded.
        let ok = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
        if ok == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
            report.nvrtc_version = Some(format!("{major}.{minor}"));
        }
    }
    report.usable = usable().map(str::to_string).map_err(str::to_string);
    report
}

fn driver_version() -> Option<String> {
    let mut v = 0;
    // SAFETY: an out-pointer to a live int; libcuda is loaded.
    let rc = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    (rc == cudarc::driver::sys::CUresult::CUDA_SUCCESS).then(|| version(v))
}

fn devices() -> std::result::Result<Vec<GpuDevice>, String> {
    use cudarc::driver::result::{device, init};
    init().map_err(|e| format!("cuInit failed: {e}"))?;
    let count = device::get_count().map_err(|e| format!("cannot count devices: {e}"))?;
    (0..count)
        .map(|i| {
            let dev = device::get(i).map_err(|e| e.to_string())?;
            let name = device::get_name(dev).map_err(|e| e.to_string())?;
            // SAFETY: `dev` is a valid device handle from cuDeviceGet.
            let memory_bytes = unsafe { device::total_mem(dev) }.map_err(|e| e.to_string())? as u64;
            Ok(GpuDevice { ordinal: i as usize, name, memory_bytes })
        })
        .collect()
}

/// Whether tract-cuda can run here, decided once: the libraries, the headers, a context and a
/// stream with its cuBLAS and cuDNN handles. `Ok` carries the device's name.
pub fn usable() -> std::result::Result<&'static str, &'static str> {
    static VERDICT: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    VERDICT.get_or_init(verdict).as_ref().map(|s| s.as_str()).map_err(|s| s.as_str())
}

/// The verdict of [`usable`]. Only its last step touches tract-cuda, on the CUDA thread (where
/// the first stream then lives): a machine without the libraries or a GPU never starts it.
fn verdict() -> std::result::Result<String, String> {
    let missing: Vec<&str> =
        LIBRARIES.iter().filter(|(l, s, sym)| find_library(l, s, sym).path.is_none()).map(|(l, _, _)| *l).collect();
    if !missing.is_empty() {
        return Err(format!("CUDA libraries not found: {} (see `ichseg doctor`)", missing.join(", ")));
    }
    toolkit_headers()?;
    tract_cuda::utils::ensure_cuda_runtime_dependencies("CUDA is not usable").map_err(|e| format!("{e:#}"))?;
    let name = devices()?.into_iter().next().map(|d| d.name).ok_or("no CUDA device is visible")?;
    // tract-cuda's context and streams `expect` success: contain a failure here.
    match on_cuda_thread(|| std::panic::catch_unwind(|| tract_cuda::with_cuda_stream(|_| Ok(())))) {
        Ok(Ok(())) => Ok(name),
        Ok(Err(e)) => Err(format!("cannot start CUDA: {e:#}")),
        Err(_) => Err("cannot start CUDA: tract-cuda failed while creating its context".to_string()),
    }
}

/// The device address of a network output that is still on the GPU, for our kernels to read in
/// place; `None` means its values must be read on the host.
///
/// tract-cuda hands every output back as a host tensor whose bytes stay on the device until
/// something reads them (tract-gpu's `LazyHostStorage`, created after the run's stream was
/// synchronised). An owned f32 buffer in natural layout qualifies; a view into tract's memory
/// arena never does (tract copies those out at the boundary), nor does a host tensor (the CPU
/// engine's). The address stays valid while `value` lives.
pub(crate) fn device_f32(value: &TValue) -> Option<u64> {
    use tract_gpu::tensor::{DeviceTensor, LazyHostStorage};
    let tensor = value.storage_as::<LazyHostStorage>()?.device()?;
    let plain = matches!(tensor, DeviceTensor::Owned(_))
        && tensor.datum_type() == f32::datum_type()
        && tensor.strides() == &*Tensor::natural_strides(tensor.shape());
    if !plain {
        return None;
    }
    // Reading the address goes through tract-cuda's per-thread stream, which it creates on first
    // use and `unwrap`s.
    let address =
        on_cuda_thread(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tensor.device_buffer_ptr() as u64)));
    address.ok().filter(|&a| a != 0)
}

/// Brings network outputs still on the GPU back to the host, on the CUDA thread, so that reading
/// them later touches no tract-cuda thread-local; host tensors are left as they are.
pub(crate) fn to_host(values: &[&Tensor]) -> Result<()> {
    use tract_gpu::tensor::LazyHostStorage;
    use tract_onnx::tract_core::internal::TensorStorage;
    let lazy: Vec<&LazyHostStorage> = values.iter().filter_map(|v| v.storage_as::<LazyHostStorage>()).collect();
    if lazy.iter().all(|l| l.is_materialized()) {
        return Ok(());
    }
    // Each storage reads its device buffer back once and keeps the host copy.
    let read = on_cuda_thread(|| lazy.iter().try_for_each(|l| l.materialize_plain_ram().map(|_| ())));
    read.map_err(|e| super::runtime::device_failure(format!("cannot read a network output back from the GPU: {e:#}")))
}

fn decluttered(model: &super::OnnxModel, shape: [usize; 4]) -> Result<TypedModel> {
    let typed = super::runtime::plan_knobs()
        .enter(|| -> TractResult<TypedModel> {
            let mut typed = model.decluttered(shape)?;
            super::gpu_rewrite::rewrite_for_gpu(&mut typed)?;
            Ok(typed)
        })
        .map_err(|e| {
            Error::InvalidModel(format!("{}: cannot type the graph for input {shape:?}: {e:#}", model.name))
        })?;
    within_cudnn_limit(&typed, &model.name, shape)?;
    Ok(typed)
}

/// cuDNN describes a tensor with 32-bit element counts and refuses larger ones
/// (`CUDNN_STATUS_NOT_SUPPORTED` in the middle of a run). A plan with such a tensor is refused
/// up front as [`Error::DeviceMemory`], so that the callers halve the batch as they do when
/// memory runs out.
fn within_cudnn_limit(typed: &TypedModel, model: &str, shape: [usize; 4]) -> Result<()> {
    const LIMIT: usize = i32::MAX as usize;
    let largest = typed
        .nodes
        .iter()
        .flat_map(|node| node.outputs.iter().map(move |o| (node, o.fact.shape.as_concrete())))
        .filter_map(|(node, dims)| {
            Some((node, dims?.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX)))
        })
        .max_by_key(|(_, len)| *len);
    match largest {
        Some((node, len)) if len > LIMIT => Err(Error::DeviceMemory(format!(
            "{model}: for input {shape:?}, {:?} makes a tensor of {len} values, over cuDNN's limit of {LIMIT}: \
             a smaller batch is needed",
            node.name
        ))),
        _ => Ok(()),
    }
}

/// A plan whose translatable operators run on the GPU; inputs and outputs stay host tensors.
pub fn plan(
    model: &super::OnnxModel,
    shape: [usize; 4],
    executor: tract_linalg::multithread::Executor,
) -> Result<Arc<TypedRunnableModel>> {
    usable().map_err(|e| Error::Unsupported(e.to_string()))?;
    let typed = decluttered(model, shape)?;
    let fail = |e: TractError| Error::InvalidModel(format!("{}: cannot build a CUDA plan: {e:#}", model.name));
    let runtime = tract_onnx::tract_core::runtime::runtime_for_name("cuda")
        .map_err(fail)?
        .ok_or_else(|| Error::Unsupported("tract-cuda's runtime is not registered in this build".into()))?;
    let options = RunOptions { executor: Some(executor), ..Default::default() };
    // Translating uploads the weights through tract-cuda's per-thread stream.
    let prepare = || super::runtime::plan_knobs().enter(|| runtime.prepare_with_options(typed, &options));
    let runnable = on_cuda_thread(prepare).map_err(fail)?;
    runnable.typed_plan().cloned().ok_or_else(|| Error::Inference("tract-cuda returned a plan of another kind".into()))
}

/// Runs a GPU plan (`run`) on the CUDA thread. Outputs come back as host tensors, read back there,
/// except those `on_device` keeps on the GPU for our kernels to read in place ([`device_f32`];
/// read them on the host through [`to_host`]).
pub(crate) fn run(
    inputs: TVec<TValue>,
    on_device: &(dyn Fn(usize) -> bool + Sync),
    run: impl FnOnce(TVec<TValue>) -> TractResult<TVec<TValue>> + Send,
) -> TractResult<TVec<TValue>> {
    let inputs: Vec<Tensor> = inputs.into_iter().map(TValue::into_tensor).collect();
    let outputs = on_cuda_thread(|| -> TractResult<Vec<Tensor>> {
        let outputs = run(inputs.into_iter().map(Tensor::into_tvalue).collect())?;
        let outputs: Vec<Tensor> = outputs.into_iter().map(TValue::into_tensor).collect();
        let host: Vec<&Tensor> = outputs.iter().enumerate().filter(|(i, _)| !on_device(*i)).map(|(_, t)| t).collect();
        to_host(&host)?;
        Ok(outputs)
    })?;
    Ok(outputs.into_iter().map(Tensor::into_tvalue).collect())
}

/// Translates the model for CUDA and reports what stays on the CPU. Needs a usable GPU,
/// since tract-cuda creates its context while translating.
pub fn placement(model: &super::OnnxModel, shape: [usize; 4]) -> Result<DevicePlacement> {
    usable().map_err(|e| Error::Unsupported(e.to_string()))?;
    let mut typed = decluttered(model, shape)?;
    use tract_onnx::tract_core::transform::ModelTransform;
    on_cuda_thread(|| tract_cuda::CudaTransform.transform(&mut typed))
        .map_err(|e| Error::InvalidModel(format!("{}: cannot translate for CUDA: {e:#}", model.name)))?;
    let mut placement = DevicePlacement { cpu_ops: vec![], gpu_ops: 0, transfers: 0 };
    for node in &typed.nodes {
        // tract-cuda fuses some output copies into other ops, named DeviceSync* too
        if node.op_is::<DeviceSync>() || node.op.name().starts_with("DeviceSync") {
            placement.transfers += 1;
        } else if node.outputs.iter().any(|o| o.fact.as_device_fact().is_some()) {
            placement.gpu_ops += 1;
        } else if !node.op_is::<tract_onnx::tract_core::ops::source::TypedSource>() {
            placement.cpu_ops.push((node.name.clone(), node.op.name().to_string()));
        }
    }
    Ok(placement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_with_a_tensor_over_cudnns_limit_is_a_memory_error() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet/unet_transpose.onnx");
        let model = super::super::OnnxModel::load(&path).unwrap();
        assert!(decluttered(&model, [4, 1, 64, 64]).is_ok());
        // 2^19 slices of 64 x 64: the input alone has 2^31 values.
        match decluttered(&model, [1 << 19, 1, 64, 64]) {
            Err(Error::DeviceMemory(m)) => assert!(m.contains("cuDNN's limit of 2147483647"), "{m}"),
            other => panic!("expected a device-memory error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_host_tensor_has_no_device_address() {
        let host = Tensor::from(tract_ndarray::arr2(&[[1f32, 2.0], [3.0, 4.0]])).into_tvalue();
        assert_eq!(device_f32(&host), None);
    }
}
