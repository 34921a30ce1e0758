//! Types shared by the eBPF programs and user space.
//!
//! Every map key/value and global is defined once here: `#[repr(C)]`, `Copy`, no implicit padding
//! (checked by the size assertions), so both sides agree on the layout byte for byte.
#![no_std]

use core::mem::size_of;

/// Map and program names, so user space never spells them differently from the kernel side.
pub mod names {
    /// Per-CPU hash: cgroup id (u64) -> nanoseconds on CPU (u64), charged at switch-out.
    pub const CPU_TIME_MAP: &str = "CPU_TIME";
    /// Per-CPU array of one [`super::RunningSlot`]: what is on each CPU right now.
    pub const RUNNING_MAP: &str = "RUNNING";
    /// Per-CPU array of u64 counters indexed by [`super::counter`].
    pub const COUNTERS_MAP: &str = "COUNTERS";
    /// Global [`super::TaskOffsets`] patched in at load time.
    pub const TASK_OFFSETS_GLOBAL: &str = "TASK_OFFSETS";
    /// tp_btf program on `sched_switch`.
    pub const SCHED_SWITCH_PROG: &str = "sched_switch";
}

/// Indexes into the `COUNTERS` per-CPU array.
pub mod counter {
    /// A cgroup's first interval could not be inserted into `CPU_TIME` (map full): time lost.
    pub const CPU_TIME_INSERT_FAILED: u32 = 0;
    /// A kernel read for the running slot's cgroup id failed; the live interval was not exposed.
    pub const RUNNING_READ_FAILED: u32 = 1;
    pub const LEN: u32 = 2;
}

/// What is running on one CPU, written at every switch-in so user space can add the interval
/// that has not been charged yet (a CPU hog that never switches out would otherwise read 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunningSlot {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the current task was switched in; 0 = unknown.
    pub start_ns: u64,
    /// v2 cgroup id of the task switched in; 0 when it is the idle task or could not be read.
    pub cgroup_id: u64,
}
const _: () = assert!(size_of::<RunningSlot>() == 16);

/// Byte offsets of the kernel struct fields the programs follow from `next` (a `task_struct *`)
/// to its cgroup id: `task->pid`, `task->cgroups->dfl_cgrp->kn->id`.
///
/// There is no CO-RE for Rust eBPF, so these come from the running kernel's BTF in user space and
/// are written into the program's read-only data before load. `valid == 0` (the default) makes the
/// programs skip every read that needs them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub task_pid: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub valid: u32,
}
const _: () = assert!(size_of::<TaskOffsets>() == 24);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] integers with no padding (sizes asserted above): every bit pattern
    // is a valid value.
    unsafe impl aya::Pod for super::RunningSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskOffsets {}
}
