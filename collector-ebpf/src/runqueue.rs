//! Run-queue latency per cgroup: how long runnable tasks waited for a CPU.
//!
//! A task becomes runnable at wakeup (`sched_wakeup`, `sched_wakeup_new`) or when it is
//! preempted (switched out while still runnable); its wait ends when `sched_switch` switches it
//! in. The wait belongs to the incoming task's cgroup, read from `next` with BTF offsets, and
//! lands in that cgroup's log2 histogram.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use collector_common::{RUNQ_BUCKETS, RunqHistogram, counter};

use crate::{
    counters::{BPF_NOEXIST, DEFAULT_CGROUPS, bump},
    task,
};

/// Runnable tasks being timed. LRU: a task that exits while runnable is evicted, never leaked.
const MAX_RUNNABLE: u32 = 32_768;

#[map(name = "RUNNABLE_SINCE")]
static RUNNABLE_SINCE: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_RUNNABLE, 0);

#[map(name = "RUNQ_LATENCY")]
static RUNQ_LATENCY: PerCpuHashMap<u64, RunqHistogram> =
    PerCpuHashMap::with_max_entries(DEFAULT_CGROUPS, 0);

/// Never written: the zeroed value new histograms are inserted from (a 336-byte value built on
/// the 512-byte BPF stack would not fit beside the rest).
#[map(name = "RUNQ_ZERO")]
static RUNQ_ZERO: PerCpuArray<RunqHistogram> = PerCpuArray::with_max_entries(1, 0);

/// tp_btf sched_wakeup(struct task_struct *p)
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> u32 {
    runnable(ctx.arg(0));
    0
}

/// tp_btf sched_wakeup_new(struct task_struct *p)
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> u32 {
    runnable(ctx.arg(0));
    0
}

#[inline(always)]
fn runnable(task: *const u8) {
    let Some(off) = task::offsets() else { return };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(pid) = task::pid(task, &off)
        && pid != 0
    {
        let _ = RUNNABLE_SINCE.insert(pid, now, 0);
    }
}

/// tp_btf sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)
#[btf_tracepoint(function = "sched_switch")]
pub fn runq_switch(ctx: BtfTracePointContext) -> u32 {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(off) = task::offsets() else { return 0 };
    let preempt: u64 = ctx.arg(0);
    let prev_state: u64 = ctx.arg(3);
    // prev is still `current`. Preempted, or switched out without sleeping: still on the run
    // queue, so its wait starts now.
    let prev_pid = bpf_get_current_pid_tgid() as u32;
    if prev_pid != 0 && (preempt & 1 != 0 || prev_state as u32 == 0) {
        let _ = RUNNABLE_SINCE.insert(prev_pid, now, 0);
    }
    let next: *const u8 = ctx.arg(2);
    let Some(next_pid) = task::pid(next, &off) else {
        return 0;
    };
    if next_pid == 0 {
        return 0;
    }
    // SAFETY: the value is copied out before the entry is removed.
    let Some(since) = (unsafe { RUNNABLE_SINCE.get(next_pid) }).copied() else {
        return 0;
    };
    let _ = RUNNABLE_SINCE.remove(next_pid);
    if now <= since {
        return 0;
    }
    if let Some(cgroup_id) = task::cgroup_id(next, &off) {
        record(cgroup_id, now - since);
    }
    0
}

#[inline(always)]
fn record(cgroup_id: u64, wait_ns: u64) {
    let hist = match RUNQ_LATENCY.get_ptr_mut(cgroup_id) {
        Some(h) => h,
        None => {
            let Some(zero) = RUNQ_ZERO.get_ptr(0) else {
                return;
            };
            // SAFETY: a map value, valid for the duration of the program. Passed by reference on
            // purpose: by value it would be copied onto the stack.
            #[allow(clippy::needless_borrows_for_generic_args)]
            let _ = RUNQ_LATENCY.insert(cgroup_id, unsafe { &*zero }, BPF_NOEXIST);
            match RUNQ_LATENCY.get_ptr_mut(cgroup_id) {
                Some(h) => h,
                None => {
                    bump(counter::RUNQ_INSERT_FAILED);
                    return;
                }
            }
        }
    };
    let bucket = (log2(wait_ns) as usize).min(RUNQ_BUCKETS - 1);
    // SAFETY: this CPU's value; tracing programs run with preemption disabled.
    unsafe {
        if let Some(b) = (*hist).buckets.get_mut(bucket) {
            *b += 1;
        }
        (*hist).total_ns += wait_ns;
        (*hist).count += 1;
    }
}

/// floor(log2(v)), 0 for v <= 1; branchy but loop-free for the verifier.
#[inline(always)]
fn log2(mut v: u64) -> u32 {
    let mut r = 0;
    for shift in [32u32, 16, 8, 4, 2, 1] {
        if v >= 1u64 << shift {
            v >>= shift;
            r += shift;
        }
    }
    r
}
