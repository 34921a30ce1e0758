//! Following kernel pointers with offsets from the running kernel's BTF (there is no CO-RE for
//! Rust eBPF): user space fills `TASK_OFFSETS` before load; `valid == 0` disables every read.

use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};
use collector_common::TaskOffsets;

#[unsafe(no_mangle)]
pub static TASK_OFFSETS: Global<TaskOffsets> = Global::new(TaskOffsets {
    task_pid: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    valid: 0,
    task_comm: 0,
    cgroup_root: 0,
    root_hierarchy_id: 0,
    _pad: 0,
});

#[inline(always)]
pub fn offsets() -> Option<TaskOffsets> {
    let off = TASK_OFFSETS.load();
    (off.valid != 0).then_some(off)
}

/// `task->pid`.
#[inline(always)]
pub fn pid(task: *const u8, off: &TaskOffsets) -> Option<u32> {
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-handling path; a bad pointer
    // yields an error, never a crash. Same for every read below.
    unsafe { bpf_probe_read_kernel(task.add(off.task_pid as usize).cast::<u32>()).ok() }
}

/// `task->comm`.
#[inline(always)]
pub fn comm(task: *const u8, off: &TaskOffsets) -> Option<[u8; 16]> {
    unsafe { bpf_probe_read_kernel(task.add(off.task_comm as usize).cast::<[u8; 16]>()).ok() }
}

/// `task->cgroups->dfl_cgrp->kn->id`: the task's cgroup v2 id; 0 for the idle task.
#[inline(always)]
pub fn cgroup_id(task: *const u8, off: &TaskOffsets) -> Option<u64> {
    if pid(task, off)? == 0 {
        return Some(0);
    }
    unsafe {
        let css_set: *const u8 =
            bpf_probe_read_kernel(task.add(off.task_cgroups as usize).cast()).ok()?;
        let cgroup: *const u8 =
            bpf_probe_read_kernel(css_set.add(off.css_set_dfl_cgrp as usize).cast()).ok()?;
        kn_id(cgroup, off)
    }
}

/// `cgroup->kn->id`.
#[inline(always)]
pub fn kn_id(cgroup: *const u8, off: &TaskOffsets) -> Option<u64> {
    unsafe {
        let kn: *const u8 =
            bpf_probe_read_kernel(cgroup.add(off.cgroup_kn as usize).cast()).ok()?;
        bpf_probe_read_kernel(kn.add(off.kernfs_node_id as usize).cast()).ok()
    }
}

/// `cgroup->root->hierarchy_id`: 0 for the default (v2) hierarchy.
#[inline(always)]
pub fn hierarchy_id(cgroup: *const u8, off: &TaskOffsets) -> Option<i32> {
    unsafe {
        let root: *const u8 =
            bpf_probe_read_kernel(cgroup.add(off.cgroup_root as usize).cast()).ok()?;
        bpf_probe_read_kernel(root.add(off.root_hierarchy_id as usize).cast()).ok()
    }
}
