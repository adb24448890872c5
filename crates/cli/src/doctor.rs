//! `ichseg doctor`: what this build finds of CUDA, and which device `auto` picks.

use clap::Args;
use ichseg::model::runtime::{cuda_report, CudaReport};
use ichseg::{Device, Engine, EngineOptions, Error, Result};

#[derive(Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: &DoctorArgs) -> Result<()> {
    let report = cuda_report();
    let engine = Engine::new(&EngineOptions { threads: 0, device: Device::Auto, ..Default::default() })?;
    if a.json {
        let out = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"), "cuda": report,
            "auto": {"device": engine.device_name(), "why": engine.device_note(), "threads": engine.threads()},
            "cpu_kernels": engine.cpu_kernels(),
        });
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::arg(e.to_string()))?);
        return Ok(());
    }
    print_text(&report);
    println!("auto      {} x{} threads: {}", engine.device_name(), engine.threads(), engine.device_note());
    println!(
        "cpu conv  {} (ICHSEG_CPU_LEVEL=avx2|portable lowers it; ICHSEG_TRACT_CONV=1: tract's)",
        engine.cpu_kernels()
    );
    Ok(())
}

fn print_text(r: &CudaReport) {
    println!("ichseg    {}", env!("CARGO_PKG_VERSION"));
    let Some(bindings) = &r.bindings else {
        println!("cuda      not in this build (built without the `cuda` feature)");
        return;
    };
    println!("bindings  CUDA {bindings} (libraries loaded at run time)");
    let path = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    println!("libpath   LD_LIBRARY_PATH={path}");
    for lib in &r.libraries {
        match &lib.path {
            Some(p) => println!("{:<9} found   {p}", lib.name),
            None => {
                // The loader's full candidate list is long; the versioned sonames are the telling part.
                let names: Vec<&str> = lib.tried.iter().map(String::as_str).filter(|n| n.contains(".so.")).collect();
                println!(
                    "{:<9} MISSING (searched the loader path for {} and {} more)",
                    lib.name,
                    names.join(", "),
                    lib.tried.len() - names.len()
                );
            }
        }
    }
    let v = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    println!(
        "versions  driver API {}, runtime {}, cuDNN {}, NVRTC {}",
        v(&r.driver_version),
        v(&r.runtime_version),
        v(&r.cudnn_version),
        v(&r.nvrtc_version)
    );
    match &r.headers {
        Ok(p) => println!("headers   {p} (for NVRTC)"),
        Err(e) => println!("headers   MISSING: {e}"),
    }
    for d in &r.devices {
        println!("device    {}: {} ({:.1} GiB)", d.ordinal, d.name, d.memory_bytes as f64 / (1u64 << 30) as f64);
    }
    if let Some(e) = &r.device_error {
        println!("devices   none listed: {e}");
    }
}
