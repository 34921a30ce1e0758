//! The `oom` family: every OOM kill, from tp_btf `mark_victim`, through its own ring buffer (a
//! burst of cgroup creations can never push an OOM kill out).
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map},
    maps::RingBuf,
    programs::BtfTracePointContext,
};
use collector_common::{OomEvent, TaskOffsets, counter};
use collector_ebpf::{
    counters::bump,
    kernel::{dfl_cgroup_id, field},
};

#[unsafe(no_mangle)]
static OOM_OFFSETS: Global<TaskOffsets> = Global::new(TaskOffsets {
    task_pid: 0,
    task_comm: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    valid: 0,
    _pad: 0,
});

/// 64 KiB: over 1,600 kills between two drains.
#[map]
static OOM_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// tp_btf mark_victim(struct task_struct *task, uid_t uid) — kernels 6.8 and later.
#[btf_tracepoint(function = "mark_victim")]
pub fn oom_mark_victim_task(ctx: BtfTracePointContext) -> u32 {
    let off = OOM_OFFSETS.load();
    if off.valid == 0 {
        return 0;
    }
    // Argument 0 is the victim's task_struct *.
    let victim: *const u8 = ctx.arg(0);
    if victim.is_null() {
        return 0;
    }
    // SAFETY: BTF-typed pointer and this kernel's offsets.
    let (pid, css_set): (u32, u64) =
        unsafe { (field(victim, off.task_pid), field(victim, off.task_cgroups)) };
    // SAFETY: as above; the comm read goes through the fault-handling helper (not a hot path).
    let comm =
        unsafe { bpf_probe_read_kernel(victim.add(off.task_comm as usize).cast::<[u8; 16]>()) }
            .unwrap_or([0; 16]);
    // SAFETY: `css_set` was read from a BTF task_struct.
    let cgroup_id = unsafe {
        dfl_cgroup_id(
            css_set as *const u8,
            off.css_set_dfl_cgrp,
            off.cgroup_kn,
            off.kernfs_node_id,
        )
    };
    send(pid, comm, cgroup_id);
    0
}

/// tp_btf mark_victim(int pid) — kernels before 6.8. Only the pid names the victim; the cgroup
/// and comm are the current task's: the one whose allocation hit the limit, which for a memcg
/// OOM is in the same memory cgroup subtree and most often is the victim itself.
#[btf_tracepoint(function = "mark_victim")]
pub fn oom_mark_victim_pid(ctx: BtfTracePointContext) -> u32 {
    // Argument 0 is the victim's pid.
    let pid: u64 = ctx.arg(0);
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    send(pid as u32, comm, cgroup_id);
    0
}

#[inline(always)]
fn send(pid: u32, comm: [u8; 16], cgroup_id: u64) {
    let Some(mut entry) = OOM_EVENTS.reserve::<OomEvent>(0) else {
        bump(counter::EVENTS_DROPPED);
        return;
    };
    entry.write(OomEvent {
        pid,
        _pad: 0,
        cgroup_id,
        // SAFETY: helper without arguments.
        time_ns: unsafe { bpf_ktime_get_ns() },
        comm,
    });
    entry.submit(0);
}

collector_ebpf::license!();
