//! The `sched` family's logic, shared by its two objects (`bin/sched.rs`, with per-task
//! baselines in task storage, 5.13+; `bin/sched_slot.rs`, per-CPU baselines only, any kernel).
//!
//! Each of the two includes this file as its own module (`#[path]`) rather than through the
//! library: a `#[map]` static is kept by the linker in every object that links the module that
//! defines it, used or not, so from the library the family's per-CPU counters and histograms
//! were created again, unused, by the `oom` and `lifecycle` objects (4.5 MiB of kernel memory
//! each at 2 CPUs, 46 MiB each projected to 128).
//!
//! At switch-out, a task's own counters minus their values at its last switch-out are what it
//! did since: its run time (`se.sum_exec_runtime`, updated by the scheduler before the
//! tracepoint fires), its faults (`min_flt`, `maj_flt`, counted in the faulting task) and the
//! wait before its run (`sched_info.run_delay` and `.pcount`, added by `sched_info_arrive` just
//! after the tracepoint that switched it in). These counters only move while the task runs, so
//! the differences are exact, and they go to the cgroup it is in at switch-out.
//!
//! The per-task baselines live in task storage where the kernel allows it: a switch-in or
//! switch-out the tracepoint did not show (seen on some kernels) then costs nothing. Otherwise,
//! and for a task with no baseline yet, the per-CPU slot written at switch-in holds it, which is
//! right whenever the previous switch-in on this CPU was this task's. The slot also names the task
//! on each CPU for user space, which tops up a run still in progress (a CPU hog) from
//! `/proc/<tid>/schedstat`.
//!
//! A cgroup's values live at its row of two arrays (per-CPU counters, shared histograms), as
//! in rezolus' samplers: the program resolves cgroup id -> row through a hash once, caches the
//! answer beside the task's baseline, and from then on indexes arrays (inlined by the verifier)
//! where two hash lookups (jhash and a bucket walk each) took ~80 of ~140 ns a switch. A row is
//! taken from a queue of free ones at a cgroup's first charge; user space frees it with the
//! cgroup, zeroed, after a pass's grace. A cached row is used only while `ROW_OWNERS` still
//! names the cgroup, so a row freed and given to another cgroup is never charged by mistake.

use aya_ebpf::{
    Global,
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, Queue},
};
use collector_common::{
    CgroupCounters, DEFAULT_MAX_CGROUPS, OnCpu, RUNQ_BUCKETS, RowRef, RunqBuckets, SchedOffsets,
    counter,
};

use collector_ebpf::{
    counters::bump,
    kernel::{dfl_cgroup_id, field},
};

/// A task's counters at one instant (the same five as a cgroup's).
pub type TaskCounters = CgroupCounters;

#[unsafe(no_mangle)]
pub static SCHED_OFFSETS: Global<SchedOffsets> = Global::new(SchedOffsets {
    task_pid: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    sum_exec_runtime: 0,
    min_flt: 0,
    maj_flt: 0,
    run_delay: 0,
    pcount: 0,
    has_sched_info: 0,
    valid: 0,
});

#[map]
static CGROUP_ROWS: HashMap<u64, u32> = HashMap::with_max_entries(DEFAULT_MAX_CGROUPS, 0);

#[map]
static ROW_OWNERS: Array<u64> = Array::with_max_entries(DEFAULT_MAX_CGROUPS, 0);

#[map]
static FREE_ROWS: Queue<u32> = Queue::with_max_entries(DEFAULT_MAX_CGROUPS, 0);

#[map]
static CGROUP_COUNTERS: PerCpuArray<CgroupCounters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_CGROUPS, 0);

#[map]
static RUNQ_HISTOGRAMS: Array<RunqBuckets> = Array::with_max_entries(DEFAULT_MAX_CGROUPS, 0);

#[map]
static ON_CPU: PerCpuArray<OnCpu> = PerCpuArray::with_max_entries(1, 0);

/// One field of `SCHED_OFFSETS`, read where it is used: a volatile read of frozen read-only data,
/// which the verifier sees as a constant and LLVM cannot fold to the zero it was compiled with
/// (reading the whole struct up front would spill twelve registers to the stack).
macro_rules! offset {
    ($field:ident) => {
        offset_at::<{ core::mem::offset_of!(SchedOffsets, $field) }>()
    };
}

