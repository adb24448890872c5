//! How our CUDA kernels are launched (CUDA's `<<<grid, block>>>`), apart from cudarc: the GPU
//! path converts a [`Launch`] for cudarc, and the tests run the same kernel sources with the
//! same launches on the CPU ([`super::emulated`]).

/// What a device operation gives: its value, or why the device failed (the callers turn that
/// into an [`crate::Error`], or fall back to the CPU).
pub(crate) type Res<T> = std::result::Result<T, String>;

/// Threads per block of the one-dimensional launches (`BLOCK` in the kernel sources, whose
/// block-wide reductions assume it).
pub(crate) const BLOCK: u32 = 256;

/// The grid (blocks) and block (threads) sizes of one kernel launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

impl Launch {
    /// At least `n` threads in blocks of [`BLOCK`], for kernels with one thread per element
    /// that check their index against `n`.
    pub fn elements(n: usize) -> Launch {
        Launch { grid: ((n as u32).div_ceil(BLOCK), 1, 1), block: (BLOCK, 1, 1) }
    }

    /// One block of [`BLOCK`] threads per row or image, `count` of them, for kernels that
    /// reduce a row within its block.
    pub fn per_block(count: usize) -> Launch {
        Launch { grid: (count as u32, 1, 1), block: (BLOCK, 1, 1) }
    }

    /// `tile x tile` blocks over a `k x k` matrix, one matrix per grid layer, `batch` layers.
    pub fn tiles(k: usize, tile: u32, batch: usize) -> Launch {
        let t = (k as u32).div_ceil(tile);
        Launch { grid: (t, t, batch as u32), block: (tile, tile, 1) }
    }
}

#[cfg(feature = "gpu")]
impl From<Launch> for cudarc::driver::LaunchConfig {
    fn from(l: Launch) -> Self {
        cudarc::driver::LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launches_cover_their_work() {
        assert_eq!(Launch::elements(1), Launch { grid: (1, 1, 1), block: (256, 1, 1) });
        assert_eq!(Launch::elements(256).grid.0, 1);
        assert_eq!(Launch::elements(257).grid.0, 2);
        assert_eq!(Launch::per_block(7), Launch { grid: (7, 1, 1), block: (256, 1, 1) });
        assert_eq!(Launch::tiles(20, 16, 3), Launch { grid: (2, 2, 3), block: (16, 16, 1) });
        assert_eq!(Launch::tiles(16, 16, 1).grid, (1, 1, 1));
    }
}
