//! The probe families: one eBPF object each, loaded on its own, so whatever one kernel refuses
//! takes down only its own family.

use collector_common::names;

/// What each family fills, as reported beside each program's status.
pub const SCHED_PROVIDES: &str = "ebpf_cpu,ebpf_faults,runq_latency";
pub const OOM_PROVIDES: &str = "oom_kills";
pub const LIFECYCLE_PROVIDES: &str = "cgroup_lifecycle";
pub const NET_PROVIDES: &str = "ebpf_network";

/// The status name of the OOM program, whichever variant this kernel needs.
pub const OOM_STATUS_NAME: &str = "oom_mark_victim";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `sched_switch`: CPU time, page faults and run-queue wait per cgroup.
    Sched,
    /// `mark_victim`: OOM kills.
    Oom,
    /// `cgroup_mkdir` / `cgroup_rmdir`: cgroups appearing and leaving between walks.
    Lifecycle,
    /// `cgroup_skb` ingress/egress: bytes and packets by socket cgroup.
    Net,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Sched, Family::Oom, Family::Lifecycle, Family::Net];

    /// The family's objects in order of preference: the loader takes the first one this kernel
    /// accepts (the `sched` family has a variant for kernels without task storage in tracing
    /// programs).
    pub fn objects(self) -> &'static [Object] {
        match self {
            Family::Sched => &[SCHED, SCHED_SLOT],
            Family::Oom => &[OOM],
            Family::Lifecycle => &[LIFECYCLE],
            Family::Net => &[NET],
        }
    }

    /// The names its programs report their status under, in report order.
    pub fn status_names(self) -> &'static [&'static str] {
        match self {
            Family::Sched => &[names::SCHED_SWITCH_PROG],
            Family::Oom => &[OOM_STATUS_NAME],
            Family::Lifecycle => &[names::CGROUP_MKDIR_PROG, names::CGROUP_RMDIR_PROG],
            Family::Net => &[names::NET_INGRESS_PROG, names::NET_EGRESS_PROG],
        }
    }

    pub fn provides(self) -> &'static str {
        match self {
            Family::Sched => SCHED_PROVIDES,
            Family::Oom => OOM_PROVIDES,
            Family::Lifecycle => LIFECYCLE_PROVIDES,
            Family::Net => NET_PROVIDES,
        }
    }

    /// A short name for logs and labels.
    pub fn name(self) -> &'static str {
        match self {
            Family::Sched => "sched",
            Family::Oom => "oom",
            Family::Lifecycle => "lifecycle",
            Family::Net => "net",
        }
    }
}

/// One eBPF object: the binary built from `collector-ebpf/src/bin/<name>.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object {
    pub name: &'static str,
    /// Every program in it (both OOM variants are; one is loaded).
    pub programs: &'static [&'static str],
    /// Every map in it, `COUNTERS` included.
    pub maps: &'static [&'static str],
    /// The read-only global its kernel struct offsets go into, if it reads kernel structs.
    pub offsets_global: Option<&'static str>,
}

const SCHED_MAPS: &[&str] = &[
    names::CGROUP_ROWS_MAP,
    names::ROW_OWNERS_MAP,
    names::FREE_ROWS_MAP,
    names::CGROUP_COUNTERS_MAP,
    names::RUNQ_HISTOGRAMS_MAP,
    names::ON_CPU_MAP,
    names::COUNTERS_MAP,
];

pub const SCHED: Object = Object {
    name: names::SCHED_OBJECT,
    programs: &[
        names::SCHED_SWITCH_PROG,
        names::SCHED_FORK_PROG,
        names::SCHED_TASKS_ITER,
    ],
    maps: &[
        names::CGROUP_ROWS_MAP,
        names::ROW_OWNERS_MAP,
        names::FREE_ROWS_MAP,
        names::CGROUP_COUNTERS_MAP,
        names::RUNQ_HISTOGRAMS_MAP,
        names::ON_CPU_MAP,
        names::COUNTERS_MAP,
        names::TASK_BASELINES_MAP,
    ],
    offsets_global: Some(names::SCHED_OFFSETS_GLOBAL),
};

pub const SCHED_SLOT: Object = Object {
    name: names::SCHED_SLOT_OBJECT,
    programs: &[names::SCHED_SWITCH_PROG],
    maps: SCHED_MAPS,
    offsets_global: Some(names::SCHED_OFFSETS_GLOBAL),
};

pub const OOM: Object = Object {
    name: names::OOM_OBJECT,
    programs: &[names::OOM_VICTIM_TASK_PROG, names::OOM_VICTIM_PID_PROG],
    maps: &[names::OOM_EVENTS_MAP, names::COUNTERS_MAP],
    offsets_global: Some(names::OOM_OFFSETS_GLOBAL),
};

pub const LIFECYCLE: Object = Object {
    name: names::LIFECYCLE_OBJECT,
    programs: &[names::CGROUP_MKDIR_PROG, names::CGROUP_RMDIR_PROG],
    maps: &[names::LIFECYCLE_EVENTS_MAP, names::COUNTERS_MAP],
    offsets_global: Some(names::LIFECYCLE_OFFSETS_GLOBAL),
};

pub const NET: Object = Object {
    name: names::NET_OBJECT,
    programs: &[names::NET_INGRESS_PROG, names::NET_EGRESS_PROG],
    maps: &[names::NET_COUNTERS_MAP, names::COUNTERS_MAP],
    offsets_global: None,
};
