//! Readers of the per-cgroup maps filled by the fault and run-queue probes, and of the shared
//! drop counters. Each read returns every cgroup's own values (its tasks only); the sampler
//! turns them into hierarchical totals and deletes entries of removed cgroups with `take`.

use std::collections::HashMap;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use collector_common::{FaultCounts, RunqHistogram, counter, names};

use super::ProbeError;

pub struct FaultReader {
    map: PerCpuHashMap<MapData, u64, FaultCounts>,
}

impl FaultReader {
    pub fn new(map: PerCpuHashMap<MapData, u64, FaultCounts>) -> Self {
        Self { map }
    }

    /// cgroup id -> [minor, major], summed over CPUs.
    pub fn read(&self) -> Result<HashMap<u64, [u64; 2]>, ProbeError> {
        let mut own = HashMap::new();
        for entry in self.map.iter() {
            let (id, per_cpu) = entry.map_err(ProbeError::map(names::FAULTS_MAP))?;
            own.insert(id, sum_faults(per_cpu.iter()));
        }
        Ok(own)
    }

    /// Deletes a removed cgroup's entry and returns its final counts.
    pub fn take(&mut self, id: u64) -> [u64; 2] {
        let last = self
            .map
            .get(&id, 0)
            .map(|v| sum_faults(v.iter()))
            .unwrap_or_default();
        let _ = self.map.remove(&id);
        last
    }

    pub fn entries(&self) -> usize {
        self.map.keys().count()
    }
}

fn sum_faults<'a>(per_cpu: impl Iterator<Item = &'a FaultCounts>) -> [u64; 2] {
    per_cpu.fold([0, 0], |[minor, major], c| {
        [minor.saturating_add(c.minor), major.saturating_add(c.major)]
    })
}

/// Histogram buckets, then total wait ns, then count: one flat array so the hierarchy code
/// treats it like any other set of counters.
pub const RUNQ_VALUES: usize = collector_common::RUNQ_BUCKETS + 2;

pub struct RunqReader {
    map: PerCpuHashMap<MapData, u64, RunqHistogram>,
}

impl RunqReader {
    pub fn new(map: PerCpuHashMap<MapData, u64, RunqHistogram>) -> Self {
        Self { map }
    }

    pub fn read(&self) -> Result<HashMap<u64, [u64; RUNQ_VALUES]>, ProbeError> {
        let mut own = HashMap::new();
        for entry in self.map.iter() {
            let (id, per_cpu) = entry.map_err(ProbeError::map(names::RUNQ_LATENCY_MAP))?;
            own.insert(id, flatten(per_cpu.iter()));
        }
        Ok(own)
    }

    pub fn take(&mut self, id: u64) -> [u64; RUNQ_VALUES] {
        let last = self
            .map
            .get(&id, 0)
            .map(|v| flatten(v.iter()))
            .unwrap_or([0; RUNQ_VALUES]);
        let _ = self.map.remove(&id);
        last
    }

    pub fn entries(&self) -> usize {
        self.map.keys().count()
    }
}

fn flatten<'a>(per_cpu: impl Iterator<Item = &'a RunqHistogram>) -> [u64; RUNQ_VALUES] {
    let mut out = [0u64; RUNQ_VALUES];
    for h in per_cpu {
        for (o, b) in out.iter_mut().zip(h.buckets.iter()) {
            *o = o.saturating_add(*b);
        }
        let n = collector_common::RUNQ_BUCKETS;
        out[n] = out[n].saturating_add(h.total_ns);
        out[n + 1] = out[n + 1].saturating_add(h.count);
    }
    out
}

/// What the programs could not record, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drops {
    pub cpu_intervals: u64,
    pub running_reads: u64,
    pub faults: u64,
    pub runq_waits: u64,
    pub events: u64,
}

pub struct DropCounters {
    map: PerCpuArray<MapData, u64>,
}

impl DropCounters {
    pub fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self { map }
    }

    pub fn read(&self) -> Drops {
        let sum = |i| self.map.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        Drops {
            cpu_intervals: sum(counter::CPU_TIME_INSERT_FAILED),
            running_reads: sum(counter::RUNNING_READ_FAILED),
            faults: sum(counter::FAULTS_INSERT_FAILED),
            runq_waits: sum(counter::RUNQ_INSERT_FAILED),
            events: sum(counter::EVENTS_DROPPED),
        }
    }
}
