//! Where a network's time goes on the CPU: times every node of the plan libichseg runs
//! (`Engine::plan`, as `Segmenter` builds it), and prints the totals per op kind, the slowest
//! nodes, and each convolution's effective speed against the machine's peak.
//!
//! cargo run --release --example profile_plan -- MODEL.onnx [ROWS COLS CHANNELS BATCH THREADS RUNS [low-memory]]
//!
//! Effective speed = a direct convolution's floating-point operations (2 x output values x
//! input channels x kernel taps; Winograd does fewer, so it can pass 100 %) over the node's
//! time. Peak = fused multiply-adds measured here, on THREADS threads at once, at the
//! instruction set our kernels use (`ICHSEG_CPU_LEVEL` lowers it), many independent chains so
//! that only throughput counts.

use std::collections::HashMap;
use std::time::Instant;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::format_err;

#[path = "../crates/cpu-kernels/examples/shared/fma_peak.rs"]
mod fma_peak;

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let path = args.first().ok_or_else(|| {
        format_err!("usage: profile_plan MODEL.onnx [ROWS COLS CHANNELS BATCH THREADS RUNS [low-memory]]")
    })?;
    let (rows, cols, channels, batch, threads, runs) =
        (num(1, 384), num(2, 384), num(3, 1), num(4, 1), num(5, 2), num(6, 3));
    let model = ichseg::OnnxModel::load(path.as_ref()).map_err(|e| format_err!("{e}"))?;
    let low_memory = args.get(7).is_some_and(|a| a == "low-memory");
    let engine = ichseg::Engine::new(&ichseg::EngineOptions {
        threads,
        device: ichseg::Device::Cpu,
        low_memory,
        ..Default::default()
    })
    .map_err(|e| format_err!("{e}"))?;
    let plan = engine.plan(&model, [batch, channels, rows, cols]).map_err(|e| format_err!("{e}"))?;
    let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
    let input: Tensor = tract_ndarray::Array4::<f32>::from_elem((batch, channels, rows, cols), 0.5).into();
    let mut per_op: HashMap<String, f64> = HashMap::new();
    let mut per_node: HashMap<usize, f64> = HashMap::new();
    let mut total = 0.0;
    multithread_tract_scope(executor, || -> TractResult<()> {
        let mut state = tract_onnx::tract_core::plan::SimpleState::new(&plan)?;
        state.run(tvec!(input.clone().into_tvalue()))?; // warm-up
        for _ in 0..runs {
            let start = Instant::now();
            state.run_plan_with_eval(tvec!(input.clone().into_tvalue()), |ctx, op_state, node, inputs| {
                let t = Instant::now();
                let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                let dt = t.elapsed().as_secs_f64();
                *per_op.entry(node.op().name().to_string()).or_default() += dt;
                *per_node.entry(node.id).or_default() += dt;
                out
            })?;
            total += start.elapsed().as_secs_f64();
        }
        Ok(())
    })?;
    let runs = runs as f64;
    println!("{path}: [{batch}, {channels}, {rows}, {cols}], {threads} thread(s): {:.3} s per run", total / runs);
    let mut ops: Vec<_> = per_op.into_iter().collect();
    ops.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("\nper op kind:");
    for (op, t) in &ops {
        println!("  {:>8.3} s  {:>5.1}%  {op}", t / runs, 100.0 * t / total);
    }
    let graph = plan.model();
    let mut nodes: Vec<_> = per_node.into_iter().collect();
    nodes.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("\nslowest nodes:");
    for (id, t) in nodes.iter().take(40) {
        let node = graph.node(*id);
        println!("  {:>8.3} s  {} ({})", t / runs, node.name, node.op().name());
    }

    let level = ichseg_cpu_kernels::cpu_level();
    let Some(peak) = fma_peak::gflops(level, threads).map(|g| g * 1e9) else {
        println!("\nno FMA peak for level {level}: convolutions against the peak skipped");
        return Ok(());
    };
    println!("\nconvolutions against the peak: {:.1} GFLOP/s ({threads} thread(s), {level} FMAs)", peak / 1e9);
    println!("| node | op | shape | GFLOP | ms | GFLOP/s | % of peak |");
    println!("|---|---|---|---:|---:|---:|---:|");
    let (mut all_flops, mut all_time) = (0.0, 0.0);
    for (id, t) in &nodes {
        let node = graph.node(*id);
        let Some((flops, shape)) = convolution_flops(graph, node)? else { continue };
        let t = t / runs;
        (all_flops, all_time) = (all_flops + flops, all_time + t);
        println!(
            "| {} | {} | {shape} | {:.2} | {:.1} | {:.0} | {:.0} % |",
            node.name,
            node.op().name(),
            flops / 1e9,
            t * 1e3,
            flops / t / 1e9,
            100.0 * flops / t / peak
        );
    }
    println!(
        "| all convolutions | | | {:.2} | {:.1} | {:.0} | {:.0} % |",
        all_flops / 1e9,
        all_time * 1e3,
        all_flops / all_time / 1e9,
        100.0 * all_flops / all_time / peak
    );
    Ok(())
}

/// A convolution node's direct-convolution operations and a description of its shape, from the
/// plan's concrete facts and the kernel size in the op's description; `None` for other nodes.
fn convolution_flops(graph: &TypedModel, node: &TypedNode) -> TractResult<Option<(f64, String)>> {
    let info = node.op().info()?.join(" ");
    let taps = match node.op().name().as_ref() {
        "WinogradConv" => 9,
        "PointwiseConv" => 1,
        "UpConv2x2" => 1, // each output value reads one tap per input channel
        "GemmConv" => {
            let (kh, kw) = info.split_once(' ').and_then(|(k, _)| k.split_once('x')).unwrap_or(("0", "0"));
            kh.parse::<usize>().unwrap_or(0) * kw.parse::<usize>().unwrap_or(0)
        }
        _ => return Ok(None),
    };
    let cin: usize = node
        .inputs
        .iter()
        .map(|i| graph.outlet_fact(*i).ok().and_then(|f| f.shape.as_concrete().map(|s| s[1])).unwrap_or(0))
        .sum();
    let out = graph.outlet_fact(OutletId::new(node.id, 0))?;
    let Some(out) = out.shape.as_concrete() else { return Ok(None) };
    let values: usize = out.iter().product();
    let flops = 2.0 * values as f64 * cin as f64 * taps as f64;
    Ok(Some((flops, format!("{cin}->{} at {}x{}, {taps} taps", out[1], out[2], out[3]))))
}
