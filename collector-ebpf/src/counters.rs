//! Per-CPU event counters (drops and read failures) that user space sums and reports.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use collector_common::counter;

/// Default capacity of per-cgroup maps; user space resizes them from its configuration.
pub const DEFAULT_CGROUPS: u32 = 16_384;
/// BPF_NOEXIST: insert only if absent, so a concurrent insert on this CPU is never overwritten.
pub const BPF_NOEXIST: u64 = 1;

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; tracing programs run with preemption disabled on this CPU.
        unsafe { *slot += 1 };
    }
}
