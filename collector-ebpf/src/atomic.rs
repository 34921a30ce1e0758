//! An atomic add for map values that more than one program run may update at once.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

/// `*target += value`, atomically (BPF `lock +=`; the old value is never fetched, which would
/// need Linux 5.12).
///
/// # Safety
/// `target` is an aligned `u64` inside a map value, valid for this program's run.
#[inline(always)]
pub unsafe fn add(target: *mut u64, value: u64) {
    // SAFETY: the caller's guarantee.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(target, value) };
}