/// The u32 at byte `AT` of `SCHED_OFFSETS`.
#[inline(always)]
fn offset_at<const AT: usize>() -> u32 {
    // SAFETY: `Global<T>` is `repr(transparent)` over `T`, and every `AT` is the offset of a u32
    // field of `SchedOffsets` (from `offset_of!`).
    unsafe {
        core::ptr::read_volatile(
            (&raw const SCHED_OFFSETS)
                .cast::<u8>()
                .add(AT)
                .cast::<u32>(),
        )
    }
}

/// Whether user space filled in the offsets (nothing runs otherwise).
#[inline(always)]
pub fn ready() -> bool {
    offset!(valid) != 0
}

/// This CPU's slot.
#[inline(always)]
pub fn slot() -> Option<&'static mut OnCpu> {
    // SAFETY: this CPU's slot; tracing programs run with preemption disabled.
    ON_CPU.get_ptr_mut(0).map(|s| unsafe { &mut *s })
}

/// `task->pid`.
///
/// # Safety
/// `task` must be a BTF-typed `struct task_struct *` (a tracepoint's or iterator's argument).
#[inline(always)]
pub unsafe fn tid(task: *const u8) -> u32 {
    // SAFETY: the caller's contract; the offset comes from this kernel's BTF.
    unsafe { field(task, offset!(task_pid)) }
}

/// A task's counters now.
///
/// # Safety
/// As for [`tid`].
#[inline(always)]
pub unsafe fn counters(task: *const u8) -> TaskCounters {
    // SAFETY (every read): the caller's contract.
    let sched_info = offset!(has_sched_info) != 0;
    TaskCounters {
        cpu_ns: unsafe { field(task, offset!(sum_exec_runtime)) },
        minor_faults: unsafe { field(task, offset!(min_flt)) },
        major_faults: unsafe { field(task, offset!(maj_flt)) },
        wait_ns: if sched_info {
            unsafe { field(task, offset!(run_delay)) }
        } else {
            0
        },
        waits: if sched_info {
            unsafe { field(task, offset!(pcount)) }
        } else {
            0
        },
    }
}

/// `task->cgroups->dfl_cgrp->kn->id`.
///
/// # Safety
/// As for [`tid`].
#[inline(always)]
unsafe fn cgroup_of(task: *const u8) -> u64 {
    // SAFETY: the caller's contract; `cgroups` is then a BTF css_set *.
    unsafe {
        let css_set: *const u8 = field(task, offset!(task_cgroups));
        dfl_cgroup_id(
            css_set,
            offset!(css_set_dfl_cgrp),
            offset!(cgroup_kn),
            offset!(kernfs_node_id),
        )
    }
}

/// Charges what `prev` did since `since` (its last switch-out, or this run's switch-in) to the
/// cgroup it is in now, through `resolved` (that cgroup's row when it was last resolved for this
/// baseline), and returns its counters now (its next baseline).
///
/// # Safety
/// As for [`tid`].
#[inline(always)]
pub unsafe fn charge_since(
    prev: *const u8,
    since: &TaskCounters,
    resolved: &mut RowRef,
) -> TaskCounters {
    // SAFETY: the caller's contract.
    let now = unsafe { counters(prev) };
    let run = TaskCounters {
        cpu_ns: now.cpu_ns.wrapping_sub(since.cpu_ns),
        minor_faults: now.minor_faults.wrapping_sub(since.minor_faults),
        major_faults: now.major_faults.wrapping_sub(since.major_faults),
        wait_ns: now.wait_ns.wrapping_sub(since.wait_ns),
        waits: now.waits.wrapping_sub(since.waits),
    };
    // SAFETY: the caller's contract.
    let cgroup_id = unsafe { cgroup_of(prev) };
    let Some(row) = row_of(cgroup_id, resolved) else {
        bump(counter::CGROUP_INSERT_FAILED);
        return now;
    };
    add(row, &run);
    // One arrival per run: the wait before it. (None when the kernel did not time it; several
    // when a switch-out went unseen: their total counts, the histogram cannot split it.)
    if run.waits == 1 {
        record_wait(row, run.wait_ns);
    }
    now
}

