//! Where networks run: device choice, the per-engine thread pool, tract plans.

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
}

/// An execution context: the chosen device and a private thread pool.
///
/// Engines are cheap to clone (the pool is shared) and safe to use from several threads.
#[derive(Debug, Clone)]
pub struct Engine {
    executor: Executor,
    threads: usize,
    device_name: String,
    device_note: String,
}

impl Engine {
    /// Creates an engine. Asking for CUDA explicitly fails in a build without CUDA support;
    /// `Auto` falls back to the CPU and says why in [`Engine::device_note`].
    pub fn new(options: &EngineOptions) -> Result<Self> {
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n if n > 1024 => return Err(Error::arg(format!("{n} threads is more than the 1024 supported"))),
            n => n,
        };
        let device_note = match options.device {
            Device::Cpu => "CPU requested".to_string(),
            Device::Auto => {
                "CUDA not available in this build (built without the `cuda` feature); using the CPU".to_string()
            }
            Device::Cuda(n) => {
                return Err(Error::Unsupported(format!(
                "CUDA device {n} requested, but CUDA is not available in this build (built without the `cuda` feature)"
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
        Ok(Engine { executor, threads, device_name: "cpu".into(), device_note })
    }

    /// Worker threads used by the networks.
    pub fn threads(&self) -> usize {
        self.threads
    }
    /// `"cpu"` or `"cuda:N"`.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }
    /// Why this device was chosen.
    pub fn device_note(&self) -> &str {
        &self.device_note
    }

    /// Runs a plan on this engine's thread pool.
    pub(crate) fn run(&self, plan: &Arc<TypedRunnableModel>, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        multithread_tract_scope(self.executor.clone(), || plan.run(inputs))
            .map_err(|e| Error::Inference(format!("{e:#}")))
    }
}

/// tract settings for the plans we build, measured on U-Nets (docs/BENCHMARKS.md): its direct
/// spatial convolution runs 3x3 convolutions at about half the speed of im2col + matrix
/// product on x86-64 (base-64 U-Net at 384x384, 2 threads: 2.19 s -> 2.01 s per slice), so it is
/// turned off. A `TRACT_DISABLE_DIRECT_SPATIAL` environment variable still wins, for experiments.
pub fn plan_knobs() -> KnobScope {
    const DIRECT: &str = "TRACT_DISABLE_DIRECT_SPATIAL";
    let values: Vec<(&str, &str)> = if std::env::var_os(DIRECT).is_some() { vec![] } else { vec![(DIRECT, "true")] };
    // the knob name and value are fixed and valid in the pinned tract version
    KnobScope::new(values).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn cuda_is_refused_in_a_cpu_build_and_auto_falls_back() {
        let err = Engine::new(&EngineOptions { threads: 1, device: Device::Cuda(0) }).unwrap_err();
        assert!(err.to_string().contains("not available in this build"), "{err}");
        let e = Engine::new(&EngineOptions { threads: 2, device: Device::Auto }).unwrap();
        assert_eq!(e.device_name(), "cpu");
        assert!(e.device_note().contains("CUDA"));
        assert_eq!(e.threads(), 2);
    }
}
