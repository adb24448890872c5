//! Where networks run: device choice, the per-engine thread pool, tract plans.

use crate::alloc::MemoryLimit;
use crate::error::{Error, Result};
use std::sync::Arc;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::tract_data::knobs::KnobScope;

/// The compute device a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// CUDA when usable, else the CPU; the engine records which and why.
    #[default]
    Auto,
    /// tract's CPU engine.
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = Error;
    /// `auto`, `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| Error::arg(format!("unknown device {s:?}: expected auto, cpu, cuda or cuda:N"))),
        }
    }
}

/// Options of an [`Engine`].
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Worker threads for the networks; 0 means one per available core.
    pub threads: usize,
    pub device: Device,
    /// Cap on the buffers one segmentation or pseudo-labelling call allocates for its volume
    /// (outputs, maps, per-slice buffers; not the model's own weights and activations): work
    /// over it is refused before anything is allocated. Default: none.
    pub memory_limit: MemoryLimit,
    /// Smaller footprint, somewhat slower: on the CPU, every 3x3 convolution keeps its weights
    /// as they are and makes Winograd's transformed copies, 4x their size, during each
    /// convolution, a few output channels at a time; by default only the widest layers do
    /// (docs/BENCHMARKS.md, Memory). No effect on the GPU. Default off.
    pub low_memory: bool,
}

/// An execution context: the chosen device and a private thread pool.
///
/// Engines are cheap to clone (the pool is shared) and safe to use from several threads.
#[derive(Debug, Clone)]
pub struct Engine {
    executor: Executor,
    threads: usize,
    cuda: bool,
    device_name: String,
    device_note: String,
    memory_limit: MemoryLimit,
    low_memory: bool,
}

