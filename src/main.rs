//! The `lanceferry` binary: the allocator set for bulk copies, then the CLI.

/// mimalloc, not glibc's malloc. A copy allocates each record's fields on
/// a reader thread and frees them on another, a few million small
/// allocations a minute, while Lance's threads take and return buffers of
/// megabytes. glibc served that with arenas that contend and hoard (1.1 GB
/// peak at 1,000,000 × 128 with its default arenas; with two, lock waits),
/// and with fresh `mmap`s for large buffers, a page fault per 4 KiB
/// touched. Measured in docs/performance.md: a sixth less CPU on the full
/// apply of 100,000 × 1536, a tenth less wall time at 1,000,000 × 128.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tune_allocator();
    lanceferry::cli::main()
}

/// mimalloc returns freed memory to the kernel 10 ms after it is freed by
/// default; a copy frees and reallocates a batch's worth every few
/// milliseconds, so it would fault the same pages in again and again (a
/// tenth of the full apply's CPU). A second's delay keeps them for the next
/// batch and still hands them back once a copy is over.
/// `MIMALLOC_PURGE_DELAY` in the environment wins.
fn tune_allocator() {
    // `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (mimalloc v3,
    // the version libmimalloc-sys =0.1.49 builds), not exported by the
    // bindings.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one allocator option; mimalloc's options are plain
        // atomics, safe to set at any time, and no other thread exists yet.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 1000) }
    }
}
