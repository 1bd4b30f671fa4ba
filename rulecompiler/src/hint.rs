//! A cache prefetch hint, for the classifier's batch lookup and the dataplane's conntrack: the one
//! `unsafe` call outside the modules the house style names.
//!
//! Why it is here: the batch lookup's speed on traffic without locality is memory-level
//! parallelism. Without an explicit hint, a mispredicted branch in one key's leaf scan flushes
//! the loads already issued for the next keys; a prefetch issued before it still completes.
//! Measured in `docs/design/classifier.md` ("Prefetching"). Stable Rust has no safe prefetch
//! (`core::intrinsics::prefetch_read_data` is unstable), hence this wrapper.

/// Hints the CPU to bring the cache line holding `value` into L1. Never faults, never changes
/// program state; a no-op off x86_64.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    #[expect(unsafe_code, reason = "prefetch hint; see the module documentation")]
    // SAFETY: `_mm_prefetch` is a hint: it performs no architectural memory access, cannot
    // fault, and has no effect on program state whatever the address (here it is a valid
    // reference anyway). Its only requirement is the `sse` target feature, which is part of
    // the x86_64 baseline every x86_64 Rust target enables.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            std::ptr::from_ref(value).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
