//! The global allocator of libichseg's Rust code (the library's, not its host's: a C or C++
//! program keeps its own `malloc`): the system allocator, except that on Linux with transparent
//! huge pages available, blocks of at least [`LARGE`] bytes are mapped directly and advised for
//! huge pages.
//!
//! Why: a network run allocates every layer's output afresh (tract's tensors). glibc serves a
//! block over its mmap threshold (32 MiB at most) with a fresh mapping each time, and the kernel
//! faults its pages in 4 KiB at a time, on every run (docs/BENCHMARKS.md, "Page faults"). With
//! `MADV_HUGEPAGE` such a block faults in 2 MiB at a time. Where huge pages are off, every block
//! is the system allocator's, whose heap can at least reuse blocks under its threshold.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of at least this many bytes (one huge page) are mapped here; smaller ones go to the
/// system allocator. Only 32 MiB and up was measured slower: glibc maps many blocks below that
/// afresh too.
pub const LARGE: usize = HUGE_PAGE;

/// The huge-page size (x86-64, and aarch64 with 4 KiB pages) large blocks are aligned to.
const HUGE_PAGE: usize = 2 << 20;

/// The page size mappings come in: their length is a multiple of it, their start aligned to it.
const PAGE: usize = 4096;

/// [`System`], with blocks of [`LARGE`] bytes or more mapped for huge pages where there are.
pub struct Allocator;

#[cfg(target_os = "linux")]
mod large {
    use super::{HUGE_PAGE, PAGE};
    use std::sync::atomic::{AtomicU8, Ordering};

    /// Whether the kernel gives huge pages to a mapping advised for them: its setting is
    /// `always` or `madvise`, not `never` (read once; a missing file counts as `never`).
    pub fn huge_pages_available() -> bool {
        static STATE: AtomicU8 = AtomicU8::new(0); // 0: not read yet, 1: yes, 2: no
        match STATE.load(Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => {
                let yes = read_setting().is_some_and(|s| !contains(&s, b"[never]"));
                STATE.store(if yes { 1 } else { 2 }, Ordering::Relaxed);
                yes
            }
        }
    }

    /// The sysfs setting, read into a stack buffer: the allocator must not allocate here.
    fn read_setting() -> Option<([u8; 128], usize)> {
        let path = c"/sys/kernel/mm/transparent_hugepage/enabled";
        let mut buf = [0u8; 128];
        // SAFETY: a NUL-terminated path; reads into a buffer of the given length; closed once.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return None;
            }
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
            (n > 0).then_some((buf, n as usize))
        }
    }

    fn contains((buf, n): &([u8; 128], usize), needle: &[u8]) -> bool {
        buf[..*n].windows(needle.len()).any(|w| w == needle)
    }

    /// The length mapped for a block of `size` bytes (whole pages); None if it overflows.
    pub fn mapped_len(size: usize) -> Option<usize> {
        size.checked_next_multiple_of(PAGE)
    }

    /// A zeroed anonymous mapping of `len` bytes (whole pages) that starts on a huge-page
    /// boundary, advised for huge pages; null if the system refuses it. The tail past the last
    /// whole huge page stays in small pages, so no block holds more memory than it asks for.
    pub unsafe fn map(len: usize) -> *mut u8 {
        let Some(reserved) = len.checked_add(HUGE_PAGE) else { return std::ptr::null_mut() };
        let p = libc::mmap(
            std::ptr::null_mut(),
            reserved,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return std::ptr::null_mut();
        }
        // keep the aligned part: huge pages map only 2 MiB-aligned ranges
        let start = p as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        if aligned > start {
            libc::munmap(p, aligned - start);
        }
        let end = aligned + len;
        if start + reserved > end {
            libc::munmap(end as *mut libc::c_void, start + reserved - end);
        }
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        aligned as *mut u8
    }

    pub unsafe fn unmap(p: *mut u8, len: usize) {
        libc::munmap(p.cast(), len);
    }

    /// The mapping `p` of `len` bytes resized to `new_len` (whole pages), moved if need be (its
    /// pages move along, nothing is copied), or null with `p` left as it was.
    pub unsafe fn remap(p: *mut u8, len: usize, new_len: usize) -> *mut u8 {
        let q = libc::mremap(p.cast(), len, new_len, libc::MREMAP_MAYMOVE);
        if q == libc::MAP_FAILED {
            return std::ptr::null_mut();
        }
        libc::madvise(q, new_len, libc::MADV_HUGEPAGE);
        q.cast()
    }
}

impl Allocator {
    /// Whether a block of this layout is mapped here rather than by the system allocator (page
    /// alignment at most: mappings are page-aligned).
    fn is_large(layout: Layout) -> bool {
        #[cfg(target_os = "linux")]
        return layout.size() >= LARGE && layout.align() <= PAGE && large::huge_pages_available();
        #[cfg(not(target_os = "linux"))]
        false
    }
}

