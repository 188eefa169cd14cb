//! The allocators, and their share of memory.
//!
//! The service's own allocations go to mimalloc (`Allocator`, the binary's global
//! allocator). With some seventy threads sharing glibc's arenas, malloc and free were a
//! fifth of the service's CPU in creates on PostgreSQL, mostly buffers allocated on one
//! thread and freed on another; mimalloc gives each thread a heap of its own.
//!
//! glibc's malloc still serves the C code (SQLite's page caches). It gives each thread
//! that allocates under contention an arena of its own, up to eight per core, and an
//! arena keeps what its thread freed: with sixteen HTTP workers (each with its read
//! connection's page cache) the arenas alone held about two thirds of the service's
//! resident memory. A few arenas serve two cores as well; threads beyond them share.

/// Arenas on a machine of `cores` cores: one per core, at least two.
fn arenas_for(cores: usize) -> usize {
    cores.clamp(2, 64)
}

/// Whether `MALLOC_ARENA_MAX` holds a count that glibc applies itself: a positive
/// decimal number. glibc ignores an empty or malformed value, so that must not leave the
/// arenas unbounded; anything odd gets the service's bound.
fn counted_by_operator(value: Option<&str>) -> bool {
    value
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|n| n > 0)
}

/// Bounds glibc's malloc arenas, unless `MALLOC_ARENA_MAX` already says how many (glibc
/// reads it itself). Call first thing in `main`, before any other thread starts.
pub fn bound_arenas() {
    if counted_by_operator(std::env::var("MALLOC_ARENA_MAX").ok().as_deref()) {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    set_arena_max(arenas_for(cores));
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(arenas: usize) {
    let arenas = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes a malloc tunable; M_ARENA_MAX takes any positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: usize) {}

/// mimalloc's options the service sets, by their numbers in its mimalloc.h (version 3,
/// `mi_option_e`): whether an arena is committed whole when reserved (2: where the
/// system overcommits, as Linux does), and how long freed memory is kept before it goes
/// back to the system (1,000 ms).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The service's allocator: mimalloc, told before its first allocation to commit memory
/// as it is used and to give back what it freed at once. Its arenas are reserved by the
/// first allocations, before `main`, and mimalloc's defaults commit them whole and keep
/// what their threads freed: 90-100 MB resident in the benchmark's mix, against 22-25 MB
/// so.
pub struct Allocator;

static TUNED: std::sync::Once = std::sync::Once::new();

fn tune() {
    for (option, value) in [(ARENA_EAGER_COMMIT, 0), (PURGE_DELAY, 0)] {
        // SAFETY: sets one of mimalloc's tunables, by its number in mimalloc.h.
        unsafe { libmimalloc_sys::mi_option_set(option, value) };
    }
}

// SAFETY: every call goes to mimalloc as it is; `tune` allocates nothing.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        TUNED.call_once(tune);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        TUNED.call_once(tune);
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mimalloc_is_told_to_commit_as_used_and_purge_at_once_before_its_first_allocation() {
        use std::alloc::{GlobalAlloc, Layout};
        let get = |option| unsafe { libmimalloc_sys::mi_option_get(option) };
        // mimalloc's defaults: the options' numbers are the ones meant.
        assert_eq!([ARENA_EAGER_COMMIT, PURGE_DELAY].map(get), [2, 1000]);
        let layout = Layout::from_size_align(100, 8).unwrap();
        unsafe {
            let p = Allocator.alloc(layout);
            assert!(!p.is_null());
            Allocator.dealloc(p, layout);
        }
        assert_eq!([ARENA_EAGER_COMMIT, PURGE_DELAY].map(get), [0, 0]);
    }

    #[test]
    fn one_arena_per_core_and_never_fewer_than_two() {
        assert_eq!(arenas_for(1), 2);
        assert_eq!(arenas_for(2), 2);
        assert_eq!(arenas_for(8), 8);
        assert_eq!(arenas_for(1000), 64);
    }

    #[test]
    fn only_a_positive_count_in_the_environment_overrides_the_bound() {
        assert!(counted_by_operator(Some("4")));
        assert!(counted_by_operator(Some("16")));
        assert!(!counted_by_operator(Some(" 1 ")));
        assert!(!counted_by_operator(Some("+2")));
        assert!(!counted_by_operator(None));
        assert!(!counted_by_operator(Some("")));
        assert!(!counted_by_operator(Some("0")));
        assert!(!counted_by_operator(Some("many")));
    }
}
