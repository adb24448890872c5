//! f32 vectors for the loops that run across tiles or channels (Winograd's transforms): one
//! register at each instruction-set level, so that a transform written once against
//! [`Vector`] compiles to AVX-512 (16 lanes), AVX2 (8) or plain Rust (8). Plain loops the
//! compiler vectorises (max pooling) run through [`at_level`] too, to be compiled for the level.
//!
//! The methods are `#[inline(always)]`, to be inlined into a function compiled for their level:
//! [`at_level`] runs a [`ForLevel`] there with the type that matches the level. (A closure
//! passed to a function compiled for a level is not reliably inlined into it, and intrinsics
//! left outside are calls.)

use crate::sgemm::CpuLevel;

/// Lanes of the widest vector: buffers padded to this serve every level.
pub const MAX_LANES: usize = 16;

/// A vector of `LANES` f32 values.
pub trait Vector: Copy {
    const LANES: usize;

    /// # Safety
    /// `at` is valid for reads of `LANES` values; the CPU has the type's instruction set (so
    /// for every method).
    unsafe fn load(at: *const f32) -> Self;
    /// # Safety
    /// `at` is valid for writes of `LANES` values.
    unsafe fn store(self, at: *mut f32);
    /// # Safety (this and the arithmetic below)
    /// The CPU has the type's instruction set.
    unsafe fn splat(value: f32) -> Self;
    unsafe fn add(self, other: Self) -> Self;
    unsafe fn sub(self, other: Self) -> Self;
    unsafe fn scale(self, factor: f32) -> Self;
    unsafe fn max(self, other: Self) -> Self;
    /// The `4 * LANES` values at `at` split by position modulo 4: lane `t` of vector `p` is
    /// value `4 t + p`.
    ///
    /// # Safety
    /// `at` is valid for reads of `4 * LANES` values.
    unsafe fn load_quarters(at: *const f32) -> [Self; 4];
    /// The inverse of [`Vector::load_quarters`]: value `4 t + p` at `at` is lane `t` of
    /// `quarters[p]`.
    ///
    /// # Safety
    /// `at` is valid for writes of `4 * LANES` values.
    unsafe fn store_interleaved(quarters: [Self; 4], at: *mut f32);
}

/// Plain Rust, for CPUs without AVX2 (and the portable level).
#[derive(Clone, Copy)]
pub struct Portable([f32; 8]);

impl Portable {
    #[inline(always)]
    fn zip(mut self, other: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = f(*a, b);
        }
        self
    }
}

impl Vector for Portable {
    const LANES: usize = 8;

