//! The `sched` family, with per-task baselines in task storage (kernels 5.13 and later): one
//! program on `sched_switch` charges each cgroup with the CPU time, page faults and run-queue
//! waits of its tasks (see `src/sched.rs`). Baselines are created where allocating is
//! safe on every kernel: at fork (`sched_process_fork`) and, for the tasks already running when
//! the collector starts, by a one-off task iterator; `sched_switch` only looks them up, never
//! allocates under the runqueue lock (which deadlocks before 6.4).
#![no_std]
#![no_main]

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use collector_common::{RowRef, counter};
use collector_ebpf::{counters::bump, task_storage::TaskStorage};
use sched::TaskCounters;

// The family's logic and maps, compiled into this object only (see the module's note on why it
// is not part of the library).
#[path = "../sched.rs"]
mod sched;

/// A task's counters at its last switch-out, and the row of the cgroup charged then.
#[repr(C)]
struct Baseline {
    counters: TaskCounters,
    resolved: RowRef,
}

#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "TASK_BASELINES")]
static TASK_BASELINES: TaskStorage<Baseline> = TaskStorage::new();

/// tp_btf sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...).
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    if !sched::ready() {
        return 0;
    }
    let Some(slot) = sched::slot() else {
        return 0;
    };
    // Arguments 1 and 2 of sched_switch: the outgoing and incoming task_struct *.
    let (prev, next): (*const u8, *const u8) = (ctx.arg(1), ctx.arg(2));
    if !prev.is_null() {
        // SAFETY (every `sched::` call with a task): tracepoint arguments are BTF-typed
        // task_struct pointers, and `prev` is not NULL here.
        let tid = unsafe { sched::tid(prev) };
        // SAFETY: `prev` is a BTF task_struct *.
        match unsafe { TASK_BASELINES.get(prev) } {
            Some(baseline) => {
                // SAFETY: the task's own storage, valid for this program's run; only its own
                // switch-out writes it.
                let baseline = unsafe { &mut *baseline };
                baseline.counters = unsafe {
                    sched::charge_since(prev, &baseline.counters, &mut baseline.resolved)
                };
            }
            None => match sched::slot_baseline(slot, tid) {
                Some(since) => {
                    unsafe { sched::charge_since(prev, &since, &mut slot.resolved) };
                }
                None if tid != 0 => bump(counter::UNTRACKED_RUNS),
                None => {}
            },
        }
    }
    // SAFETY: `next` is NULL or a BTF task_struct *.
    unsafe { sched::switched_in(next, slot) };
    0
}

/// tp_btf sched_process_fork(struct task_struct *parent, struct task_struct *child): the new
/// task's baseline, its counters at birth.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_fork(ctx: BtfTracePointContext) -> u32 {
    if !sched::ready() {
        return 0;
    }
    let child: *const u8 = ctx.arg(1);
    if !child.is_null() {
        track(child);
    }
    0
}

/// A task iterator run once at start-up: a baseline for every task alive then.
///
/// # Safety
/// Called by the kernel with a `struct bpf_iter__task *`.
#[unsafe(link_section = "iter/task")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sched_tasks(ctx: *const u64) -> i32 {
    if !sched::ready() {
        return 0;
    }
    // struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; }: the task
    // is NULL once the walk is over.
    // SAFETY: the context layout above; the verifier types the load from BTF.
    let task = unsafe { *ctx.add(1) } as *const u8;
    if !task.is_null() {
        track(task);
    }
    0
}

#[inline(always)]
fn track(task: *const u8) {
    // SAFETY: `task` is a BTF task_struct * (fork's child or the iterator's task), not NULL.
    let mut now = Baseline {
        counters: unsafe { sched::counters(task) },
        resolved: RowRef::default(),
    };
    // SAFETY: `task` is a BTF task_struct *; allocating is safe here (no runqueue lock held).
    if unsafe { TASK_BASELINES.get_or_insert(task, &mut now) }.is_none() {
        bump(counter::TASK_BASELINE_FAILED);
    }
}

collector_ebpf::license!();
