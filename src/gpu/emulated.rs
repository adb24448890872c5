//! Our CUDA kernel sources compiled for the CPU by the system C++ compiler, with a few
//! definitions standing in for CUDA's, and launched as the GPU would launch them, so that the
//! kernels and the code that drives them are tested without a GPU.
//!
//! Blocks run one after another. A block's threads run one at a time ([`Emulated::launch`]) or,
//! for kernels that `__syncthreads()`, each on its own OS thread behind a barrier
//! ([`Emulated::launch_synced`]); `__shared__` arrays become one static array per kernel, which
//! is right while one block runs at a time. Without fused multiply-adds, as NVRTC compiles them.

use super::launch::Launch;
use std::path::Path;
use std::process::Command;

const SHIM: &str = r#"
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define __global__
#define __device__ static inline
#define __shared__ static
struct EmuDim { unsigned x, y, z; };
static thread_local EmuDim blockIdx, threadIdx;
static EmuDim blockDim, gridDim;
static pthread_barrier_t emu_barrier;
static unsigned emu_barrier_threads;
extern "C" void emu_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                           unsigned barrier_threads) {
    gridDim = EmuDim{gx, gy, gz};
    blockDim = EmuDim{bx, by, bz};
    if (emu_barrier_threads) pthread_barrier_destroy(&emu_barrier);
    emu_barrier_threads = barrier_threads;
    if (barrier_threads) pthread_barrier_init(&emu_barrier, 0, barrier_threads);
}
extern "C" void emu_thread(unsigned bx, unsigned by, unsigned bz, unsigned tx, unsigned ty, unsigned tz) {
    blockIdx = EmuDim{bx, by, bz};
    threadIdx = EmuDim{tx, ty, tz};
}
static inline void __syncthreads() {
    if (!emu_barrier_threads) {
        fputs("emulated kernel: __syncthreads() in a launch without threads (use launch_synced)\n", stderr);
        abort();
    }
    pthread_barrier_wait(&emu_barrier);
}
static inline double __longlong_as_double(long long v) { double d; memcpy(&d, &v, sizeof d); return d; }
static inline int min(int a, int b) { return a < b ? a : b; }
"#;

type Dims = unsafe extern "C" fn(u32, u32, u32, u32, u32, u32, u32);
type ThreadIndex = unsafe extern "C" fn(u32, u32, u32, u32, u32, u32);

/// A kernel source compiled for the CPU, loaded from its temporary directory.
pub(crate) struct Emulated {
    lib: libloading::Library,
    _dir: tempfile::TempDir,
}

impl Emulated {
    /// Compiles `source` (a path from the crate root, e.g. `src/crf/kernels.cu`) and loads it.
    pub fn build(source: &str) -> Emulated {
        let dir = tempfile::tempdir().unwrap();
        let shim = dir.path().join("shim.h");
        std::fs::write(&shim, SHIM).unwrap();
        let lib = dir.path().join("libkernels.so");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
        let status = Command::new("c++")
            .args(["-O1", "-ffp-contract=off", "-pthread", "-shared", "-fPIC", "-x", "c++", "-include"])
            .arg(&shim)
            .arg(&source)
            .arg("-o")
            .arg(&lib)
            .status()
            .expect("a C++ compiler (c++) to build the emulated kernels");
        assert!(status.success(), "{} does not compile as C++", source.display());
        // SAFETY: our own library, with no initialisers.
        Emulated { lib: unsafe { libloading::Library::new(&lib) }.unwrap(), _dir: dir }
    }

    /// The kernel `name`; the caller gives it its signature in the source.
    pub fn kernel<T>(&self, name: &str) -> libloading::Symbol<'_, T> {
        // SAFETY: the callers give each kernel its signature in the source.
        unsafe { self.lib.get(name.as_bytes()) }.unwrap_or_else(|e| panic!("kernel {name}: {e}"))
    }

    fn start(&self, cfg: Launch, barrier_threads: u32) -> ThreadIndex {
        let (g, b) = (cfg.grid, cfg.block);
        // SAFETY: the shim's functions, with their signatures.
        unsafe {
            (*self.kernel::<Dims>("emu_launch"))(g.0, g.1, g.2, b.0, b.1, b.2, barrier_threads);
            *self.kernel::<ThreadIndex>("emu_thread")
        }
    }

    /// Every block of `cfg`, in order, as (x, y, z).
    fn blocks(cfg: Launch) -> impl Iterator<Item = (u32, u32, u32)> {
        let (x, y, z) = cfg.grid;
        (0..z).flat_map(move |k| (0..y).flat_map(move |j| (0..x).map(move |i| (i, j, k))))
    }

    /// Runs `call` once per thread of `cfg`, one thread at a time (kernels without barriers).
    pub fn launch(&self, cfg: Launch, call: impl Fn()) -> Result<(), String> {
        let index = self.start(cfg, 0);
        for b in Self::blocks(cfg) {
            for t in Self::blocks(Launch { grid: cfg.block, block: cfg.block }) {
                // SAFETY: the shim's `emu_thread`.
                unsafe { index(b.0, b.1, b.2, t.0, t.1, t.2) };
                call();
            }
        }
        Ok(())
    }

    /// Runs `call` once per thread of `cfg`, the threads of a block each on an OS thread of
    /// their own, so that the kernel's `__syncthreads()` holds them all.
    pub fn launch_synced(&self, cfg: Launch, call: impl Fn() + Sync) -> Result<(), String> {
        let (x, y, z) = cfg.block;
        let index = self.start(cfg, x * y * z);
        for b in Self::blocks(cfg) {
            std::thread::scope(|s| {
                for t in Self::blocks(Launch { grid: cfg.block, block: cfg.block }) {
                    let call = &call;
                    s.spawn(move || {
                        // SAFETY: the shim's `emu_thread`, setting this OS thread's indices.
                        unsafe { index(b.0, b.1, b.2, t.0, t.1, t.2) };
                        call();
                    });
                }
            });
        }
        Ok(())
    }
}
