//! Per-cgroup CPU time from `sched_switch`.
//!
//! At every switch the interval that just ended is charged to the outgoing task's cgroup. The
//! outgoing task is still `current`, so `bpf_get_current_cgroup_id()` names its v2 cgroup without
//! reading any kernel struct. The idle task (pid 0) is never charged. The switch-in time and the
//! incoming task's cgroup are stored per CPU so user space can add the interval still running.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use collector_common::{RunningSlot, counter};

use crate::{
    counters::{BPF_NOEXIST, DEFAULT_CGROUPS, bump},
    task,
};

#[map(name = "CPU_TIME")]
static CPU_TIME: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(DEFAULT_CGROUPS, 0);

#[map(name = "RUNNING")]
static RUNNING: PerCpuArray<RunningSlot> = PerCpuArray::with_max_entries(1, 0);

/// tp_btf sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...).
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    // Read the clock first so the probe's own run time is not charged to the next task.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(slot) = RUNNING.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot, preemption is disabled in tracepoint context.
    let slot = unsafe { &mut *slot };

    let outgoing_pid = bpf_get_current_pid_tgid() as u32;
    if slot.start_ns != 0 && outgoing_pid != 0 && now > slot.start_ns {
        // SAFETY: helper without arguments; valid in tracing programs.
        let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        charge(&ctx, cgroup_id, now - slot.start_ns);
    }

    let next: *const u8 = ctx.arg(2);
    slot.start_ns = now;
    slot.cgroup_id = incoming_cgroup_id(next);
    0
}

#[inline(always)]
fn charge(ctx: &BtfTracePointContext, cgroup_id: u64, ns: u64) {
    if let Some(total) = CPU_TIME.get_ptr_mut(cgroup_id) {
        // SAFETY: per-CPU value of this CPU; no other writer while preemption is disabled.
        unsafe { *total += ns };
    } else if CPU_TIME.insert(cgroup_id, ns, BPF_NOEXIST).is_err() {
        bump(counter::CPU_TIME_INSERT_FAILED);
        // Rare (map full) and filtered by AYA_LOG_LEVEL, which user space sets to off by default.
        warn!(
            ctx,
            "CPU_TIME full: {} ns of cgroup {} dropped", ns, cgroup_id
        );
    }
}

/// `next->cgroups->dfl_cgrp->kn->id`, or 0 for the idle task or when the offsets are unknown.
#[inline(always)]
fn incoming_cgroup_id(next: *const u8) -> u64 {
    let Some(off) = task::offsets() else {
        return 0;
    };
    if next.is_null() {
        return 0;
    }
    match task::cgroup_id(next, &off) {
        Some(id) => id,
        None => {
            bump(counter::RUNNING_READ_FAILED);
            0
        }
    }
}
