//! The machine's f32 multiply-add peak, measured: independent FMA chains (enough to hide the
//! latency) on `threads` threads at once, at one instruction-set level's vector width. Shared
//! by the examples that report a share of the peak (`#[path]`-included).

use ichseg_cpu_kernels::sgemm::CpuLevel;
use std::hint::black_box;
use std::time::Instant;

const CHAINS: usize = 12;
const ITERATIONS: u64 = 1 << 22;

#[cfg(target_arch = "x86_64")]
mod chains {
    use super::{CHAINS, ITERATIONS};
    use std::arch::x86_64::*;
    use std::hint::black_box;

    #[target_feature(enable = "avx512f")]
    pub fn avx512() -> f32 {
        let (x, y) = (_mm512_set1_ps(black_box(0.999)), _mm512_set1_ps(black_box(0.001)));
        let mut acc = [_mm512_set1_ps(1.); CHAINS];
        for _ in 0..black_box(ITERATIONS) {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn avx2() -> f32 {
        let (x, y) = (_mm256_set1_ps(black_box(0.999)), _mm256_set1_ps(black_box(0.001)));
        let mut acc = [_mm256_set1_ps(1.); CHAINS];
        for _ in 0..black_box(ITERATIONS) {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        let mut sum = [0f32; 8];
        for a in acc {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
            sum.iter_mut().zip(lanes).for_each(|(s, l)| *s += l);
        }
        sum.iter().sum()
    }
}

/// GFLOP/s of `threads` threads running FMA chains with `level`'s vectors at once (best of
/// three), if the CPU has them.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub fn gflops(level: CpuLevel, threads: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::is_x86_feature_detected as has;
        let (lanes, run): (usize, fn() -> f32) = match level {
            // SAFETY: the CPU has the features.
            CpuLevel::Avx512 if has!("avx512f") => (16, || unsafe { chains::avx512() }),
            // SAFETY: as above.
            CpuLevel::Avx2 if has!("avx2") && has!("fma") => (8, || unsafe { chains::avx2() }),
            _ => return None,
        };
        let best = (0..3)
            .map(|_| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    let all: Vec<_> = (0..threads).map(|_| s.spawn(move || black_box(run()))).collect();
                    all.into_iter().for_each(|t| drop(t.join()));
                });
                start.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        Some((2 * lanes * CHAINS * threads) as f64 * ITERATIONS as f64 / best / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}
