//! Where tract spends a U-Net's time: times every node of the plan libichseg runs
//! (`OnnxModel::plan`, as `Segmenter` builds it), and prints the totals per op kind and the
//! slowest nodes.
//!
//! cargo run --release --example profile_plan -- MODEL.onnx [ROWS COLS CHANNELS BATCH THREADS RUNS [low-memory]]

use std::collections::HashMap;
use std::time::Instant;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::format_err;

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let path = args
        .first()
        .ok_or_else(|| format_err!("usage: profile_plan MODEL.onnx [ROWS COLS CHANNELS BATCH THREADS RUNS]"))?;
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
    let mut per_node: HashMap<String, f64> = HashMap::new();
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
                *per_node.entry(format!("{} ({})", node.name, node.op().name())).or_default() += dt;
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
    let mut nodes: Vec<_> = per_node.into_iter().collect();
    nodes.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("\nslowest nodes:");
    for (n, t) in nodes.iter().take(40) {
        println!("  {:>8.3} s  {n}", t / runs);
    }
    Ok(())
}
