//! Which cgroups a full pass may leave unread: those the probes saw do nothing since their
//! last reading, within a bounded age.
//!
//! A cgroup whose tasks did not run has the same CPU time, faults and run-queue arrivals in
//! cgroupfs as at its last reading, and the probes count all three per cgroup (descendants
//! included, like cgroupfs). Its memory can still change without it running: the kernel
//! reclaims idle pages (kswapd, memory.high, proactive reclaim) and moves page cache between
//! the LRU lists, so the working set of an idle cgroup drifts down; received network buffers
//! are charged in softirq context; a process can be moved in while asleep. So an idle cgroup
//! is read again at least every [`DEFAULT_IDLE_MAX_AGE`], and each record carries the time of
//! its own reading (`cgroupfs_time_unix_nano`): nothing is ever presented fresher than it is.
//!
//! A cgroup counts as idle only when its counters stood still across its last reading as well
//! (so the rates kept with a carried reading are those of an idle window, not of the burst
//! before it), and only while cgroupfs agreed: a reading whose CPU time moved although the
//! probes saw nothing (a task outside the probes' view, e.g. a v1 cgroup whose processes are
//! elsewhere in cgroup2) makes the cgroup read on every full pass.

use std::time::{Duration, Instant};

use super::EbpfValues;

/// How old a reading an idle cgroup may carry: six full passes at kubelet's 10 s pace. A
/// stale working set of an idle cgroup can only be too high (reclaim shrinks it; the cgroup's
/// own charges need its tasks to run, which makes it read at once), and 60 s is within the
/// resolution metrics consumers use for idle workloads (metrics-server's HPA sync is 15 s, VPA
/// works on days of history); the bench shows what it saves.
pub const DEFAULT_IDLE_MAX_AGE: Duration = Duration::from_secs(60);

/// What the probes had counted for a cgroup: CPU ns, minor and major faults, run-queue
/// arrivals, OOM kills. Equal twice means nothing ran in the cgroup in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity([u64; 5]);

impl Activity {
    /// `None` when the sched probe gave nothing this pass (not active, or its read failed).
    pub fn of(v: &EbpfValues) -> Option<Self> {
        let [minor, major] = v.faults?;
        let waits = v.runq.as_ref().and_then(|h| h.last().copied());
        Some(Self([
            v.cpu_ns?,
            minor,
            major,
            waits.unwrap_or(0),
            v.oom_kills.unwrap_or(0),
        ]))
    }
}

/// A cgroup's activity as of its last cgroupfs reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AtReading {
    activity: Option<Activity>,
    /// The probes saw nothing between the reading before and the last one, and cgroupfs
    /// agreed (its CPU time stood still too).
    quiet: bool,
}

impl AtReading {
    /// After a reading with `activity` now and CPU time `cpu_ns`; `before` is the state and
    /// CPU time of the reading before (none for a new cgroup).
    pub fn after_read(
        before: Option<(AtReading, Option<u64>)>,
        activity: Option<Activity>,
        cpu_ns: Option<u64>,
    ) -> Self {
        let quiet = before.is_some_and(|(at, cpu_before)| {
            activity.is_some() && at.activity == activity && cpu_before == cpu_ns
        });
        Self { activity, quiet }
    }

    /// Whether the cgroup did nothing since (and across) its last reading.
    pub fn idle(&self, now: Option<Activity>) -> bool {
        self.quiet && now.is_some() && self.activity == now
    }
}

/// When idle cgroups are read again: each at the first full pass after a boundary of its own
/// (its id sets where in the cycle), so their reads spread evenly over the passes instead of
/// all falling due at once, and none carries a reading older than `max_age`.
#[derive(Debug, Clone, Copy)]
pub struct IdleRefresh {
    /// Boundaries are this far apart: the age bound less one full-pass interval, since the
    /// read happens at the first full pass after a boundary.
    cycle_ns: u64,
    origin: Instant,
}

