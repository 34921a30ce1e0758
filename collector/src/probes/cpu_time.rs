//! User side of the sched_switch probe: per-cgroup on-CPU nanoseconds, live.

use std::collections::HashMap;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use collector_common::RunningSlot;

use super::ProbeError;

/// Reads the CPU_TIME map plus the interval still running on every CPU.
pub struct CpuTimeReader {
    committed: PerCpuHashMap<MapData, u64, u64>,
    running: PerCpuArray<MapData, RunningSlot>,
}

/// One read: each cgroup's own on-CPU ns (its tasks only, not descendants), running intervals
/// included.
#[derive(Debug, Default)]
pub struct CpuTimeRead {
    pub own_ns: HashMap<u64, u64>,
}

impl CpuTimeReader {
    pub fn new(
        committed: PerCpuHashMap<MapData, u64, u64>,
        running: PerCpuArray<MapData, RunningSlot>,
    ) -> Self {
        Self { committed, running }
    }

    /// Committed time first, then the running slots and the clock: a switch between the two reads
    /// can only make this read a little low (never double-count), and the caller keeps counters
    /// monotonic.
    pub fn read(&self) -> Result<CpuTimeRead, ProbeError> {
        let mut own_ns = HashMap::new();
        for entry in self.committed.iter() {
            let (cgroup_id, per_cpu) = entry.map_err(ProbeError::map("CPU_TIME"))?;
            own_ns.insert(cgroup_id, per_cpu.iter().sum::<u64>());
        }
        let slots = self
            .running
            .get(&0, 0)
            .map_err(ProbeError::map("RUNNING"))?;
        let now = monotonic_ns();
        for slot in slots.iter() {
            if slot.cgroup_id != 0 && slot.start_ns != 0 && now > slot.start_ns {
                *own_ns.entry(slot.cgroup_id).or_default() += now - slot.start_ns;
            }
        }
        Ok(CpuTimeRead { own_ns })
    }

    /// Deletes a removed cgroup's entry and returns its final committed nanoseconds.
    pub fn take(&mut self, cgroup_id: u64) -> u64 {
        let total = self
            .committed
            .get(&cgroup_id, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0);
        // Already gone is fine: nothing to free.
        let _ = self.committed.remove(&cgroup_id);
        total
    }

    pub fn entries(&self) -> usize {
        self.committed.keys().count()
    }
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns()` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
