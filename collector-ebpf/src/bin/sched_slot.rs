//! The `sched` family for kernels without task storage in tracing programs (before 5.13): the
//! same program (see `src/sched.rs`), with each run's baseline taken from the per-CPU
//! slot written when the task was switched in. Exact wherever the kernel shows every switch; a
//! switch the tracepoint does not show costs the run around it (counted in `UNTRACKED_RUNS`).
#![no_std]
#![no_main]

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use collector_common::counter;
use collector_ebpf::counters::bump;

// The family's logic and maps, compiled into this object only.
#[path = "../sched.rs"]
mod sched;

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
        match sched::slot_baseline(slot, tid) {
            Some(since) => {
                unsafe { sched::charge_since(prev, &since, &mut slot.resolved) };
            }
            None if tid != 0 => bump(counter::UNTRACKED_RUNS),
            None => {}
        }
    }
    // SAFETY: `next` is NULL or a BTF task_struct *.
    unsafe { sched::switched_in(next, slot) };
    0
}

collector_ebpf::license!();
