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

    /// Per-CPU hash: cgroup id -> [`super::FaultCounts`].
    pub const FAULTS_MAP: &str = "FAULTS";
    /// perf_event programs on PERF_COUNT_SW_PAGE_FAULTS_MIN / _MAJ.
    pub const PAGE_FAULTS_MINOR_PROG: &str = "page_faults_minor";
    pub const PAGE_FAULTS_MAJOR_PROG: &str = "page_faults_major";

    /// LRU hash: pid -> time it became runnable (wakeup, or preemption at switch-out).
    pub const RUNNABLE_SINCE_MAP: &str = "RUNNABLE_SINCE";
    /// Per-CPU hash: cgroup id -> [`super::RunqHistogram`].
    pub const RUNQ_LATENCY_MAP: &str = "RUNQ_LATENCY";
    /// tp_btf programs on `sched_wakeup`, `sched_wakeup_new` and `sched_switch`.
    pub const SCHED_WAKEUP_PROG: &str = "sched_wakeup";
    pub const SCHED_WAKEUP_NEW_PROG: &str = "sched_wakeup_new";
    pub const RUNQ_SWITCH_PROG: &str = "runq_switch";

    /// Ring buffer of [`super::Event`]s (OOM kills, cgroup creation/removal).
    pub const EVENTS_MAP: &str = "EVENTS";
    /// tp_btf `mark_victim`: `struct task_struct *` (6.8+) or `int pid` (older) first argument.
    pub const OOM_VICTIM_TASK_PROG: &str = "oom_mark_victim_task";
    pub const OOM_VICTIM_PID_PROG: &str = "oom_mark_victim_pid";
    /// tp_btf `cgroup_mkdir` / `cgroup_rmdir`.
    pub const CGROUP_MKDIR_PROG: &str = "cgroup_mkdir";
    pub const CGROUP_RMDIR_PROG: &str = "cgroup_rmdir";
}

/// Indexes into the `COUNTERS` per-CPU array.
pub mod counter {
    /// A cgroup's first interval could not be inserted into `CPU_TIME` (map full): time lost.
    pub const CPU_TIME_INSERT_FAILED: u32 = 0;
    /// A kernel read for the running slot's cgroup id failed; the live interval was not exposed.
    pub const RUNNING_READ_FAILED: u32 = 1;
    /// A cgroup's first fault could not be inserted into `FAULTS` (map full).
    pub const FAULTS_INSERT_FAILED: u32 = 2;
    /// A wait could not be recorded in `RUNQ_LATENCY` (map full).
    pub const RUNQ_INSERT_FAILED: u32 = 3;
    /// The events ring buffer was full: an OOM or lifecycle event was lost.
    pub const EVENTS_DROPPED: u32 = 4;
    pub const LEN: u32 = 5;
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
    /// `task_struct.comm` (char[16]).
    pub task_comm: u32,
    /// `cgroup.root` (struct cgroup_root *) and `cgroup_root.hierarchy_id` (int): lifecycle
    /// events keep only the default (v2) hierarchy, id 0.
    pub cgroup_root: u32,
    pub root_hierarchy_id: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<TaskOffsets>() == 40);

/// Per-cgroup page faults (the cgroup's own tasks), from the perf software events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub minor: u64,
    pub major: u64,
}
const _: () = assert!(size_of::<FaultCounts>() == 16);

/// log2 buckets of run-queue wait: bucket `i` counts waits in [2^i, 2^(i+1)) ns (bucket 0 also
/// takes 0 and 1 ns); the last bucket takes everything from 2^(RUNQ_BUCKETS-1) ns (~9 minutes).
pub const RUNQ_BUCKETS: usize = 40;

/// Run-queue wait of one cgroup's tasks: a cumulative histogram plus totals.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunqHistogram {
    pub buckets: [u64; RUNQ_BUCKETS],
    pub total_ns: u64,
    pub count: u64,
}
const _: () = assert!(size_of::<RunqHistogram>() == 8 * (RUNQ_BUCKETS + 2));

impl Default for RunqHistogram {
    fn default() -> Self {
        Self {
            buckets: [0; RUNQ_BUCKETS],
            total_ns: 0,
            count: 0,
        }
    }
}

/// Kinds of [`Event`].
pub mod event {
    pub const OOM_KILL: u32 = 1;
    pub const CGROUP_MKDIR: u32 = 2;
    pub const CGROUP_RMDIR: u32 = 3;
}

/// Longest cgroup path an event carries (longer ones are cut; user space then rescans).
pub const EVENT_PATH_LEN: usize = 256;

/// One record of the events ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// One of [`event`].
    pub kind: u32,
    /// OOM: the victim's pid. Lifecycle: the cgroup's level (depth, root = 0).
    pub pid_or_level: u32,
    /// v2 cgroup id: the OOM victim's cgroup, or the created/removed cgroup.
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()`.
    pub time_ns: u64,
    /// OOM: the victim's command name, NUL-padded.
    pub comm: [u8; 16],
    /// Lifecycle: the cgroup's path relative to the cgroup2 root, NUL-terminated.
    pub path: [u8; EVENT_PATH_LEN],
}
const _: () = assert!(size_of::<Event>() == 4 + 4 + 8 + 8 + 16 + EVENT_PATH_LEN);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] integers with no padding (sizes asserted above): every bit pattern
    // is a valid value.
    unsafe impl aya::Pod for super::RunningSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FaultCounts {}
    // SAFETY: as above (u64 array and u64s).
    unsafe impl aya::Pod for super::RunqHistogram {}
    // SAFETY: as above (integers and byte arrays).
    unsafe impl aya::Pod for super::Event {}
}
