//! What each file of a full pass costs: reads, bytes and CPU time per (hierarchy, file), for
//! the bench's file-by-file table (`collect_bench files`). Off in the daemon: a reader records
//! only after [`super::reader::CgroupReader::measure_files`].
//!
//! Times are the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time, so a busy
//! machine's preemption does not land in them; the clock read itself (a system call, about
//! half a microsecond) is measured once and taken off every figure.

use std::{collections::BTreeMap, ffi::CStr, time::Duration};

/// Totals of one file name in one hierarchy over every cgroup read while measuring.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FileCost {
    /// Reads that found the file.
    pub reads: u64,
    /// Attempts that found no such file (each still costs a lookup).
    pub missing: u64,
    /// Reads that failed for another reason.
    pub errors: u64,
    pub bytes: u64,
    /// Time in the open, read and close, whatever the outcome.
    pub time: Duration,
}

/// This thread's CPU time so far.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; the clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What one [`thread_cpu`] read adds to a measured interval (the median of many back to back).
pub fn clock_overhead() -> Duration {
    let mut gaps: Vec<Duration> = (0..201)
        .map(|_| {
            let a = thread_cpu();
            thread_cpu().saturating_sub(a)
        })
        .collect();
    gaps.sort();
    gaps[gaps.len() / 2]
}

/// The name a directory open is recorded under, beside the files.
pub const DIRECTORY: &CStr = c"(directory)";

/// Every file's totals, and the cgroups and whole-read time they add up to.
#[derive(Debug, Default, Clone)]
pub struct FileCosts {
    by_file: BTreeMap<(&'static str, &'static CStr), FileCost>,
    /// Cgroups read while measuring.
    pub cgroups: u64,
    /// Time of the whole reads, parsing included.
    pub read_time: Duration,
    /// Taken off every recorded interval: the cost of reading the clock.
    pub overhead: Duration,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Read { bytes: usize },
    Missing,
    Failed,
}

impl FileCosts {
    /// Empty totals; every interval recorded will have `overhead` taken off.
    pub fn new(overhead: Duration) -> Self {
        Self {
            overhead,
            ..Self::default()
        }
    }

    pub fn record(
        &mut self,
        hierarchy: &'static str,
        file: &'static CStr,
        outcome: Outcome,
        time: Duration,
    ) {
        let time = time.saturating_sub(self.overhead);
        let cost = self.by_file.entry((hierarchy, file)).or_default();
        match outcome {
            Outcome::Read { bytes } => {
                cost.reads += 1;
                cost.bytes += bytes as u64;
            }
            Outcome::Missing => cost.missing += 1,
            Outcome::Failed => cost.errors += 1,
        }
        cost.time += time;
    }

    /// (hierarchy, file, totals), in hierarchy then file order.
    pub fn rows(&self) -> impl Iterator<Item = (&'static str, String, FileCost)> + '_ {
        self.by_file
            .iter()
            .map(|(&(h, f), c)| (h, f.to_string_lossy().into_owned(), *c))
    }

    /// Time spent in file syscalls, over every file.
    pub fn file_time(&self) -> Duration {
        self.by_file.values().map(|c| c.time).sum()
    }

    /// The rest of the whole reads: parsing and bookkeeping (the clock reads of the nested
    /// measurements, two per attempt, taken off).
    pub fn parse_time(&self) -> Duration {
        let attempts: u64 = (self.by_file.values())
            .map(|c| c.reads + c.missing + c.errors)
            .sum();
        let clocks = self.overhead * (2 * attempts + self.cgroups) as u32;
        self.read_time
            .saturating_sub(self.file_time())
            .saturating_sub(clocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_per_hierarchy_and_file() {
        let mut costs = FileCosts::default();
        let us = Duration::from_micros;
        costs.record(
            "memory",
            c"memory.stat",
            Outcome::Read { bytes: 1500 },
            us(9),
        );
        costs.record(
            "memory",
            c"memory.stat",
            Outcome::Read { bytes: 1502 },
            us(11),
        );
        costs.record("v2", c"io.stat", Outcome::Missing, us(1));
        costs.record("v2", c"cgroup.procs", Outcome::Failed, us(2));
        let rows: Vec<_> = costs.rows().collect();
        assert_eq!(rows.len(), 3);
        let (h, f, stat) = &rows[0];
        assert_eq!((*h, f.as_str()), ("memory", "memory.stat"));
        assert_eq!((stat.reads, stat.bytes, stat.time), (2, 3002, us(20)));
        assert_eq!(rows[2].2.missing, 1);
        assert_eq!(rows[1].2.errors, 1);
        assert_eq!(costs.file_time(), us(23));
    }
}
