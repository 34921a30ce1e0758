//! Per-CPU event counters (drops and truncations) that user space sums and reports; each object
//! has its own copy, indexed by [`collector_common::counter`].

use aya_ebpf::{macros::map, maps::PerCpuArray};
use collector_common::counter;

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot; tracing programs run with preemption disabled on this CPU.
        unsafe { *slot += 1 };
    }
}
