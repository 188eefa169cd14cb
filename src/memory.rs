//! The allocator's share of memory. glibc gives each thread that allocates under
//! contention an arena of its own, up to eight per core, and an arena keeps what its
//! thread freed: with sixteen HTTP workers (each with its read connection's page cache)
//! the arenas alone held about two thirds of the service's resident memory. A few arenas
//! serve two cores as well; threads beyond them share.

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

#[cfg(test)]
mod tests {
    use super::*;

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