impl IdleRefresh {
    /// `None` (every cgroup read on every full pass) when `max_age` leaves no room beyond one
    /// full-pass interval.
    pub fn new(max_age: Duration, full_pass_interval: Duration, origin: Instant) -> Option<Self> {
        let cycle = max_age.checked_sub(full_pass_interval)?;
        let cycle_ns = u64::try_from(cycle.as_nanos()).ok().filter(|&c| c > 0)?;
        Some(Self { cycle_ns, origin })
    }

    /// Whether an idle cgroup read at `read_at` is due for a new reading at `now`.
    pub fn due(&self, id: u64, read_at: Instant, now: Instant) -> bool {
        // Fibonacci hashing spreads consecutive ids (cgroup inode numbers) over the cycle.
        let phase = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) % self.cycle_ns;
        let cycle = |t: Instant| {
            let ns = t.saturating_duration_since(self.origin).as_nanos();
            (ns + u128::from(phase)) / u128::from(self.cycle_ns)
        };
        cycle(now) != cycle(read_at)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn values(cpu_ns: u64, minor: u64) -> EbpfValues {
        EbpfValues {
            cpu_ns: Some(cpu_ns),
            faults: Some([minor, 0]),
            runq: Some(Arc::new([0; crate::probes::RUNQ_VALUES])),
            oom_kills: Some(0),
            network: None,
        }
    }

    #[test]
    fn idle_only_after_a_quiet_reading_and_while_nothing_moves() {
        let a = Activity::of(&values(100, 5));
        // A new cgroup: read, not yet quiet (no reading before to compare with).
        let first = AtReading::after_read(None, a, Some(1000));
        assert!(!first.idle(a));
        // Read again with nothing moved in either source: quiet, so idle while still.
        let second = AtReading::after_read(Some((first, Some(1000))), a, Some(1000));
        assert!(second.idle(a));
        // Any counter that moves ends it: CPU time, a fault.
        assert!(!second.idle(Activity::of(&values(101, 5))));
        assert!(!second.idle(Activity::of(&values(100, 6))));
        // No probe values this pass: never idle.
        assert!(!second.idle(None));
        // Activity in the window before the reading: its rates are a burst's, read again.
        let busy = AtReading::after_read(
            Some((first, Some(1000))),
            Activity::of(&values(900, 5)),
            Some(1800),
        );
        assert!(!busy.idle(Activity::of(&values(900, 5))));
    }

    #[test]
    fn cgroupfs_cpu_that_moves_unseen_by_the_probes_keeps_a_cgroup_read() {
        let a = Activity::of(&values(100, 5));
        let first = AtReading::after_read(None, a, Some(1000));
        // cpu.stat moved, the probes saw nothing: its tasks are outside their view.
        let unseen = AtReading::after_read(Some((first, Some(1000))), a, Some(5000));
        assert!(!unseen.idle(a));
    }

    #[test]
    fn idle_cgroups_are_due_within_the_bound_and_spread_over_the_cycle() {
        let origin = Instant::now();
        let s = Duration::from_secs;
        let refresh = IdleRefresh::new(s(60), s(10), origin).unwrap();
        // Full passes every 10 s for 10 minutes; 1,000 idle cgroups all read at the first.
        let mut last_read = vec![origin; 1000];
        let mut reads_per_pass = Vec::new();
        for pass in 1..=60u32 {
            let now = origin + s(10) * pass;
            let mut reads = 0;
            for (id, read_at) in last_read.iter_mut().enumerate() {
                let age = now.duration_since(*read_at);
                if refresh.due(id as u64 + 4_000, *read_at, now) {
                    *read_at = now;
                    reads += 1;
                } else {
                    assert!(age < s(60), "cgroup {id} would carry a reading {age:?} old");
                }
            }
            reads_per_pass.push(reads);
        }
        // Every cgroup is read once per 50 s cycle, spread: no pass reads more than a third.
        let steady = &reads_per_pass[6..];
        let mean = steady.iter().sum::<u32>() as f64 / steady.len() as f64;
        assert!((180.0..=220.0).contains(&mean), "{reads_per_pass:?}");
        assert!(steady.iter().all(|&r| r < 330), "{reads_per_pass:?}");
        // No room beyond one interval: no idle refresh at all (read every full pass).
        assert!(IdleRefresh::new(s(10), s(10), origin).is_none());
    }
}
