//! Keeps freed memory in the process for reuse instead of handing it back
//! to the kernel. glibc serves every allocation above 32 MiB (its largest
//! mmap threshold) with a fresh `mmap` and returns it with `munmap` when
//! freed, so a training step that allocates and frees the same activation
//! tensors every step page-faults and zero-fills them anew each time. On a
//! 2-core AMD EPYC that cost the fast net 12% of its fp32 throughput at
//! batch 256 and 37% at batch 2000 (BENCHMARKS "Training throughput"); with
//! mmap off and trimming only past 2 GiB the step reuses its heap, as
//! PyTorch's CPU tuning guide gets with jemalloc or tcmalloc. A worker runs
//! one stage and exits, so holding its peak heap until then costs nothing.

/// Applies the settings; a no-op outside glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called at
    // start-up, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
