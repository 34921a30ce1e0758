//! What cgroupfs says about one cgroup, whichever hierarchy each controller came from.

use super::{
    memory_stat::MemoryStat,
    parse::{Io, Limit, Psi},
};

/// CPU accounting and limits. Times in ns.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CpuReading {
    pub usage_ns: Option<u64>,
    pub user_ns: Option<u64>,
    pub system_ns: Option<u64>,
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_ns: Option<u64>,
    /// CFS quota per period in µs; `None` when unlimited or unknown.
    pub quota_us: Option<u64>,
    pub period_us: Option<u64>,
    /// v2 `cpu.weight` (1..10000).
    pub weight: Option<u64>,
    /// v1 `cpu.shares`.
    pub shares: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct MemoryReading {
    /// v2 `memory.current`, v1 `memory.usage_in_bytes`.
    pub usage_bytes: Option<u64>,
    pub stat: MemoryStat,
    /// v2 `memory.max`, v1 `memory.limit_in_bytes`.
    pub limit: Option<Limit>,
    /// v2 `memory.min`, v1 `memory.soft_limit_in_bytes`.
    pub reservation: Option<Limit>,
    /// v2 `memory.swap.current`, v1 `total_swap` of memory.stat.
    pub swap_bytes: Option<u64>,
    /// v2 `memory.swap.max`, v1 `memory.memsw.limit_in_bytes` (memory + swap).
    pub swap_limit: Option<Limit>,
    /// v2 `memory.events` oom; v1 has no equivalent.
    pub oom_events: Option<u64>,
    /// v2 `memory.events` oom_kill, v1 `memory.oom_control` oom_kill.
    pub oom_kill_events: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PidsReading {
    pub current: Option<u64>,
    pub max: Option<Limit>,
}

/// Which hierarchy a controller's numbers came from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    #[default]
    None,
    V1,
    V2,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct CgroupReading {
    pub cpu: CpuReading,
    pub cpu_source: Source,
    pub memory: Option<MemoryReading>,
    pub memory_source: Source,
    pub pids: Option<PidsReading>,
    pub io: Option<Io>,
    /// PSI exists only in v2; each is absent on ENOENT/ENOTSUP.
    pub cpu_psi: Option<Psi>,
    pub memory_psi: Option<Psi>,
    pub io_psi: Option<Psi>,
    /// Processes directly in this cgroup (`cgroup.procs` lines).
    pub processes: Option<u64>,
    /// The first of them (the lowest pid the kernel lists first), for reads that need any
    /// process of the cgroup, such as its network namespace.
    pub first_pid: Option<u32>,
    /// Values that did not parse in this reading.
    pub malformed: u32,
    /// Files that exist but could not be read.
    pub read_errors: u32,
}
