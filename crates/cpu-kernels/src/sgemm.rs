//! The f32 matrix product the convolution kernels use, `dst = (accumulate ? dst : 0) + lhs rhs`
//! on row-major matrices, at one of three instruction-set levels ([`CpuLevel`]):
//! - `Avx512`: our own blocked kernel with AVX-512 intrinsics (stable Rust);
//! - `Avx2`: the `gemm` crate, which without its nightly feature stops at AVX2 + FMA;
//! - `Portable`: the same blocked algorithm as `Avx512` with a plain-Rust microkernel, for CPUs
//!   without AVX2 and as a reference that runs everywhere.
//!
//! The level is detected once at run time ([`cpu_level`]); `ICHSEG_CPU_LEVEL=avx512|avx2|portable`
//! in the environment forces a lower one, for comparisons. A level above what the CPU has, or an
//! unknown value, is ignored: the detected level is kept.
//!
//! The blocked algorithm follows Goto & van de Geijn: `rhs` is packed a block of `KC x NC` at a
//! time into zero-padded panels of `NR` columns, and a microkernel keeps an `MR x NR` tile of
//! `dst` in registers over the block's depth, broadcasting `lhs` values read in place from `MR`
//! rows (the last rows of `lhs` are copied into `MR` zero-padded ones). `lhs` is not packed:
//! its rows are read sequentially, which measured as fast or faster than a transposing copy on
//! the kernels' shapes. Only the microkernel's loads and stores of `dst` are cut to the matrix.

use std::cell::RefCell;
use std::sync::OnceLock;

/// The instruction set of the matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuLevel {
    /// Our AVX-512 kernel.
    Avx512,
    /// The `gemm` crate (AVX2 + FMA; it picks its own kernels on older CPUs).
    Avx2,
    /// Our kernel in plain Rust.
    Portable,
}

impl CpuLevel {
    /// Every level, highest first.
    pub const ALL: [CpuLevel; 3] = [CpuLevel::Avx512, CpuLevel::Avx2, CpuLevel::Portable];

    fn rank(self) -> u8 {
        match self {
            CpuLevel::Portable => 0,
            CpuLevel::Avx2 => 1,
            CpuLevel::Avx512 => 2,
        }
    }

    /// The highest level this CPU has.
    pub fn detected() -> CpuLevel {
        static DETECTED: OnceLock<CpuLevel> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    return CpuLevel::Avx512;
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    return CpuLevel::Avx2;
                }
            }
            CpuLevel::Portable
        })
    }

    /// Whether this CPU can run this level.
    pub fn is_available(self) -> bool {
        self.rank() <= CpuLevel::detected().rank()
    }

    /// This level, or the detected one when the CPU lacks it.
    pub fn usable(self) -> CpuLevel {
        if self.is_available() {
            self
        } else {
            CpuLevel::detected()
        }
    }

    /// The level named `name` ("avx512", "avx2", "portable", any case), if any.
    pub fn parse(name: &str) -> Option<CpuLevel> {
        CpuLevel::ALL.into_iter().find(|level| name.trim().eq_ignore_ascii_case(&level.to_string()))
    }
}

impl std::fmt::Display for CpuLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuLevel::Avx512 => "avx512",
            CpuLevel::Avx2 => "avx2",
            CpuLevel::Portable => "portable",
        })
    }
}

/// The level to use given `ICHSEG_CPU_LEVEL`'s value `requested` and the `detected` one: the
/// requested level when it is known and not above the detected one, else the detected one.
pub fn chosen_level(requested: Option<&str>, detected: CpuLevel) -> CpuLevel {
    match requested.and_then(CpuLevel::parse) {
        Some(level) if level.rank() <= detected.rank() => level,
        _ => detected,
    }
}

/// The level the kernels use by default: the detected one, or a lower one that
/// `ICHSEG_CPU_LEVEL` asks for (read once).
pub fn cpu_level() -> CpuLevel {
    static LEVEL: OnceLock<CpuLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let requested = std::env::var("ICHSEG_CPU_LEVEL").ok();
        chosen_level(requested.as_deref(), CpuLevel::detected())
    })
}

