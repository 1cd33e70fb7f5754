//! bar's own memory.

/// Returns the memory this process freed to the system. glibc keeps freed memory in each
/// thread's arena otherwise, so the RSS of a long recording would stay at the largest thing it
/// ever built (a dump, the unwind table of a large library) rather than what it holds.
pub fn give_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator's own.
    unsafe {
        libc::malloc_trim(0);
    }
}
