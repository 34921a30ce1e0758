//! Page faults per cgroup, minor and major, from the perf software events the kernel raises in
//! `mm_account_fault` (the same place it counts a task's min_flt/maj_flt). One perf event per
//! CPU per kind, sample period 1: the program runs on every fault, in the faulting task's
//! context, so `bpf_get_current_cgroup_id()` names the cgroup to charge.

use aya_ebpf::{
    helpers::bpf_get_current_cgroup_id,
    macros::{map, perf_event},
    maps::PerCpuHashMap,
    programs::PerfEventContext,
};
use collector_common::{FaultCounts, counter};

use crate::counters::{BPF_NOEXIST, DEFAULT_CGROUPS, bump};

#[map(name = "FAULTS")]
static FAULTS: PerCpuHashMap<u64, FaultCounts> =
    PerCpuHashMap::with_max_entries(DEFAULT_CGROUPS, 0);

#[perf_event]
pub fn page_faults_minor(_ctx: PerfEventContext) -> u32 {
    count(FaultCounts { minor: 1, major: 0 });
    0
}

#[perf_event]
pub fn page_faults_major(_ctx: PerfEventContext) -> u32 {
    count(FaultCounts { minor: 0, major: 1 });
    0
}

#[inline(always)]
fn count(one: FaultCounts) {
    // SAFETY: helper without arguments; valid in perf_event programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if add(cgroup_id, &one) || FAULTS.insert(cgroup_id, one, BPF_NOEXIST).is_ok() {
        return;
    }
    // Another CPU may have created the entry between our lookup and insert.
    if !add(cgroup_id, &one) {
        bump(counter::FAULTS_INSERT_FAILED);
    }
}

#[inline(always)]
fn add(cgroup_id: u64, one: &FaultCounts) -> bool {
    let Some(c) = FAULTS.get_ptr_mut(cgroup_id) else {
        return false;
    };
    // SAFETY: this CPU's value; perf overflow handlers do not nest on one CPU for one event.
    unsafe {
        (*c).minor += one.minor;
        (*c).major += one.major;
    }
    true
}
