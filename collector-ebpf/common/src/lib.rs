//! Types shared by the eBPF programs and user space.
//!
//! Every map key/value and global is defined once here: `#[repr(C)]`, `Copy`, no implicit padding
//! (checked by the size assertions), so both sides agree on the layout byte for byte.
//!
//! The programs come as one object per probe family, so that a map or program one kernel
//! refuses takes down only its own family: `sched` (one `sched_switch` program: CPU time, page
//! faults and run-queue wait, from the kernel's own per-task counters), `oom` (OOM kills),
//! `lifecycle` (cgroup creation and removal) and `net` (bytes and packets by socket cgroup).
#![no_std]

use core::mem::size_of;

/// Capacity of the per-cgroup maps unless configured otherwise (`--max-cgroups`). Sized for the
/// biggest nodes we plan for (5,000 cgroups) with room to spare; the per-CPU map's kernel memory
/// is `max_cgroups × possible CPUs × size_of::<CgroupCounters>()`, about 42 MiB at 128 CPUs.
pub const DEFAULT_MAX_CGROUPS: u32 = 8_192;

/// Map, program and global names, so user space never spells them differently from the kernel.
pub mod names {
    /// The objects of the `sched` family: with per-task baselines in task storage (5.13+), and
    /// with per-CPU baselines only (older kernels). Both have `sched_switch`.
    pub const SCHED_OBJECT: &str = "sched";
    pub const SCHED_SLOT_OBJECT: &str = "sched_slot";
    pub const SCHED_SWITCH_PROG: &str = "sched_switch";
    /// tp_btf `sched_process_fork` and the start-up task iterator: baselines of new and
    /// existing tasks (`sched` object only).
    pub const SCHED_FORK_PROG: &str = "sched_fork";
    pub const SCHED_TASKS_ITER: &str = "sched_tasks";
    /// Task storage: each task's counters at its last switch-out, and the row of the cgroup it
    /// was charged to then.
    pub const TASK_BASELINES_MAP: &str = "TASK_BASELINES";
    /// Hash: cgroup id (u64) -> its row (u32), the index of its values in the arrays below.
    /// The program gives a cgroup a row at its first charge; user space frees it with the
    /// cgroup.
    pub const CGROUP_ROWS_MAP: &str = "CGROUP_ROWS";
    /// Array: row -> the cgroup id it belongs to (0 when free), so a row cached in a task's
    /// storage is used only while it still names that cgroup.
    pub const ROW_OWNERS_MAP: &str = "ROW_OWNERS";
    /// Queue of free rows (u32): all of them at load, then each freed one, zeroed.
    pub const FREE_ROWS_MAP: &str = "FREE_ROWS";
    /// Per-CPU array: row -> [`super::CgroupCounters`] of that cgroup's own tasks.
    pub const CGROUP_COUNTERS_MAP: &str = "CGROUP_COUNTERS";
    /// Array (shared by all CPUs, atomic adds): row -> [`super::RunqBuckets`].
    pub const RUNQ_HISTOGRAMS_MAP: &str = "RUNQ_HISTOGRAMS";
    /// Per-CPU array of one [`super::OnCpu`]: the task on each CPU and its counters at switch-in.
    pub const ON_CPU_MAP: &str = "ON_CPU";
    /// Global [`super::SchedOffsets`] patched in at load time.
    pub const SCHED_OFFSETS_GLOBAL: &str = "SCHED_OFFSETS";

    /// The object of the `oom` family: tp_btf `mark_victim`, `struct task_struct *` (6.8+) or
    /// `int pid` (older) first argument, and its own ring buffer.
    pub const OOM_OBJECT: &str = "oom";
    pub const OOM_VICTIM_TASK_PROG: &str = "oom_mark_victim_task";
    pub const OOM_VICTIM_PID_PROG: &str = "oom_mark_victim_pid";
    /// Ring buffer of [`super::OomEvent`]s.
    pub const OOM_EVENTS_MAP: &str = "OOM_EVENTS";
    /// Global [`super::TaskOffsets`] patched in at load time.
    pub const OOM_OFFSETS_GLOBAL: &str = "OOM_OFFSETS";