/// The row of `cgroup_id`: the cached one while it still belongs to that cgroup, else resolved
/// (and cached).
#[inline(always)]
fn row_of(cgroup_id: u64, resolved: &mut RowRef) -> Option<u32> {
    if resolved.cgroup_id == cgroup_id && ROW_OWNERS.get(resolved.row) == Some(&cgroup_id) {
        return Some(resolved.row);
    }
    let row = resolve(cgroup_id)?;
    *resolved = RowRef {
        cgroup_id,
        row,
        _pad: 0,
    };
    Some(row)
}

/// The cgroup's row from the hash, or a free one given to it. `None` when none is free.
#[inline(always)]
fn resolve(cgroup_id: u64) -> Option<u32> {
    // SAFETY: a shared map value, read once.
    if let Some(row) = unsafe { CGROUP_ROWS.get(cgroup_id) } {
        return Some(*row);
    }
    let row = FREE_ROWS.pop().ok().flatten()?;
    let owner = ROW_OWNERS.get_ptr_mut(row)?;
    // SAFETY: a free row is this program's alone until the hash names it: the owner is set first,
    // so any CPU that finds the row in the hash finds it owned.
    unsafe { *owner = cgroup_id };
    if CGROUP_ROWS
        .insert(cgroup_id, row, BPF_NOEXIST.into())
        .is_ok()
    {
        return Some(row);
    }
    // Another CPU gave the cgroup a row first: hand ours back and use that one.
    // SAFETY: as above; the row is still ours.
    unsafe { *owner = 0 };
    let _ = FREE_ROWS.push(row, 0);
    // SAFETY: as above.
    unsafe { CGROUP_ROWS.get(cgroup_id) }.copied()
}

/// Notes the incoming task, its cgroup and its counters in this CPU's slot.
///
/// # Safety
/// `next` must be NULL or as for [`tid`].
#[inline(always)]
pub unsafe fn switched_in(next: *const u8, slot: &mut OnCpu) {
    slot.switches = slot.switches.wrapping_add(1);
    slot.tid = 0;
    if next.is_null() {
        return;
    }
    // SAFETY (every call): the caller's contract, and `next` is not NULL.
    let tid = unsafe { tid(next) };
    if tid == 0 {
        // The idle task: nothing to charge when it leaves.
        return;
    }
    slot.cgroup_id = unsafe { cgroup_of(next) };
    slot.base = unsafe { counters(next) };
    slot.tid = tid;
}

/// The baseline the slot holds for `tid`, when the slot's last switch-in was that task's.
#[inline(always)]
pub fn slot_baseline(slot: &OnCpu, tid: u32) -> Option<TaskCounters> {
    (tid != 0 && slot.tid == tid).then_some(slot.base)
}

#[inline(always)]
fn add(row: u32, run: &CgroupCounters) {
    let Some(c) = CGROUP_COUNTERS.get_ptr_mut(row) else {
        return;
    };
    // SAFETY: this CPU's value at the row; no other writer while preemption is disabled.
    unsafe {
        (*c).cpu_ns += run.cpu_ns;
        (*c).minor_faults += run.minor_faults;
        (*c).major_faults += run.major_faults;
        (*c).wait_ns += run.wait_ns;
        (*c).waits += run.waits;
    }
}

#[inline(always)]
fn record_wait(row: u32, wait_ns: u64) {
    let Some(buckets) = RUNQ_HISTOGRAMS.get_ptr_mut(row) else {
        bump(counter::RUNQ_BUCKETS_INSERT_FAILED);
        return;
    };
    let bucket = (log2(wait_ns) as usize).min(RUNQ_BUCKETS - 1);
    // SAFETY: a map value shared by all CPUs, valid for this program's run: counted atomically.
    if let Some(b) = unsafe { (*buckets).buckets.get_mut(bucket) } {
        // SAFETY: an aligned u64 inside the map value.
        unsafe { collector_ebpf::atomic::add(b, 1) };
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