/// Columns of the panels [`sgemm_panel`] at `level` reads in place, unpacked.
pub fn panel_width(level: CpuLevel) -> usize {
    let level = level.usable();
    match level {
        CpuLevel::Portable => PORTABLE_NR,
        #[cfg(target_arch = "x86_64")]
        CpuLevel::Avx512 => avx512::NR,
        // the `gemm` crate packs as it sees fit: any width serves
        _ => 48,
    }
}

/// `dst[m][n] = (accumulate ? dst : 0) + lhs[m][k] rhs[k][n]`, row-major with row strides `ldd`,
/// `lda` and `ldb`, on this thread, at `level` (or the detected level if the CPU lacks it).
///
/// # Safety
/// `dst` must be valid for reads and writes of `m` rows of `n` values `ldd` apart, `lhs` for
/// reads of `m` rows of `k` values `lda` apart, `rhs` of `k` rows of `n` values `ldb` apart;
/// `dst` must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    level: CpuLevel,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ldd: usize,
    accumulate: bool,
    lhs: *const f32,
    lda: usize,
    rhs: *const f32,
    ldb: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    multiply(level, Product { m, n, k, dst, ldd, accumulate, lhs, lda, rhs, ldb, rhs_panel: false });
}

/// [`sgemm`] with `rhs` laid out as one panel: `k` rows of [`panel_width`]`(level)` values,
/// of which the first `n` (at most that many) are the matrix. The panel is read in place, not
/// packed, so that a caller multiplying the same `rhs` by many `lhs` lays it out once.
///
/// # Safety
/// As [`sgemm`]'s, with `rhs` valid for reads of `k` whole rows of the panel width.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_panel(
    level: CpuLevel,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ldd: usize,
    accumulate: bool,
    lhs: *const f32,
    lda: usize,
    rhs: *const f32,
) {
    let ldb = panel_width(level);
    assert!(n <= ldb, "{n} columns in a panel of {ldb}");
    if m == 0 || n == 0 {
        return;
    }
    multiply(level, Product { m, n, k, dst, ldd, accumulate, lhs, lda, rhs, ldb, rhs_panel: true });
}

/// Runs `product` at `level` (or the detected level if the CPU lacks it).
///
/// # Safety
/// As [`sgemm`]'s, for `product`.
unsafe fn multiply(level: CpuLevel, product: Product) {
    let level = level.usable();
    let Product { m, n, k, dst, ldd, accumulate, lhs, lda, rhs, ldb, .. } = product;
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F (`is_available`); the caller vouches for the pointers.
        CpuLevel::Avx512 => avx512::sgemm(&product),
        CpuLevel::Avx2 => gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ldd as isize,
            accumulate,
            lhs,
            1,
            lda as isize,
            rhs,
            1,
            ldb as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        ),
        // SAFETY: the caller vouches for the pointers.
        _ => blocked::<Portable>(&product),
    }
}

/// The arguments of one product.
struct Product {
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ldd: usize,
    accumulate: bool,
    lhs: *const f32,
    lda: usize,
    rhs: *const f32,
    ldb: usize,
    /// `rhs` is one panel of the kernel's width ([`sgemm_panel`]): read in place.
    rhs_panel: bool,
}

/// A microkernel and the block sizes that suit it.
trait Kernel {
    /// Rows of `dst` per tile (a panel of `lhs`).
    const MR: usize;
    /// Columns of `dst` per tile (a panel of `rhs`).
    const NR: usize;
    /// Depth of the packed blocks: MR rows of `lhs` this long stay in L1.
    const KC: usize = 256;
    /// Columns of `rhs` packed at a time (a multiple of NR): the `KC x NC` block stays in L2.
    const NC: usize;

    /// `dst[i][j] = (overwrite ? 0 : dst[i][j]) + sum_p a[i][p] b[p][j]` for `i < rows`,
    /// `j < cols`.
    ///
    /// # Safety
    /// `a` holds MR rows of `k` values `lda` apart, `b` `k` x NR packed values; `dst` is valid
    /// for `rows` rows of `cols` values `ldd` apart.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        dst: *mut f32,
        ldd: usize,
        rows: usize,
        cols: usize,
        overwrite: bool,
    );
}

