//! The `lanceferry` binary: the allocator set for bulk copies, then the CLI.

fn main() -> std::process::ExitCode {
    tune_allocator();
    lanceferry::cli::main()
}

/// glibc's malloc, left to itself, serves buffers of a few megabytes (a
/// batch of vectors, a Lance page being encoded) with fresh `mmap`s, or
/// returns them to the kernel when freed, so every copy pays a page fault
/// per 4 KiB it touches: a fifth of a copy's CPU time before this. A fixed
/// mmap threshold (glibc's largest, 32 MiB) and a trim threshold of
/// 256 MiB keep freed buffers in the heap for the next batch. The process
/// may hold up to that much freed memory; a copy's peak is measured in
/// docs/performance.md.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
