//! Allocations whose size comes from the input (volumes, slices, maps, decoded files) go through
//! here: they are fallible, so a volume too big for memory is an [`Error::OutOfMemory`] and never
//! an abort of the host process, and they are checked against a caller's memory limit first.

use crate::error::{Error, Result};
use ndarray::Array3;

/// A caller's cap on the bytes one call may allocate for buffers sized by its input; 0 = none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryLimit(pub usize);

impl MemoryLimit {
    /// No cap beyond what the allocator grants.
    pub const NONE: MemoryLimit = MemoryLimit(0);

    /// A limit of `mib` mebibytes (0: none); `None` when that many bytes do not fit a usize.
    pub fn from_mib(mib: u64) -> Option<MemoryLimit> {
        usize::try_from(mib).ok()?.checked_mul(1 << 20).map(MemoryLimit)
    }

    /// Refuses work that needs `bytes` (None: more than fits in a usize) before anything is
    /// allocated, when that is over the limit.
    pub fn check(self, bytes: Option<usize>, what: &str) -> Result<()> {
        match bytes {
            Some(b) if self.0 == 0 || b <= self.0 => Ok(()),
            _ => Err(Error::OutOfMemory(format!(
                "{what} needs {} but the memory limit is {}",
                show_bytes(bytes),
                show_bytes(Some(self.0))
            ))),
        }
    }
}

/// `n` copies of `value`, or [`Error::OutOfMemory`] naming `what` when the allocator refuses.
pub fn try_vec<T: Clone>(n: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = try_with_capacity(n, what)?;
    v.resize(n, value);
    Ok(v)
}

/// An empty vector with room for `n` items (filling it up to `n` never reallocates).
pub fn try_with_capacity<T>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::OutOfMemory(format!("{what}: could not allocate {}", show_bytes(n.checked_mul(size_of::<T>()))))
    })?;
    Ok(v)
}

/// A `[d0, d1, d2]` array filled with `value`, fallibly.
pub fn try_array3<T: Clone>(shape: (usize, usize, usize), value: T, what: &str) -> Result<Array3<T>> {
    let n = shape.0.checked_mul(shape.1).and_then(|n| n.checked_mul(shape.2));
    let n = n.ok_or_else(|| Error::OutOfMemory(format!("{what}: {shape:?} elements overflow")))?;
    let v = try_vec(n, value, what)?;
    Array3::from_shape_vec(shape, v).map_err(|e| Error::OutOfMemory(format!("{what}: {e}")))
}

/// `f` applied to every element of `a`, into a fallibly allocated array of the same shape.
pub fn try_map3<A, B>(a: &Array3<A>, what: &str, f: impl Fn(&A) -> B) -> Result<Array3<B>> {
    let mut v = try_with_capacity(a.len(), what)?;
    v.extend(a.iter().map(f));
    Array3::from_shape_vec(a.dim(), v).map_err(|e| Error::OutOfMemory(format!("{what}: {e}")))
}

fn show_bytes(bytes: Option<usize>) -> String {
    match bytes {
        None => "more bytes than the address space holds".into(),
        Some(b) if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_allocations_are_errors_not_aborts() {
        let e = try_vec(usize::MAX / 2, 0u8, "a test buffer").unwrap_err();
        assert!(matches!(e, Error::OutOfMemory(_)) && e.to_string().contains("a test buffer"), "{e}");
        let e = try_array3((1 << 40, 1 << 30, 1 << 30), 0f32, "maps").unwrap_err();
        assert!(matches!(e, Error::OutOfMemory(_)), "{e}");
        assert_eq!(try_array3((2, 3, 4), 7u8, "small").unwrap().sum(), 7 * 24);
        let a = Array3::from_elem((1, 2, 2), 2.0f32);
        assert_eq!(try_map3(&a, "mapped", |v| *v as u8 + 1).unwrap(), Array3::from_elem((1, 2, 2), 3u8));
    }

    #[test]
    fn the_limit_is_checked_before_allocating() {
        assert!(MemoryLimit::NONE.check(Some(usize::MAX), "x").is_ok());
        assert!(MemoryLimit(100).check(Some(100), "x").is_ok());
        let e = MemoryLimit(1 << 20).check(Some(3 << 30), "segmenting a 1024x1024x512 volume").unwrap_err();
        assert!(e.to_string().contains("needs 3.00 GiB but the memory limit is 1.0 MiB"), "{e}");
        assert!(MemoryLimit(1).check(None, "x").is_err());
        assert_eq!(MemoryLimit::from_mib(3), Some(MemoryLimit(3 << 20)));
        assert_eq!(MemoryLimit::from_mib(0), Some(MemoryLimit::NONE));
        assert_eq!(MemoryLimit::from_mib(u64::MAX), None);
    }
}
