//! The process allocator: the system allocator, except that allocations of
//! [`HUGE`] bytes or more are reserved with `mmap(MAP_NORESERVE)`.
//!
//! Why: decoders we do not own (kafka-protocol 0.18's array decoder, MQTT codecs) size a
//! `Vec` from a count read off the wire before checking that the bytes exist. A 21-byte
//! DescribeGroups request claiming 2^31 group ids asks for 64 GiB; the system allocator
//! refuses, and Rust aborts the whole broker on allocation failure. A `MAP_NORESERVE`
//! mapping is address space only: pages cost memory when touched, so the oversized `Vec`
//! is never filled (the decoder fails on the missing bytes) and is unmapped when dropped.
//! Legitimate allocations this large (none in normal operation: frames are capped at
//! `kafka.max_frame_bytes`) behave as with any overcommitting allocator.
//!
//! Under `vm.overcommit_memory = 2` (strict accounting) the kernel ignores
//! MAP_NORESERVE and such a request still fails; the README says so.
#![allow(unsafe_code)] // The one exception to `unsafe_code = "forbid"`: a GlobalAlloc needs it.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations of at least this many bytes are served by `mmap(MAP_NORESERVE)`.
pub const HUGE: usize = 1 << 30;
const PAGE: usize = 4096;

pub struct Allocator;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

// SAFETY: every method upholds GlobalAlloc's contract: huge layouts (same predicate in
// alloc, dealloc and realloc) are page-aligned anonymous mappings of exactly
// `layout.size()` bytes, unmapped with the same size; all others go to `System`.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_huge(&layout) {
            return unsafe { System.alloc(layout) };
        }
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // Fresh anonymous mappings are zero-filled.
            unsafe { self.alloc(layout) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_reservations_are_virtual_and_reusable() {
        let a = Allocator;
        // 64 GiB: more than this machine's memory, as a malicious count would ask.
        let layout = Layout::from_size_align(64 << 30, 8).expect("layout");
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null(), "a NORESERVE reservation succeeds");
            *p = 7;
            *p.add((64 << 30) - 1) = 9;
            assert_eq!((*p, *p.add((64 << 30) - 1)), (7, 9));
            let q = a.realloc(p, layout, 16);
            assert!(!q.is_null());
            assert_eq!(*q, 7, "shrinking keeps the data");
            a.dealloc(q, Layout::from_size_align(16, 8).expect("layout"));
        }
    }

    #[test]
    fn small_allocations_use_the_system_allocator() {
        let a = Allocator;
        let layout = Layout::from_size_align(100, 16).expect("layout");
        unsafe {
            let p = a.alloc_zeroed(layout);
            assert!(!p.is_null());
            assert_eq!(*p.add(99), 0);
            let q = a.realloc(p, layout, HUGE + 1);
            assert!(
                !q.is_null(),
                "growing across the threshold moves to a mapping"
            );
            a.dealloc(q, Layout::from_size_align(HUGE + 1, 16).expect("layout"));
        }
    }
}