/// The packed product with kernel `K` (inlined into the caller, so that it is compiled with
/// the caller's target features).
///
/// # Safety
/// As [`sgemm`]'s, for `p`.
#[inline(always)]
unsafe fn blocked<K: Kernel>(p: &Product) {
    if p.k == 0 {
        if !p.accumulate {
            for i in 0..p.m {
                std::slice::from_raw_parts_mut(p.dst.add(i * p.ldd), p.n).fill(0.);
            }
        }
        return;
    }
    let b_len = K::KC * K::NC;
    with_packing(b_len + K::KC * K::MR, |packed| {
        let (b_packed, edge) = packed.split_at_mut(b_len);
        for jc in (0..p.n).step_by(K::NC) {
            let nc = K::NC.min(p.n - jc);
            // a panel is read in place (its columns past n are read but their results are not
            // stored)
            let in_place = p.rhs_panel && p.ldb == K::NR;
            for pc in (0..p.k).step_by(K::KC) {
                let kc = K::KC.min(p.k - pc);
                let b = if in_place {
                    p.rhs.add(pc * K::NR)
                } else {
                    pack_rhs::<K>(p.rhs.add(pc * p.ldb + jc), p.ldb, kc, nc, b_packed);
                    b_packed.as_ptr()
                };
                let overwrite = pc == 0 && !p.accumulate;
                for i0 in (0..p.m).step_by(K::MR) {
                    let rows = K::MR.min(p.m - i0);
                    // lhs is read in place; the last rows are copied into MR zero-padded ones
                    let (a, lda) = if rows == K::MR {
                        (p.lhs.add(i0 * p.lda + pc), p.lda)
                    } else {
                        edge.fill(0.);
                        for (i, row) in edge.chunks_exact_mut(kc).take(rows).enumerate() {
                            std::ptr::copy_nonoverlapping(p.lhs.add((i0 + i) * p.lda + pc), row.as_mut_ptr(), kc);
                        }
                        (edge.as_ptr(), kc)
                    };
                    for jr in (0..nc).step_by(K::NR) {
                        let dst = p.dst.add(i0 * p.ldd + jc + jr);
                        let cols = K::NR.min(nc - jr);
                        K::tile(kc, a, lda, b.add(jr * kc), dst, p.ldd, rows, cols, overwrite);
                    }
                }
            }
        }
    })
}

/// Packs `kc` rows of `nc` values of `rhs` (`ld` apart) into panels of NR columns, each
/// `[kc][NR]`, zero-padded.
///
/// # Safety
/// `rhs` is valid for reads of `kc` rows of `nc` values `ld` apart.
#[inline(always)]
unsafe fn pack_rhs<K: Kernel>(rhs: *const f32, ld: usize, kc: usize, nc: usize, packed: &mut [f32]) {
    for (panel, j0) in (0..nc).step_by(K::NR).enumerate() {
        let cols = K::NR.min(nc - j0);
        let dst = &mut packed[panel * kc * K::NR..][..kc * K::NR];
        for (p, dst) in dst.chunks_exact_mut(K::NR).enumerate() {
            let src = rhs.add(p * ld + j0);
            if cols == K::NR {
                // in pieces of a cache line: a whole row in one copy is a call to memcpy
                for j in (0..K::NR).step_by(16) {
                    std::ptr::copy_nonoverlapping(src.add(j), dst.as_mut_ptr().add(j), 16.min(K::NR - j));
                }
            } else {
                // element by element: a short row copied and cleared with calls to memcpy and
                // memset costs more than the products when few rows of lhs share the panel
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = if j < cols { *src.add(j) } else { 0. };
                }
            }
        }
    }
}

/// `f` on this thread's packing buffer of at least `len` floats, starting on a cache line.
fn with_packing<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    // room to move the start to a 64-byte boundary
    const SLACK: usize = 16;
    let aligned = |buffer: &mut Vec<f32>| -> usize {
        if buffer.len() < len + SLACK {
            buffer.resize(len + SLACK, 0.);
        }
        buffer.as_ptr().align_offset(64).min(SLACK)
    };
    PACKED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            let start = aligned(&mut buffer);
            f(&mut buffer[start..][..len])
        }
        // only if `f` itself multiplied: a buffer of its own
        Err(_) => {
            let mut buffer = vec![];
            let start = aligned(&mut buffer);
            f(&mut buffer[start..][..len])
        }
    })
}

