//! CUDA plumbing shared by our own kernels, the CAMs' (`cam/kernels.cu`) and the CRF's
//! (`crf/kernels.cu`): compiling and loading a kernel source with NVRTC, launch geometry
//! ([`launch`]), running a device operation so that a driver error or a panic inside cudarc
//! becomes a library error ([`guarded`]), and, in tests, the CPU emulator that runs the same
//! sources with the same launches ([`emulated`]). What runs networks on the GPU (tract-cuda's
//! plans, the device probe) is the engine's, in `model::gpu`.

#[cfg(test)]
pub(crate) mod emulated;
pub(crate) mod launch;

pub(crate) use launch::{Launch, Res};

#[cfg(feature = "gpu")]
use std::sync::Arc;

/// Our own kernels (`source`, CUDA C) compiled by NVRTC without fused multiply-adds (the CPU
/// twins' rounding) and loaded on a new stream of device 0, behind a panic guard: cudarc panics
/// when a library is missing. `what` names them in errors.
#[cfg(feature = "gpu")]
pub(crate) fn load_kernels(
    source: &str,
    what: &str,
) -> std::result::Result<(Arc<cudarc::driver::CudaStream>, Arc<cudarc::driver::CudaModule>), String> {
    let load = || {
        crate::model::gpu::usable()?;
        let options = cudarc::nvrtc::CompileOptions { fmad: Some(false), ..Default::default() };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(source, options)
            .map_err(|e| format!("NVRTC could not compile the {what} kernels: {e}"))?;
        let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| format!("no CUDA context: {e}"))?;
        let stream = ctx.new_stream().map_err(|e| format!("no CUDA stream: {e}"))?;
        let module = ctx.load_module(ptx).map_err(|e| format!("cannot load the {what} kernels: {e}"))?;
        Ok((stream, module))
    };
    std::panic::catch_unwind(load)
        .unwrap_or_else(|_| Err(format!("the CUDA driver panicked while loading the {what} kernels")))
}

/// Runs a device operation `run` for `what` ("GPU CAMs", "GPU CRF"): a driver error or a panic
/// inside cudarc becomes [`Error::DeviceMemory`](crate::Error::DeviceMemory) when the device
/// ran out of memory, else [`Error::Inference`](crate::Error::Inference), and `after_failure`
/// runs first (e.g. to let queued work finish before the caller frees what it reads).
#[cfg(feature = "gpu")]
pub(crate) fn guarded<T>(what: &str, run: impl FnOnce() -> Res<T>, after_failure: impl FnOnce()) -> crate::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
        .unwrap_or_else(|_| Err("the CUDA driver panicked".into()))
        .map_err(|e| {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(after_failure));
            crate::model::runtime::device_failure(format!("{what}: {e}"))
        })
}

/// A cudarc driver error as this module's error text, naming `what` failed.
#[cfg(feature = "gpu")]
pub(crate) fn driver_error(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> String {
    move |err| format!("{what}: {err}")
}

/// `source` compiles with NVRTC into PTX with these kernels, where NVRTC can be loaded (no GPU
/// needed): a syntax or type error fails in a unit test rather than on the GPU machine. Skipped
/// without NVRTC (cudarc panics when it cannot load the library), unless `ICHSEG_REQUIRE_NVRTC`
/// is set (scripts/test.sh sets it where the NVRTC wheel is installed).
#[cfg(all(feature = "gpu", test))]
pub(crate) fn assert_compiles(source: &str, kernels: &[&str]) {
    let options = cudarc::nvrtc::CompileOptions { fmad: Some(false), ..Default::default() };
    match std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(source, options)) {
        Ok(result) => {
            let text = result.unwrap_or_else(|e| panic!("the kernels do not compile: {e}")).to_src();
            for name in kernels {
                assert!(text.contains(&format!(".entry {name}(")), "kernel {name} missing from the PTX");
            }
        }
        Err(_) if std::env::var_os("ICHSEG_REQUIRE_NVRTC").is_some() => {
            panic!("ICHSEG_REQUIRE_NVRTC is set but NVRTC cannot be loaded (LD_LIBRARY_PATH)")
        }
        Err(_) => eprintln!("NVRTC not loadable here: kernels not compiled"),
    }
}