    #[inline(always)]
    unsafe fn load(at: *const f32) -> Self {
        Portable(std::ptr::read_unaligned(at as *const [f32; 8]))
    }
    #[inline(always)]
    unsafe fn store(self, at: *mut f32) {
        std::ptr::write_unaligned(at as *mut [f32; 8], self.0)
    }
    #[inline(always)]
    unsafe fn splat(value: f32) -> Self {
        Portable([value; 8])
    }
    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        self.zip(other, |a, b| a + b)
    }
    #[inline(always)]
    unsafe fn sub(self, other: Self) -> Self {
        self.zip(other, |a, b| a - b)
    }
    #[inline(always)]
    unsafe fn scale(self, factor: f32) -> Self {
        self.zip(self, |a, _| a * factor)
    }
    #[inline(always)]
    unsafe fn max(self, other: Self) -> Self {
        self.zip(other, f32::max)
    }
    #[inline(always)]
    unsafe fn load_quarters(at: *const f32) -> [Self; 4] {
        let mut quarters = [Portable([0.; 8]); 4];
        for (p, quarter) in quarters.iter_mut().enumerate() {
            for (t, value) in quarter.0.iter_mut().enumerate() {
                *value = *at.add(4 * t + p);
            }
        }
        quarters
    }
    #[inline(always)]
    unsafe fn store_interleaved(quarters: [Self; 4], at: *mut f32) {
        for t in 0..8 {
            for (p, quarter) in quarters.iter().enumerate() {
                *at.add(4 * t + p) = quarter.0[t];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Vector;
    use std::arch::x86_64::*;

    /// AVX2: 8 lanes.
    #[derive(Clone, Copy)]
    pub struct Avx2(__m256);

    /// AVX-512 F: 16 lanes.
    #[derive(Clone, Copy)]
    pub struct Avx512(__m512);

    // Every step from the caller compiled for the level down to the intrinsics is inlined
    // (`#[inline(always)]`, no closures or array helpers in between), so that the intrinsics
    // are compiled with the caller's features.
    impl Vector for Avx2 {
        const LANES: usize = 8;

        #[inline(always)]
        unsafe fn load(at: *const f32) -> Self {
            Avx2(_mm256_loadu_ps(at))
        }
        #[inline(always)]
        unsafe fn store(self, at: *mut f32) {
            _mm256_storeu_ps(at, self.0)
        }
        #[inline(always)]
        unsafe fn splat(value: f32) -> Self {
            Avx2(_mm256_set1_ps(value))
        }
        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            Avx2(_mm256_add_ps(self.0, other.0))
        }
        #[inline(always)]
        unsafe fn sub(self, other: Self) -> Self {
            Avx2(_mm256_sub_ps(self.0, other.0))
        }
        #[inline(always)]
        unsafe fn scale(self, factor: f32) -> Self {
            Avx2(_mm256_mul_ps(self.0, _mm256_set1_ps(factor)))
        }
        #[inline(always)]
        unsafe fn max(self, other: Self) -> Self {
            Avx2(_mm256_max_ps(self.0, other.0))
        }
        #[inline(always)]
        unsafe fn load_quarters(at: *const f32) -> [Self; 4] {
            let r = [at, at.add(8), at.add(16), at.add(24)];
            // a 4x4 transpose in each 128-bit half leaves the lanes in tile order 0 2 4 6 1 3 5 7
            let q = transpose4([
                _mm256_loadu_ps(r[0]),
                _mm256_loadu_ps(r[1]),
                _mm256_loadu_ps(r[2]),
                _mm256_loadu_ps(r[3]),
            ]);
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            let sorted = |q: __m256| Avx2(_mm256_permutevar8x32_ps(q, order));
            [sorted(q[0]), sorted(q[1]), sorted(q[2]), sorted(q[3])]
        }
        #[inline(always)]
        unsafe fn store_interleaved(quarters: [Self; 4], at: *mut f32) {
            let order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
            let [a, b, c, d] = quarters;
            let p = |q: Avx2| _mm256_permutevar8x32_ps(q.0, order);
            let rows = transpose4([p(a), p(b), p(c), p(d)]);
            for (i, row) in rows.iter().enumerate() {
                _mm256_storeu_ps(at.add(8 * i), *row);
            }
        }
    }

    /// The 4x4 transpose of `r` within each 128-bit half.
    #[inline(always)]
    unsafe fn transpose4(r: [__m256; 4]) -> [__m256; 4] {
        let (t0, t1) = (_mm256_unpacklo_ps(r[0], r[1]), _mm256_unpackhi_ps(r[0], r[1]));
        let (t2, t3) = (_mm256_unpacklo_ps(r[2], r[3]), _mm256_unpackhi_ps(r[2], r[3]));
        [
            _mm256_shuffle_ps::<0x44>(t0, t2),
            _mm256_shuffle_ps::<0xEE>(t0, t2),
            _mm256_shuffle_ps::<0x44>(t1, t3),
            _mm256_shuffle_ps::<0xEE>(t1, t3),
        ]
    }

    impl Vector for Avx512 {
        const LANES: usize = 16;

        #[inline(always)]
        unsafe fn load(at: *const f32) -> Self {
            Avx512(_mm512_loadu_ps(at))
        }
        #[inline(always)]
        unsafe fn store(self, at: *mut f32) {
            _mm512_storeu_ps(at, self.0)
        }
        #[inline(always)]
        unsafe fn splat(value: f32) -> Self {
            Avx512(_mm512_set1_ps(value))
        }
        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            Avx512(_mm512_add_ps(self.0, other.0))
        }
        #[inline(always)]
        unsafe fn sub(self, other: Self) -> Self {
            Avx512(_mm512_sub_ps(self.0, other.0))
        }
        #[inline(always)]
        unsafe fn scale(self, factor: f32) -> Self {
            Avx512(_mm512_mul_ps(self.0, _mm512_set1_ps(factor)))
        }
        #[inline(always)]
        unsafe fn max(self, other: Self) -> Self {
            Avx512(_mm512_max_ps(self.0, other.0))
        }
        #[inline(always)]
        unsafe fn load_quarters(at: *const f32) -> [Self; 4] {
            let r = [at, at.add(16), at.add(32), at.add(48)];
            // a 4x4 transpose in each 128-bit quarter leaves tile 4 k + q at lane 4 q + k
            let q = transpose4x4([
                _mm512_loadu_ps(r[0]),
                _mm512_loadu_ps(r[1]),
                _mm512_loadu_ps(r[2]),
                _mm512_loadu_ps(r[3]),
            ]);
            let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
            let sorted = |q: __m512| Avx512(_mm512_permutexvar_ps(order, q));
            [sorted(q[0]), sorted(q[1]), sorted(q[2]), sorted(q[3])]
        }
        #[inline(always)]
        unsafe fn store_interleaved(quarters: [Self; 4], at: *mut f32) {
            // the same order undoes itself
            let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
            let [a, b, c, d] = quarters;
            let p = |q: Avx512| _mm512_permutexvar_ps(order, q.0);
            let rows = transpose4x4([p(a), p(b), p(c), p(d)]);
            for (i, row) in rows.iter().enumerate() {
                _mm512_storeu_ps(at.add(16 * i), *row);
            }
        }
    }

    /// The 4x4 transpose of `r` within each 128-bit quarter.
    #[inline(always)]
    unsafe fn transpose4x4(r: [__m512; 4]) -> [__m512; 4] {
        let (t0, t1) = (_mm512_unpacklo_ps(r[0], r[1]), _mm512_unpackhi_ps(r[0], r[1]));
        let (t2, t3) = (_mm512_unpacklo_ps(r[2], r[3]), _mm512_unpackhi_ps(r[2], r[3]));
        [
            _mm512_shuffle_ps::<0x44>(t0, t2),
            _mm512_shuffle_ps::<0xEE>(t0, t2),
            _mm512_shuffle_ps::<0x44>(t1, t3),
            _mm512_shuffle_ps::<0xEE>(t1, t3),
        ]
    }
}

