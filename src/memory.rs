//! Giving freed heap memory back to the system between the phases of a long command.

/// Returns the heap's free pages to the system. glibc keeps what many small allocations freed
/// (depmod's tables over thousands of modules: ~45 MiB) resident in the middle of its arenas,
/// where only `malloc_trim` releases it; a phase that needs much memory next (zstd's workers)
/// would otherwise add to it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_freed() {
    // SAFETY: malloc_trim has no preconditions; it only walks the allocator's own free lists.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other C libraries return free memory on their own, or offer no way to ask.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed() {}