impl Engine {
    /// Creates an engine. `Cuda(n)` fails with the reason when CUDA is not usable; `Auto` then
    /// falls back to the CPU and says why in [`Engine::device_note`].
    pub fn new(options: &EngineOptions) -> Result<Self> {
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n if n > 1024 => return Err(Error::arg(format!("{n} threads is more than the 1024 supported"))),
            n => n,
        };
        let (cuda, device_name, device_note) = match options.device {
            Device::Cpu => (false, "cpu".to_string(), "CPU requested".to_string()),
            Device::Auto => match cuda_usable() {
                Ok(name) => (true, "cuda:0".to_string(), format!("CUDA device 0 ({name}) found and usable")),
                Err(why) => (false, "cpu".to_string(), format!("{why}; using the CPU")),
            },
            Device::Cuda(0) => match cuda_usable() {
                Ok(name) => (true, "cuda:0".to_string(), format!("CUDA device 0 ({name}) requested")),
                Err(why) => return Err(Error::Unsupported(format!("CUDA device 0 requested, but {why}"))),
            },
            Device::Cuda(n) => {
                return Err(Error::Unsupported(format!(
                    "CUDA device {n} requested, but tract-cuda drives device 0 only: \
                     select the card with CUDA_VISIBLE_DEVICES={n} and ask for cuda:0"
                )))
            }
        };
        // rayon refuses to build pools only when the OS refuses threads; report that, do not panic.
        let executor = std::panic::catch_unwind(|| {
            if threads == 1 {
                Executor::SingleThread
            } else {
                Executor::multithread_with_name(threads, "ichseg")
            }
        })
        .map_err(|_| Error::Unsupported(format!("could not start a pool of {threads} threads")))?;
        let memory_limit = options.memory_limit;
        Ok(Engine { executor, threads, cuda, device_name, device_note, memory_limit, low_memory: options.low_memory })
    }

    /// Worker threads used by the networks (and by operators left on the CPU on a GPU).
    pub fn threads(&self) -> usize {
        self.threads
    }
    /// What runs the convolutions on the CPU: our kernels at their instruction set (`avx512`,
    /// `avx2`, `portable`; `ICHSEG_CPU_LEVEL` lowers it), with `, low-memory` in that mode, or
    /// `tract` with `ICHSEG_TRACT_CONV=1`.
    pub fn cpu_kernels(&self) -> String {
        if !ichseg_cpu_kernels::enabled() {
            return "tract".to_string();
        }
        let level = ichseg_cpu_kernels::cpu_level();
        if self.low_memory {
            format!("{level}, low-memory")
        } else {
            level.to_string()
        }
    }
    /// Whether the engine trades speed for memory ([`EngineOptions::low_memory`]).
    pub fn low_memory(&self) -> bool {
        self.low_memory
    }
    /// `"cpu"` or `"cuda:N"`.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }
    /// Why this device was chosen.
    pub fn device_note(&self) -> &str {
        &self.device_note
    }
    /// Whether networks run on the GPU.
    pub fn is_cuda(&self) -> bool {
        self.cuda
    }
    /// The cap on buffers sized by the input ([`EngineOptions::memory_limit`]).
    pub fn memory_limit(&self) -> MemoryLimit {
        self.memory_limit
    }

    /// The plan this engine runs `model` with, for one f32 input of `shape` (what a
    /// [`crate::Segmenter`] runs; public for profiling, `examples/profile_plan.rs`).
    pub fn plan(&self, model: &super::OnnxModel, shape: [usize; 4]) -> Result<Arc<TypedRunnableModel>> {
        #[cfg(feature = "gpu")]
        if self.cuda {
            return super::gpu::plan(model, shape, self.executor.clone());
        }
        model.plan_with(shape, &ichseg_cpu_kernels::RewriteOptions { low_memory: self.low_memory })
    }

    /// `f` over `items` on this engine's thread pool (in order; sequential with one thread), for
    /// the per-slice work around the networks.
    pub(crate) fn par_map<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
        use rayon::prelude::*;
        match self.pool() {
            Some(pool) => pool.install(|| items.par_iter().map(f).collect()),
            None => items.iter().map(f).collect(),
        }
    }

    /// This engine's thread pool; `None` with one thread.
    pub(crate) fn pool(&self) -> Option<&rayon::ThreadPool> {
        match &self.executor {
            Executor::MultiThread(pool) => Some(pool.as_ref()),
            _ => None,
        }
    }

    /// Runs a plan on this engine's thread pool.
    /// tract-cuda panics when a device allocation fails: that, and an error saying so, become
    /// [`Error::DeviceMemory`] (the callers then retry with a smaller batch); any other panic an
    /// [`Error::Inference`].
    pub(crate) fn run(&self, plan: &Arc<TypedRunnableModel>, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        self.run_leaving_on_device(plan, inputs, &|_| false)
    }

    /// [`Engine::run`], where on the GPU the outputs `on_device` names stay there for our kernels
    /// to read in place ([`super::gpu::device_f32`]; on the host through
    /// [`super::gpu::to_host`]). On the CPU the same as [`Engine::run`].
    pub(crate) fn run_leaving_on_device(
        &self,
        plan: &Arc<TypedRunnableModel>,
        inputs: TVec<TValue>,
        on_device: &(dyn Fn(usize) -> bool + Sync),
    ) -> Result<TVec<TValue>> {
        let profiled = std::env::var_os("ICHSEG_PROFILE_OPS").is_some();
        let run_here = |plan: &Arc<TypedRunnableModel>, inputs: TVec<TValue>| {
            multithread_tract_scope(self.executor.clone(), || {
                if profiled {
                    run_profiled(plan, inputs)
                } else {
                    plan.run(inputs)
                }
            })
        };
        let run = std::panic::AssertUnwindSafe(|| {
            #[cfg(feature = "gpu")]
            if self.cuda {
                return super::gpu::run(inputs, on_device, |inputs| run_here(plan, inputs));
            }
            let _ = on_device;
            run_here(plan, inputs)
        });
        let message = match std::panic::catch_unwind(run) {
            Ok(Ok(outputs)) => return Ok(outputs),
            Ok(Err(e)) => format!("{e:#}"),
            Err(panic) => {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("the network run panicked: {text}")
            }
        };
        Err(device_failure(message))
    }
}

