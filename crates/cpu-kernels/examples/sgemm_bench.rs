//! Single-thread GFLOP/s of `sgemm` at each instruction-set level this CPU has, on the shapes of
//! the benchmark U-Net's Winograd products and a pointwise convolution's, against the core's
//! measured f32 multiply-add peak. A markdown table on stdout.
//!
//! `cargo run --release -p ichseg-cpu-kernels --example sgemm_bench`

use ichseg_cpu_kernels::sgemm::{sgemm, CpuLevel};
use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "shared/fma_peak.rs"]
mod fma_peak;

/// One product's shape: m x k times k x n, row strides `ld` for rhs and dst.
struct Shape {
    name: String,
    m: usize,
    n: usize,
    k: usize,
    ld: usize,
    accumulate: bool,
}

/// Seeded values in [-0.5, 0.5).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

/// Seconds per call of each of `fs`, the best of five rounds in which each runs for at least
/// 0.2 s in turn (so that a busy moment on the machine does not fall on one of them only).
fn seconds(fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut best = vec![f64::INFINITY; fs.len()];
    fs.iter_mut().for_each(|f| f());
    for _ in 0..5 {
        for (f, best) in fs.iter_mut().zip(&mut best) {
            let (start, mut calls) = (Instant::now(), 0u32);
            while calls == 0 || start.elapsed() < Duration::from_millis(200) {
                f();
                calls += 1;
            }
            *best = best.min(start.elapsed().as_secs_f64() / calls as f64);
        }
    }
    best
}

/// GFLOP/s of the product `s` at each of `levels`.
fn gflops(levels: &[CpuLevel], s: &Shape) -> Vec<f64> {
    let lhs = random(s.m * s.k, 1);
    let rhs = random(s.k * s.ld, 2);
    let mut dsts: Vec<Vec<f32>> = levels.iter().map(|_| random(s.m * s.ld, 3)).collect();
    let mut runs: Vec<Box<dyn FnMut() + '_>> = levels
        .iter()
        .zip(&mut dsts)
        .map(|(&level, dst)| {
            let (lhs, rhs) = (&lhs, &rhs);
            Box::new(move || {
                // SAFETY: the buffers hold the rows and strides given.
                unsafe {
                    sgemm(
                        level,
                        s.m,
                        s.n,
                        s.k,
                        dst.as_mut_ptr(),
                        s.ld,
                        s.accumulate,
                        lhs.as_ptr(),
                        s.k,
                        rhs.as_ptr(),
                        s.ld,
                    )
                };
                black_box(&mut *dst);
            }) as Box<dyn FnMut()>
        })
        .collect();
    let mut fs: Vec<&mut dyn FnMut()> = runs.iter_mut().map(|f| &mut **f as &mut dyn FnMut()).collect();
    seconds(&mut fs).iter().map(|t| 2. * (s.m * s.n * s.k) as f64 / t / 1e9).collect()
}

fn main() {
    let levels: Vec<CpuLevel> = CpuLevel::ALL.into_iter().filter(|l| l.is_available()).collect();
    let (peak512, peak2) = (fma_peak::gflops(CpuLevel::Avx512, 1), fma_peak::gflops(CpuLevel::Avx2, 1));
    let show = |p: Option<f64>| p.map_or("n/a".to_string(), |p| format!("{p:.1} GFLOP/s"));
    println!("Single-core f32 FMA peak: AVX-512 {}, AVX2 {}", show(peak512), show(peak2));
    println!("Default level: {} (detected {})\n", ichseg_cpu_kernels::cpu_level(), CpuLevel::detected());

    // Winograd: [cout][cin] x [cin][192 tiles], rows 200 apart (the tiles plus a lane group)
    let mut shapes: Vec<Shape> = [64, 128, 256, 512, 1024]
        .into_iter()
        .map(|c| Shape { name: format!("winograd {c}->{c}"), m: c, n: 192, k: c, ld: 200, accumulate: false })
        .collect();
    // a 1x1 convolution's product, a 2048-pixel range of a 96x96 image, accumulating on the bias
    shapes.push(Shape { name: "pointwise 256->256".into(), m: 256, n: 2048, k: 256, ld: 96 * 96, accumulate: true });

    // each level's share of the peak for its vector width; portable against the AVX2 peak
    let level_peak = |level: CpuLevel| if level == CpuLevel::Avx512 { peak512 } else { peak2 };
    let header: Vec<String> = levels.iter().map(|l| format!("{l} GFLOP/s (% peak)")).collect();
    let ratio = levels.contains(&CpuLevel::Avx512) && levels.contains(&CpuLevel::Avx2);
    println!("| shape (m x k x n) | {} |{}", header.join(" | "), if ratio { " avx512 / avx2 |" } else { "" });
    println!("|---|{}{}", "---|".repeat(levels.len()), if ratio { "---|" } else { "" });
    for s in &shapes {
        let results: Vec<(CpuLevel, f64)> = levels.iter().copied().zip(gflops(&levels, s)).collect();
        let cells: Vec<String> = results
            .iter()
            .map(|&(l, g)| match level_peak(l) {
                Some(p) => format!("{g:.1} ({:.0}%)", 100. * g / p),
                None => format!("{g:.1}"),
            })
            .collect();
        let get = |level| results.iter().find(|r| r.0 == level).map(|r| r.1);
        let speedup = match (get(CpuLevel::Avx512), get(CpuLevel::Avx2)) {
            (Some(a), Some(b)) => format!(" {:.2}x |", a / b),
            _ => String::new(),
        };
        println!("| {} ({}x{}x{}) | {} |{speedup}", s.name, s.m, s.k, s.n, cells.join(" | "));
    }
}