    /// The object of the `lifecycle` family: tp_btf `cgroup_mkdir` / `cgroup_rmdir`.
    pub const LIFECYCLE_OBJECT: &str = "lifecycle";
    pub const CGROUP_MKDIR_PROG: &str = "cgroup_mkdir";
    pub const CGROUP_RMDIR_PROG: &str = "cgroup_rmdir";
    /// Ring buffer of [`super::LifecycleEvent`]s.
    pub const LIFECYCLE_EVENTS_MAP: &str = "LIFECYCLE_EVENTS";
    /// Global [`super::CgroupOffsets`] patched in at load time.
    pub const LIFECYCLE_OFFSETS_GLOBAL: &str = "LIFECYCLE_OFFSETS";

    /// The object of the `net` family: a `cgroup_skb` ingress/egress pair attached at the cgroup2
    /// root, counting every packet a socket sends or receives by the socket's cgroup.
    pub const NET_OBJECT: &str = "net";
    pub const NET_INGRESS_PROG: &str = "net_ingress";
    pub const NET_EGRESS_PROG: &str = "net_egress";
    /// Per-CPU hash, allocated as entries appear: cgroup id -> [`super::NetCounters`].
    pub const NET_COUNTERS_MAP: &str = "NET_COUNTERS";

    /// Per-CPU array of u64 counters indexed by [`super::counter`] (one per object).
    pub const COUNTERS_MAP: &str = "COUNTERS";
}

/// Indexes into each object's `COUNTERS` per-CPU array.
pub mod counter {
    /// `sched`: a cgroup could not be given a row (every row taken): time, faults and waits
    /// of that switch lost.
    pub const CGROUP_INSERT_FAILED: u32 = 0;
    /// `sched`: a wait could not be put in a histogram (a row out of range: never expected);
    /// its totals still count.
    pub const RUNQ_BUCKETS_INSERT_FAILED: u32 = 1;
    /// `oom`, `lifecycle`: the ring buffer was full, an event was lost.
    pub const EVENTS_DROPPED: u32 = 2;
    /// `lifecycle`: a path did not fit in an event (user space then walks the tree).
    pub const PATH_TRUNCATED: u32 = 3;
    /// `sched`: a switch-out with no baseline for the task (no task storage, and the CPU's
    /// slot named another task): the run was not charged.
    pub const UNTRACKED_RUNS: u32 = 4;
    /// `sched`: a task's baseline could not be created (task storage allocation failed).
    pub const TASK_BASELINE_FAILED: u32 = 5;
    /// `net`: a cgroup's first packet found the map full (or no memory): that packet uncounted.
    pub const NET_INSERT_FAILED: u32 = 6;
    pub const LEN: u32 = 7;
}

/// What a cgroup's own tasks did, summed at each switch-out from the kernel's per-task counters
/// (the deltas since the task was switched in). One value per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupCounters {
    /// `se.sum_exec_runtime`: the run time the scheduler accounts (what `cpu.stat` sums), so
    /// IRQ and steal time are left out wherever the kernel leaves them out.
    pub cpu_ns: u64,
    /// `min_flt` / `maj_flt`: what `/proc/<pid>/stat` reports.
    pub minor_faults: u64,
    pub major_faults: u64,
    /// `sched_info.run_delay`: time spent runnable but waiting for a CPU.
    pub wait_ns: u64,
    /// `sched_info.pcount`: arrivals on a CPU, each ending one wait.
    pub waits: u64,
}
const _: () = assert!(size_of::<CgroupCounters>() == 40);

/// Packets and bytes of one cgroup's sockets, at L3 (the IP header and everything after it:
/// what `skb->len` is at the cgroup hooks). One value per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}
const _: () = assert!(size_of::<NetCounters>() == 32);

/// log2 buckets of run-queue wait: bucket `i` counts waits in [2^i, 2^(i+1)) ns (bucket 0 also
/// takes 0 and 1 ns); the last bucket takes everything from 2^(RUNQ_BUCKETS-1) ns (~9 minutes).
pub const RUNQ_BUCKETS: usize = 40;

/// A cgroup's run-queue wait histogram, shared by all CPUs (one atomic add per wait) so that its
/// size does not multiply by the CPU count; the totals live in [`CgroupCounters`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunqBuckets {
    pub buckets: [u64; RUNQ_BUCKETS],
}
const _: () = assert!(size_of::<RunqBuckets>() == 8 * RUNQ_BUCKETS);

impl Default for RunqBuckets {
    fn default() -> Self {
        Self {
            buckets: [0; RUNQ_BUCKETS],
        }
    }
}

/// A cgroup's row as last resolved: a cache in front of the `CGROUP_ROWS` hash, kept in each
/// task's storage and, for tasks without one, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowRef {
    pub cgroup_id: u64,
    pub row: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<RowRef>() == 16);