/// A plan run that prints, to stderr, where its host time went: spawning the state, each kind of
/// operator (count and time), and the rest (the turn handler's set-up, such as tract-gpu's
/// device memory arena, and the outputs). `ICHSEG_PROFILE_OPS=1` turns it on: a diagnostic for
/// GPU plans, whose kernels run asynchronously, so this is the host's side; a kernel profiler
/// gives the device's (scripts/gpu-check.sh).
fn run_profiled(plan: &Arc<TypedRunnableModel>, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
    use std::time::{Duration, Instant};
    let start = Instant::now();
    let mut state = plan.spawn()?;
    let spawned = start.elapsed();
    let mut per_op: std::collections::BTreeMap<String, (usize, Duration)> = Default::default();
    let outputs = state.run_plan_with_eval(inputs, |ctx, op_state, node, input| {
        let t = Instant::now();
        let result = tract_onnx::tract_core::plan::eval(ctx, op_state, node, input);
        let entry = per_op.entry(node.op().name().to_string()).or_default();
        entry.0 += 1;
        entry.1 += t.elapsed();
        result
    })?;
    let total = start.elapsed();
    let in_ops: Duration = per_op.values().map(|(_, d)| *d).sum();
    let mut ops: Vec<_> = per_op.into_iter().collect();
    ops.sort_by_key(|(_, (_, d))| std::cmp::Reverse(*d));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let top: Vec<String> = ops.iter().take(8).map(|(name, (n, d))| format!("{name} x{n} {:.1}", ms(*d))).collect();
    eprintln!(
        "ichseg-profile: run {:.1} ms = spawn {:.1} + ops {:.1} + rest {:.1}; ops (ms): {}",
        ms(total),
        ms(spawned),
        ms(in_ops),
        ms(total.saturating_sub(spawned + in_ops)),
        top.join(", ")
    );
    Ok(outputs)
}

/// A failed device operation's error: [`Error::DeviceMemory`] when `message` is CUDA's (or an
/// allocator's) "out of memory", so that the callers halve the batch, else [`Error::Inference`].
pub(crate) fn device_failure(message: String) -> Error {
    let m = message.to_ascii_lowercase();
    if m.contains("out_of_memory") || m.contains("out of memory") || m.contains("outofmemory") {
        Error::DeviceMemory(message)
    } else {
        Error::Inference(message)
    }
}

/// Whether CUDA can run networks here; `Ok` names the device, `Err` says why not.
fn cuda_usable() -> std::result::Result<String, String> {
    #[cfg(feature = "gpu")]
    return super::gpu::usable().map(str::to_string).map_err(str::to_string);
    #[cfg(not(feature = "gpu"))]
    Err("CUDA is not available in this build (built without the `cuda` feature)".to_string())
}

/// Where each operator of a model lands once translated for CUDA.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DevicePlacement {
    /// Operators that stay on the CPU, as (node name, operator); each costs a round trip.
    pub cpu_ops: Vec<(String, String)>,
    /// Operators translated to GPU kernels.
    pub gpu_ops: usize,
    /// Host/device copies in the graph (inputs up, outputs down, two per CPU island).
    pub transfers: usize,
}

/// Translates `model` for CUDA at input `shape` and reports which operators stay on the CPU.
/// Needs a usable GPU (tract-cuda creates its context while translating).
pub fn cuda_placement(model: &super::OnnxModel, shape: [usize; 4]) -> Result<DevicePlacement> {
    #[cfg(feature = "gpu")]
    return super::gpu::placement(model, shape);
    #[cfg(not(feature = "gpu"))]
    {
        let _ = (model, shape);
        Err(Error::Unsupported(cuda_usable().unwrap_err()))
    }
}

/// One CUDA library as the loader finds it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CudaLibrary {
    /// What it is: driver, runtime, NVRTC, cuBLAS, cuDNN.
    pub name: &'static str,
    /// The file loaded, when found.
    pub path: Option<String>,
    /// The names searched, in order (the loader's path: LD_LIBRARY_PATH, ld.so.cache).
    pub tried: Vec<String>,
}

/// One visible GPU.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuDevice {
    pub ordinal: usize,
    pub name: String,
    pub memory_bytes: u64,
}

/// What `ichseg doctor` prints: the CUDA stack as this build sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CudaReport {
    /// CUDA version of the bindings compiled in; `None` in a build without CUDA.
    pub bindings: Option<String>,
    pub libraries: Vec<CudaLibrary>,
    pub driver_version: Option<String>,
    pub runtime_version: Option<String>,
    pub cudnn_version: Option<String>,
    pub nvrtc_version: Option<String>,
    /// The toolkit include folder NVRTC compiles tract's kernels against, or why none.
    pub headers: std::result::Result<String, String>,
    pub devices: Vec<GpuDevice>,
    /// Why devices could not be listed, when they could not.
    pub device_error: Option<String>,
    /// `Ok(device name)` when networks can run on CUDA, else why not.
    pub usable: std::result::Result<String, String>,
}

