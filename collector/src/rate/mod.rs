//! Rates from two samples of a cumulative counter, with kubelet's rules: [`per_second`] for one
//! counter, [`cgroup`] for every rate of a cgroup, [`runq`] for run-queue latency windows.

pub mod cgroup;
pub mod runq;

pub use cgroup::CgroupRates;

use std::time::Instant;

/// A counter value and when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub value: u64,
    pub at: Instant,
}

/// Per-second rate of a nanosecond counter, in nano-units per second (for CPU time: nanocores).
///
/// `None` on the first sample, when the counter went down (a restart: the caller re-baselines),
/// and when no time passed.
pub fn per_second(prev: Option<Reading>, current: Reading) -> Option<u64> {
    let prev = prev?;
    let dt = current.at.checked_duration_since(prev.at)?.as_nanos();
    if dt == 0 || current.value < prev.value {
        return None;
    }
    let dv = u128::from(current.value - prev.value);
    u64::try_from(dv * 1_000_000_000 / dt).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(base: Instant, ms: u64, value: u64) -> Reading {
        Reading {
            value,
            at: base + Duration::from_millis(ms),
        }
    }

    #[test]
    fn one_core_for_half_a_second() {
        let t = Instant::now();
        assert_eq!(
            per_second(Some(at(t, 0, 1_000)), at(t, 500, 500_001_000)),
            Some(1_000_000_000)
        );
    }

    #[test]
    fn first_sample_is_absent_not_zero() {
        assert_eq!(per_second(None, at(Instant::now(), 0, 5)), None);
    }

    #[test]
    fn counter_decrease_is_absent() {
        let t = Instant::now();
        assert_eq!(per_second(Some(at(t, 0, 10)), at(t, 1000, 9)), None);
    }

    #[test]
    fn no_elapsed_time_is_absent() {
        let t = Instant::now();
        assert_eq!(per_second(Some(at(t, 10, 1)), at(t, 10, 2)), None);
        assert_eq!(per_second(Some(at(t, 20, 1)), at(t, 10, 2)), None);
    }

    #[test]
    fn unchanged_counter_is_zero() {
        let t = Instant::now();
        assert_eq!(per_second(Some(at(t, 0, 7)), at(t, 1000, 7)), Some(0));
    }
}