/// The task on one CPU, written at every switch-in: its cgroup and its counters at that moment,
/// the baseline of the run in progress. User space tops that run up from `/proc/<tid>/schedstat`,
/// so a CPU hog that never switches out is seen while it runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnCpu {
    /// The task switched in (`task->pid`); 0 for the idle task or before the first switch seen.
    pub tid: u32,
    pub _pad: u32,
    /// Its v2 cgroup id at switch-in.
    pub cgroup_id: u64,
    /// Switch-ins on this CPU: unchanged between two reads means the same run goes on.
    pub switches: u64,
    /// Its counters at switch-in.
    pub base: CgroupCounters,
    /// The program's own: the row of the last cgroup charged on this CPU from this slot's
    /// baseline (a one-entry cache for tasks without a baseline of their own).
    pub resolved: RowRef,
}
const _: () = assert!(size_of::<OnCpu>() == 24 + size_of::<CgroupCounters>() + 16);

/// Byte offsets of the kernel struct fields the `sched` program reads with direct BTF loads
/// (there is no CO-RE for Rust eBPF): computed from the running kernel's BTF in user space and
/// written into the program's read-only data before load, where the verifier sees them as
/// constants. `valid == 0` (the default) makes the program do nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedOffsets {
    pub task_pid: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `task_struct.se.sum_exec_runtime`.
    pub sum_exec_runtime: u32,
    pub min_flt: u32,
    pub maj_flt: u32,
    /// `task_struct.sched_info.run_delay` / `.pcount`; meaningful when `has_sched_info` is 1.
    pub run_delay: u32,
    pub pcount: u32,
    /// 1 when this kernel keeps `sched_info` (CONFIG_SCHED_INFO): run-queue waits are counted.
    pub has_sched_info: u32,
    pub valid: u32,
}
const _: () = assert!(size_of::<SchedOffsets>() == 48);

/// Offsets the `oom` program needs to name a victim from its `task_struct *` (6.8+).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub task_pid: u32,
    pub task_comm: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub valid: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<TaskOffsets>() == 32);

/// Offsets the `lifecycle` programs need from a `struct cgroup *`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupOffsets {
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `cgroup.root` (struct cgroup_root *) and `cgroup_root.hierarchy_id` (int): events keep
    /// only the default (v2) hierarchy, id 0.
    pub cgroup_root: u32,
    pub root_hierarchy_id: u32,
    pub valid: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CgroupOffsets>() == 24);

/// One OOM kill.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomEvent {
    /// The victim's pid.
    pub pid: u32,
    pub _pad: u32,
    /// v2 cgroup id of the victim (6.8+) or of the task whose allocation failed (older).
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// The command name, NUL-padded.
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<OomEvent>() == 40);

/// Kinds of [`LifecycleEvent`].
pub mod lifecycle {
    pub const CGROUP_MKDIR: u32 = 1;
    pub const CGROUP_RMDIR: u32 = 2;
}

/// Longest cgroup path an event carries; a longer one is cut and flagged, and user space walks
/// the tree instead of trusting it.
pub const EVENT_PATH_LEN: usize = 512;

/// One cgroup creation or removal.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// One of [`lifecycle`].
    pub kind: u32,
    /// Bytes of `path` before its NUL, or `EVENT_PATH_LEN` when it was cut.
    pub path_len: u32,
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()`.
    pub time_ns: u64,
    /// The cgroup's path relative to the cgroup2 root, NUL-terminated unless cut.
    pub path: [u8; EVENT_PATH_LEN],
}
const _: () = assert!(size_of::<LifecycleEvent>() == 4 + 4 + 8 + 8 + EVENT_PATH_LEN);

#[cfg(feature = "user")]
mod user {
    // SAFETY (every impl below): plain #[repr(C)] integers and byte arrays with no padding
    // (sizes asserted above): every bit pattern is a valid value.
    unsafe impl aya::Pod for super::CgroupCounters {}
    unsafe impl aya::Pod for super::NetCounters {}
    unsafe impl aya::Pod for super::RunqBuckets {}
    unsafe impl aya::Pod for super::OnCpu {}
    unsafe impl aya::Pod for super::RowRef {}
    unsafe impl aya::Pod for super::SchedOffsets {}
    unsafe impl aya::Pod for super::TaskOffsets {}
    unsafe impl aya::Pod for super::CgroupOffsets {}
    unsafe impl aya::Pod for super::OomEvent {}
    unsafe impl aya::Pod for super::LifecycleEvent {}
}