/// Work written once against [`Vector`] ([`at_level`] runs it).
pub trait ForLevel {
    type Output;
    /// Must be `#[inline(always)]`, and so must everything it calls that uses `V`.
    ///
    /// # Safety
    /// The CPU has `V`'s instruction set.
    unsafe fn run<V: Vector>(self) -> Self::Output;
}

/// Runs `work` compiled for `level` (the detected level when the CPU lacks it), with the
/// [`Vector`] type of that level.
///
/// # Safety
/// What `work.run` asks of its caller besides the instruction set.
pub unsafe fn at_level<W: ForLevel>(work: W, level: CpuLevel) -> W::Output {
    match level.usable() {
        #[cfg(target_arch = "x86_64")]
        CpuLevel::Avx512 => {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512<W: ForLevel>(work: W) -> W::Output {
                work.run::<Avx512>()
            }
            // SAFETY: the CPU has AVX-512 F (`usable`); the caller vouches for the rest.
            avx512(work)
        }
        #[cfg(target_arch = "x86_64")]
        CpuLevel::Avx2 => {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<W: ForLevel>(work: W) -> W::Output {
                work.run::<Avx2>()
            }
            // SAFETY: the CPU has AVX2 and FMA (`usable`); the caller vouches for the rest.
            avx2(work)
        }
        // SAFETY: plain Rust runs anywhere; the caller vouches for the rest.
        _ => work.run::<Portable>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quarters split and interleave as the scalar definition says, at every level the CPU has.
    #[inline(always)]
    unsafe fn check<V: Vector>() {
        let n = V::LANES;
        let values: Vec<f32> = (0..4 * n).map(|i| i as f32).collect();
        let mut lanes = vec![0f32; 4 * n];
        let mut back = vec![0f32; 4 * n];
        let quarters = V::load_quarters(values.as_ptr());
        for (p, q) in quarters.iter().enumerate() {
            q.store(lanes.as_mut_ptr().add(p * n));
        }
        V::store_interleaved(quarters, back.as_mut_ptr());
        for p in 0..4 {
            for t in 0..n {
                assert_eq!(lanes[p * n + t], (4 * t + p) as f32, "quarter {p}, lane {t}");
            }
        }
        assert_eq!(back, values);
        let a = V::splat(3.).scale(2.).sub(V::splat(1.)).add(V::splat(-7.)).max(V::splat(-4.));
        let mut out = vec![0f32; n];
        a.store(out.as_mut_ptr());
        assert!(out.iter().all(|&v| v == -2.));
    }

    struct Check;
    impl ForLevel for Check {
        type Output = ();
        #[inline(always)]
        unsafe fn run<V: Vector>(self) {
            check::<V>()
        }
    }

    #[test]
    fn quarters_and_arithmetic_at_every_level() {
        for level in crate::conv::test_support::levels() {
            // SAFETY: `check` asks nothing else.
            unsafe { at_level(Check, level) };
        }
    }
}