// SAFETY: large blocks are fresh mappings of at least the requested size (zeroed, page-aligned,
// so any alignment up to 4096 holds), unmapped with the same length on dealloc; the length is a
// function of the layout's size alone, which GlobalAlloc guarantees is the same at dealloc, and
// whether a block is large depends on the layout and a setting read once. Every other block is
// the system allocator's, with its own guarantees.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        #[cfg(target_os = "linux")]
        if Self::is_large(layout) {
            return large::mapped_len(layout.size()).map_or(std::ptr::null_mut(), |len| large::map(len));
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Self::is_large(layout) {
            return self.alloc(layout); // a fresh mapping is zeroed
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        #[cfg(target_os = "linux")]
        if Self::is_large(layout) {
            if let Some(len) = large::mapped_len(layout.size()) {
                large::unmap(ptr, len);
            }
            return;
        }
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        if !Self::is_large(layout) && !Self::is_large(new_layout) {
            return System.realloc(ptr, layout, new_size);
        }
        #[cfg(target_os = "linux")]
        if Self::is_large(layout) && Self::is_large(new_layout) {
            // a growing Vec of a decoded volume: the kernel moves the pages, no copy
            return match (large::mapped_len(layout.size()), large::mapped_len(new_size)) {
                (Some(len), Some(new_len)) => large::remap(ptr, len, new_len),
                _ => std::ptr::null_mut(),
            };
        }
        let new = self.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills `len` bytes at `p` with a pattern that differs from page to page.
    unsafe fn fill(p: *mut u8, len: usize) {
        std::slice::from_raw_parts_mut(p, len).iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8);
    }

    unsafe fn holds_pattern(p: *const u8, len: usize) -> bool {
        std::slice::from_raw_parts(p, len).iter().enumerate().all(|(i, &b)| b == (i % 251) as u8)
    }

    #[test]
    fn blocks_are_zeroed_aligned_and_keep_their_contents_through_realloc() {
        for (size, align) in [(LARGE, 8), (LARGE + 12345, 64), (3 * LARGE + 1, 4096), (LARGE - 1, 16)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            unsafe {
                let p = Allocator.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                fill(p, size);
                // grow and shrink between large sizes (mremap), then below the threshold and
                // back over it (copies): the contents move along
                let grown = Allocator.realloc(p, layout, 5 * size);
                assert!(!grown.is_null() && grown as usize % align == 0);
                assert!(holds_pattern(grown, size));
                let layout = Layout::from_size_align(5 * size, align).unwrap();
                let shrunk = Allocator.realloc(grown, layout, size + 1);
                assert!(!shrunk.is_null() && holds_pattern(shrunk, size));
                let layout = Layout::from_size_align(size + 1, align).unwrap();
                let small = Allocator.realloc(shrunk, layout, 1000);
                assert!(!small.is_null() && holds_pattern(small, 1000));
                let small_layout = Layout::from_size_align(1000, align).unwrap();
                let big = Allocator.realloc(small, small_layout, size + 7);
                assert!(!big.is_null() && holds_pattern(big, 1000));
                Allocator.dealloc(big, Layout::from_size_align(size + 7, align).unwrap());
            }
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn mappings_start_on_a_huge_page_and_move_with_their_contents() {
        unsafe {
            let len = large::mapped_len(LARGE + 5).unwrap();
            assert_eq!(len, LARGE + 4096);
            let p = large::map(len);
            assert!(!p.is_null() && p as usize % HUGE_PAGE == 0);
            assert!(std::slice::from_raw_parts(p, len).iter().all(|&b| b == 0));
            fill(p, len);
            let q = large::remap(p, len, 4 * len);
            assert!(!q.is_null() && holds_pattern(q, len));
            large::unmap(q, 4 * len);
            // more address space than any machine has: refused, nothing mapped
            assert!(large::map(usize::MAX / 2).is_null());
            assert!(large::mapped_len(usize::MAX - 1).is_none());
        }
    }

    #[test]
    fn small_and_overaligned_blocks_go_to_the_system_allocator() {
        assert!(!Allocator::is_large(Layout::from_size_align(LARGE - 1, 8).unwrap()));
        assert!(!Allocator::is_large(Layout::from_size_align(LARGE, 8192).unwrap()));
        let layout = Layout::from_size_align(LARGE, 8192).unwrap();
        unsafe {
            let p = Allocator.alloc(layout);
            assert!(!p.is_null() && p as usize % 8192 == 0);
            fill(p, LARGE);
            Allocator.dealloc(p, layout);
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_library_allocates_through_it_where_huge_pages_are_on() {
        let v = vec![1u8; 4 * LARGE];
        // the system allocator's large blocks start past a header, never on a 2 MiB boundary
        let ours = v.as_ptr() as usize % HUGE_PAGE == 0;
        if large::huge_pages_available() {
            assert!(ours, "large blocks do not come from this allocator");
        } else {
            assert!(!ours);
            eprintln!("transparent huge pages are off here: large blocks are the system allocator's");
        }
    }

    #[test]
    fn an_impossible_block_is_refused_not_aborted() {
        let layout = Layout::from_size_align(usize::MAX / 2 - 4096, 8).unwrap();
        assert!(unsafe { Allocator.alloc(layout) }.is_null());
        let mut v: Vec<u8> = Vec::new();
        assert!(v.try_reserve_exact(isize::MAX as usize / 2).is_err());
    }
}