/// The plain-Rust microkernel, which compilers vectorise for the target's baseline: 4 x 8, so
/// that the accumulators stay within x86-64's sixteen SSE registers (a wider tile spills).
struct Portable;

const PORTABLE_MR: usize = 4;
const PORTABLE_NR: usize = 8;

impl Kernel for Portable {
    const MR: usize = PORTABLE_MR;
    const NR: usize = PORTABLE_NR;
    const NC: usize = 512;

    #[inline]
    unsafe fn tile(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        dst: *mut f32,
        ldd: usize,
        rows: usize,
        cols: usize,
        overwrite: bool,
    ) {
        let mut acc = [[0f32; PORTABLE_NR]; PORTABLE_MR];
        for p in 0..k {
            let b = &*(b.add(p * PORTABLE_NR) as *const [f32; PORTABLE_NR]);
            for (i, acc) in acc.iter_mut().enumerate() {
                let a = *a.add(i * lda + p);
                for (acc, b) in acc.iter_mut().zip(b) {
                    *acc += a * b;
                }
            }
        }
        // constant bounds with a test inside: the accumulators stay in registers
        for (i, acc) in acc.iter().enumerate() {
            if i < rows {
                let row = std::slice::from_raw_parts_mut(dst.add(i * ldd), cols);
                for (d, &v) in row.iter_mut().zip(acc) {
                    *d = if overwrite { v } else { *d + v };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{blocked, Kernel, Product};
    use std::arch::x86_64::*;

    /// 8 rows x 48 columns: 24 accumulators of the 32 registers, three loads of `rhs` and eight
    /// broadcasts of `lhs` per 24 multiply-adds.
    pub struct Avx512;

    const MR: usize = 8;
    const VECTORS: usize = 3;
    pub const NR: usize = 16 * VECTORS;

    /// # Safety
    /// The CPU has AVX-512 F; as [`super::sgemm`] for `p`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn sgemm(p: &Product) {
        blocked::<Avx512>(p)
    }

    impl Kernel for Avx512 {
        const MR: usize = MR;
        const NR: usize = NR;
        const NC: usize = 480;

        #[inline]
        unsafe fn tile(
            k: usize,
            a: *const f32,
            lda: usize,
            b: *const f32,
            dst: *mut f32,
            ldd: usize,
            rows: usize,
            cols: usize,
            overwrite: bool,
        ) {
            // SAFETY: only called from `sgemm` above, on a CPU with AVX-512 F.
            tile(k, a, lda, b, dst, ldd, rows, cols, overwrite)
        }
    }

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        dst: *mut f32,
        ldd: usize,
        rows: usize,
        cols: usize,
        overwrite: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); VECTORS]; MR];
        let mut b = b;
        for p in 0..k {
            let bv: [__m512; VECTORS] = std::array::from_fn(|v| _mm512_loadu_ps(b.add(16 * v)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a.add(i * lda + p));
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_fmadd_ps(ai, bv, *acc);
                }
            }
            b = b.add(NR);
        }
        // lanes of each vector inside the matrix; masked lanes are neither read nor written
        let masks: [__mmask16; VECTORS] = std::array::from_fn(|v| {
            let lanes = cols.saturating_sub(16 * v).min(16);
            ((1u32 << lanes) - 1) as __mmask16
        });
        // constant bounds with a test inside: the accumulators stay in registers
        for (i, acc) in acc.iter().enumerate() {
            if i < rows {
                let row = dst.add(i * ldd);
                for (v, (&acc, &mask)) in acc.iter().zip(&masks).enumerate() {
                    let at = row.wrapping_add(16 * v);
                    let value = if overwrite { acc } else { _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, at)) };
                    _mm512_mask_storeu_ps(at, mask, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::test_support::{levels, random};

    /// sgemm against an f64 product, with row strides `pad` longer than the widths.
    fn check(level: CpuLevel, m: usize, n: usize, k: usize, pad: usize, accumulate: bool) {
        check_with(level, m, n, k, pad, accumulate, false)
    }

    /// `panel`: `rhs` as one panel ([`sgemm_panel`]; `n + pad` must be the panel width).
    fn check_with(level: CpuLevel, m: usize, n: usize, k: usize, pad: usize, accumulate: bool, panel: bool) {
        let (lda, ldb, ldd) = (k + pad, n + pad, n + 2 * pad);
        let lhs = random(m * lda, 1);
        let rhs = random(k * ldb, 2);
        let before = random(m * ldd, 3);
        let mut dst = before.clone();
        let (d, l, r) = (dst.as_mut_ptr(), lhs.as_ptr(), rhs.as_ptr());
        // SAFETY: the buffers hold the rows and strides given.
        unsafe {
            if panel {
                assert_eq!(ldb, panel_width(level));
                sgemm_panel(level, m, n, k, d, ldd, accumulate, l, lda, r)
            } else {
                sgemm(level, m, n, k, d, ldd, accumulate, l, lda, r, ldb)
            }
        };
        let mut want = before.clone();
        let mut scale = 1f64;
        for i in 0..m {
            for j in 0..n {
                let start = if accumulate { before[i * ldd + j] as f64 } else { 0. };
                let sum = (0..k).fold(start, |s, p| s + lhs[i * lda + p] as f64 * rhs[p * ldb + j] as f64);
                want[i * ldd + j] = sum as f32;
                scale = scale.max(sum.abs());
            }
        }
        let err = dst.iter().zip(&want).fold(0f32, |e, (a, b)| e.max((a - b).abs()));
        assert!(err as f64 <= 1e-5 * scale, "{level} {m}x{n}x{k} pad {pad} accumulate {accumulate}: error {err}");
    }

    #[test]
    fn matches_f64_product() {
        for level in levels() {
            for (m, n, k) in [(1, 1, 1), (7, 13, 31), (33, 100, 257), (100, 7, 13), (13, 257, 33), (31, 33, 100)] {
                for accumulate in [false, true] {
                    check(level, m, n, k, 0, accumulate);
                    check(level, m, n, k, 5, accumulate);
                }
            }
            // several blocks of each dimension, and the Winograd shape
            check(level, 300, 1000, 600, 3, true);
            check(level, 64, 192, 64, 8, false);
        }
    }

    #[test]
    fn rows_one_panel_wide_are_read_in_place() {
        for level in levels() {
            let width = panel_width(level);
            // deeper than one block of KC, and columns short of the panel
            for (m, n, k) in [(9, width, 300), (33, width - 5, 257), (8, 1, 3)] {
                for accumulate in [false, true] {
                    check_with(level, m, n, k, width - n, accumulate, true);
                }
            }
        }
    }

    #[test]
    fn empty_depth_zeroes_or_keeps() {
        for level in levels() {
            for accumulate in [false, true] {
                check(level, 7, 9, 0, 2, accumulate);
            }
            // and no rows or no columns: nothing is touched
            let mut dst = [1f32; 4];
            // SAFETY: nothing is read or written.
            unsafe { sgemm(level, 0, 4, 3, dst.as_mut_ptr(), 4, false, [].as_ptr(), 3, [].as_ptr(), 4) };
            // SAFETY: as above.
            unsafe { sgemm(level, 1, 0, 3, dst.as_mut_ptr(), 4, false, [].as_ptr(), 3, [].as_ptr(), 4) };
            assert_eq!(dst, [1.; 4]);
        }
    }

    #[test]
    fn environment_forces_a_lower_level_only() {
        use CpuLevel::*;
        assert_eq!(chosen_level(None, Avx512), Avx512);
        assert_eq!(chosen_level(Some("avx2"), Avx512), Avx2);
        assert_eq!(chosen_level(Some(" Portable "), Avx512), Portable);
        assert_eq!(chosen_level(Some("avx512"), Avx512), Avx512);
        assert_eq!(chosen_level(Some("avx512"), Avx2), Avx2);
        assert_eq!(chosen_level(Some("avx2"), Portable), Portable);
        assert_eq!(chosen_level(Some("sse9"), Avx2), Avx2);
        assert_eq!(chosen_level(Some(""), Avx512), Avx512);
        for level in CpuLevel::ALL {
            assert_eq!(CpuLevel::parse(&level.to_string()), Some(level));
        }
        assert!(CpuLevel::detected().is_available() && CpuLevel::Portable.is_available());
        assert!(cpu_level().is_available());
    }
}