impl CudaReport {
    /// A report with nothing found yet.
    pub(crate) fn empty(bindings: Option<String>, usable: std::result::Result<String, String>) -> Self {
        CudaReport {
            bindings,
            libraries: vec![],
            driver_version: None,
            runtime_version: None,
            cudnn_version: None,
            nvrtc_version: None,
            headers: Err("not looked for".into()),
            devices: vec![],
            device_error: None,
            usable,
        }
    }
}

/// Probes the CUDA stack without ever panicking or aborting (a machine without CUDA gets a
/// report saying what is missing).
pub fn cuda_report() -> CudaReport {
    #[cfg(feature = "gpu")]
    return super::gpu::report();
    #[cfg(not(feature = "gpu"))]
    CudaReport::empty(None, cuda_usable())
}

/// tract settings for the plans we build: its direct spatial convolution runs 3x3 convolutions
/// slower than im2col + matrix product on x86-64 (measured on U-Nets: docs/BENCHMARKS.md), so it
/// is turned off. A `TRACT_DISABLE_DIRECT_SPATIAL` environment variable still wins, for experiments.
pub fn plan_knobs() -> KnobScope {
    const DIRECT: &str = "TRACT_DISABLE_DIRECT_SPATIAL";
    let values: Vec<(&str, &str)> = if std::env::var_os(DIRECT).is_some() { vec![] } else { vec![(DIRECT, "true")] };
    // the knob name and value are fixed and valid in the pinned tract version
    KnobScope::new(values).unwrap_or_default()
}

/// The optimised plans of one model on one engine, one per batch size, each built on first use.
#[derive(Debug, Default)]
pub(crate) struct PlanCache(std::sync::Mutex<std::collections::HashMap<usize, Arc<TypedRunnableModel>>>);

impl PlanCache {
    /// The plan of `model` for `[batch, channels, rows, cols]` inputs, built by `engine` the
    /// first time this batch size is asked for.
    pub(crate) fn get(
        &self,
        engine: &Engine,
        model: &super::OnnxModel,
        [batch, channels, rows, cols]: [usize; 4],
    ) -> Result<Arc<TypedRunnableModel>> {
        let mut plans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = plans.get(&batch) {
            return Ok(p.clone());
        }
        let plan = engine.plan(model, [batch, channels, rows, cols])?;
        plans.insert(batch, plan.clone());
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_failures_out_of_memory_are_memory_errors() {
        for m in ["DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")", "cudaErrorMemoryAllocation: OutOfMemory"]
        {
            assert!(matches!(device_failure(m.to_string()), Error::DeviceMemory(t) if t == m), "{m}");
        }
        assert!(matches!(device_failure("CUDNN_STATUS_BAD_PARAM".into()), Error::Inference(_)));
    }

    #[test]
    fn plan_knobs_are_known_to_tract() {
        let scope = KnobScope::new([("TRACT_DISABLE_DIRECT_SPATIAL", "true")]);
        assert!(scope.is_ok(), "tract no longer knows this knob: {:?}", scope.err());
    }

    #[test]
    fn device_parsing() {
        assert_eq!("cuda:2".parse::<Device>().unwrap(), Device::Cuda(2));
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert!("gpu".parse::<Device>().unwrap_err().to_string().contains("unknown device"));
    }

    /// On a machine without a usable GPU (CI, the development machine): CUDA is refused with
    /// the reason, Auto falls back to the CPU, and probing never panics.
    #[test]
    fn without_a_gpu_cuda_is_refused_and_auto_falls_back() {
        let report = cuda_report();
        if report.usable.is_ok() {
            eprintln!("a usable GPU is present; the fallback is not exercised here");
            return;
        }
        let why = report.usable.unwrap_err();
        let err =
            Engine::new(&EngineOptions { threads: 1, device: Device::Cuda(0), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains(&why), "{err} / {why}");
        let e = Engine::new(&EngineOptions { threads: 2, device: Device::Auto, ..Default::default() }).unwrap();
        assert_eq!(e.device_name(), "cpu");
        assert!(!e.is_cuda());
        assert!(e.device_note().contains(&why), "{}", e.device_note());
        assert_eq!(e.threads(), 2);
    }

    #[test]
    fn only_device_zero_is_driven() {
        let err =
            Engine::new(&EngineOptions { threads: 1, device: Device::Cuda(1), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("CUDA_VISIBLE_DEVICES=1"), "{err}");
    }
}
