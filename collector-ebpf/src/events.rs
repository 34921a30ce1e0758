//! OOM kills and cgroup creation/removal, sent to user space through one ring buffer.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_ktime_get_ns,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{btf_tracepoint, map},
    maps::RingBuf,
    programs::BtfTracePointContext,
};
use collector_common::{Event, counter, event};

use crate::{counters::bump, task};

/// 256 KiB: ~880 events between two reads, far more than a burst of pod churn produces.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// tp_btf mark_victim(struct task_struct *task, uid_t uid) — kernels 6.8 and later.
#[btf_tracepoint(function = "mark_victim")]
pub fn oom_mark_victim_task(ctx: BtfTracePointContext) -> u32 {
    let Some(off) = task::offsets() else { return 0 };
    let victim: *const u8 = ctx.arg(0);
    let pid = task::pid(victim, &off).unwrap_or(0);
    let comm = task::comm(victim, &off).unwrap_or([0; 16]);
    let cgroup_id = task::cgroup_id(victim, &off).unwrap_or(0);
    send_oom(pid, comm, cgroup_id);
    0
}

/// tp_btf mark_victim(int pid) — kernels before 6.8. Only the pid names the victim; the cgroup
/// and comm are the current task's: the one whose allocation hit the limit, which for a memcg
/// OOM is in the same memory cgroup subtree and most often is the victim itself.
#[btf_tracepoint(function = "mark_victim")]
pub fn oom_mark_victim_pid(ctx: BtfTracePointContext) -> u32 {
    let pid: u64 = ctx.arg(0);
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    send_oom(pid as u32, comm, cgroup_id);
    0
}

#[inline(always)]
fn send_oom(pid: u32, comm: [u8; 16], cgroup_id: u64) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(counter::EVENTS_DROPPED);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at reserved ring buffer memory the size of an Event; every field is
    // written before submit (path is cleared by its first byte: user space reads to the NUL).
    unsafe {
        (*e).kind = event::OOM_KILL;
        (*e).pid_or_level = pid;
        (*e).cgroup_id = cgroup_id;
        (*e).time_ns = bpf_ktime_get_ns();
        (*e).comm = comm;
        (*e).path[0] = 0;
    }
    entry.submit(0);
}

/// tp_btf cgroup_mkdir(struct cgroup *cgrp, const char *path)
#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> u32 {
    lifecycle(&ctx, event::CGROUP_MKDIR);
    0
}

/// tp_btf cgroup_rmdir(struct cgroup *cgrp, const char *path)
#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: BtfTracePointContext) -> u32 {
    lifecycle(&ctx, event::CGROUP_RMDIR);
    0
}

#[inline(always)]
fn lifecycle(ctx: &BtfTracePointContext, kind: u32) {
    let Some(off) = task::offsets() else { return };
    let cgroup: *const u8 = ctx.arg(0);
    // v1 hierarchies raise these too, with ids from their own kernfs roots: keep only cgroup2.
    if task::hierarchy_id(cgroup, &off) != Some(0) {
        return;
    }
    let Some(cgroup_id) = task::kn_id(cgroup, &off) else {
        return;
    };
    let path: *const u8 = ctx.arg(1);
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(counter::EVENTS_DROPPED);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: reserved ring buffer memory the size of an Event; fields written before submit.
    unsafe {
        (*e).kind = kind;
        (*e).pid_or_level = 0;
        (*e).cgroup_id = cgroup_id;
        (*e).time_ns = bpf_ktime_get_ns();
        (*e).comm = [0; 16];
        if bpf_probe_read_kernel_str_bytes(path, &mut (*e).path).is_err() {
            (*e).path[0] = 0;
        }
    }
    entry.submit(0);
}
