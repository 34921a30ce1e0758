//! One usage series over a sliding window: six HDR histograms, one per sixth of the window, so
//! expiring old samples is dropping a histogram, never re-scanning samples.

use std::collections::VecDeque;

use hdrhistogram::Histogram;

use crate::proto;

/// Sixths: a sample is kept for between 5/6 of the window and all of it.
pub const SLOTS: u64 = 6;
/// One significant digit: 16–32 sub-buckets per power of two (at most 6.25 % wide). Two
/// digits would be ~7x the memory for every pod and container.
const SIGNIFICANT_DIGITS: u8 = 1;
/// Counts per slot: at most one sample per pass (≥ 100 ms apart), and a slot is at most 4 h
/// long: 144,000 samples would overflow u16, but `saturating_record` caps rather than wraps.
type Count = u16;

/// The quantiles reported, in `proto::Percentiles` order.
const QUANTILES: [f64; 5] = [0.50, 0.90, 0.95, 0.98, 0.99];

#[derive(Debug)]
struct Slot {
    start_ns: u64,
    histogram: Histogram<Count>,
    /// Exact; the histogram only knows its bucket.
    max: u64,
}

#[derive(Debug)]
pub struct SlidingHistogram {
    slots: VecDeque<Slot>,
    window_ns: u64,
    /// Values above are recorded as this (a 256-core or 4 TiB container is not ours to fit).
    highest: u64,
    newest_ns: Option<u64>,
}

impl SlidingHistogram {
    pub fn new(window_ns: u64, highest: u64) -> Self {
        Self {
            slots: VecDeque::with_capacity(SLOTS as usize + 1),
            window_ns: window_ns.max(SLOTS),
            highest,
            newest_ns: None,
        }
    }

    fn slot_ns(&self) -> u64 {
        self.window_ns / SLOTS
    }

    /// Adds one sample taken at `at_ns` (Unix ns; samples arrive in time order).
    pub fn record(&mut self, value: u64, at_ns: u64) {
        self.expire(at_ns);
        let slot_ns = self.slot_ns();
        let current = self
            .slots
            .back()
            .is_some_and(|s| at_ns < s.start_ns.saturating_add(slot_ns));
        if !current {
            let histogram = Histogram::new_with_bounds(1, self.highest, SIGNIFICANT_DIGITS)
                .expect("static bounds are valid");
            self.slots.push_back(Slot {
                start_ns: at_ns,
                histogram,
                max: 0,
            });
        }
        self.newest_ns = Some(at_ns);
        let slot = self.slots.back_mut().expect("pushed above");
        let value = value.min(self.highest);
        slot.histogram.saturating_record(value);
        slot.max = slot.max.max(value);
    }

    /// Drops the slots that started before the window; true when any did.
    pub fn expire(&mut self, now_ns: u64) -> bool {
        let oldest_kept = now_ns.saturating_sub(self.window_ns);
        let before = self.slots.len();
        while self.slots.front().is_some_and(|s| s.start_ns < oldest_kept) {
            self.slots.pop_front();
        }
        self.slots.len() != before
    }

    /// From the start of the oldest kept slot to the newest sample.
    pub fn covered_ns(&self) -> u64 {
        match (self.slots.front(), self.newest_ns) {
            (Some(oldest), Some(newest)) => newest.saturating_sub(oldest.start_ns),
            _ => 0,
        }
    }

    /// The window's percentiles, each scaled by `unit`; `None` without samples. `merged` is
    /// scratch space, reused across calls to avoid an allocation per series.
    pub fn percentiles(
        &self,
        merged: &mut Option<Histogram<u64>>,
        unit: u64,
    ) -> Option<proto::Percentiles> {
        let first = self.slots.front()?;
        let merged = match merged {
            Some(h) => {
                h.reset();
                h
            }
            None => merged.insert(
                Histogram::new_with_bounds(1, first.histogram.high(), SIGNIFICANT_DIGITS)
                    .expect("static bounds are valid"),
            ),
        };
        let mut max = 0;
        for slot in &self.slots {
            // Slots count in u16 to stay small; the merge counts in u64.
            for v in slot.histogram.iter_recorded() {
                merged.saturating_record_n(v.value_iterated_to(), u64::from(v.count_at_value()));
            }
            max = max.max(slot.max);
        }
        if merged.is_empty() {
            return None;
        }
        // A bucket's upper edge can exceed the exact maximum; never report above it.
        let [p50, p90, p95, p98, p99] =
            QUANTILES.map(|q| merged.value_at_quantile(q).min(max) * unit);
        Some(proto::Percentiles {
            p50,
            p90,
            p95,
            p98,
            p99,
            max: max * unit,
            samples: merged.len(),
        })
    }

    /// Bytes held by the counts, for the memory estimate in docs and tests.
    pub fn counts_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.histogram.distinct_values() * size_of::<Count>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000_000_000;

    #[test]
    fn percentiles_of_a_known_series_within_the_bucket_width() {
        let mut h = SlidingHistogram::new(10 * MIN, 1 << 20);
        // 1..=1000, one per second: p50 = 500, p90 = 900, p99 = 990, max = 1000.
        for v in 1..=1000u64 {
            h.record(v, v * 1_000_000_000 / 2);
        }
        let mut scratch = None;
        let p = h.percentiles(&mut scratch, 1).unwrap();
        assert_eq!(p.samples, 1000);
        assert_eq!(p.max, 1000);
        for (got, exact) in [
            (p.p50, 500),
            (p.p90, 900),
            (p.p95, 950),
            (p.p98, 980),
            (p.p99, 990),
        ] {
            assert!(
                got >= exact && got as f64 <= exact as f64 * 1.0625,
                "{got} for {exact}"
            );
        }
        // Exact below 32.
        let mut small = SlidingHistogram::new(10 * MIN, 1 << 20);
        for v in [3, 7, 7, 9] {
            small.record(v, 0);
        }
        let p = small.percentiles(&mut scratch, 1024).unwrap();
        assert_eq!((p.p50, p.max), (7 * 1024, 9 * 1024));
    }

    #[test]
    fn old_samples_leave_the_window_by_sixths() {
        let mut h = SlidingHistogram::new(6 * MIN, 1 << 20);
        let mut scratch = None;
        h.record(1000, 0); // slot [0, 1 min)
        h.record(10, MIN); // slot [1, 2 min)
        assert_eq!(h.percentiles(&mut scratch, 1).unwrap().max, 1000);
        // At 6 min the first slot has started exactly one window ago: still in.
        assert!(!h.expire(6 * MIN));
        assert!(h.expire(6 * MIN + 1));
        let p = h.percentiles(&mut scratch, 1).unwrap();
        assert_eq!((p.max, p.samples), (10, 1));
        assert_eq!(h.covered_ns(), 0, "from the 1 min slot to the 1 min sample");
        assert!(h.expire(8 * MIN));
        assert!(h.percentiles(&mut scratch, 1).is_none());
    }

    #[test]
    fn values_above_the_range_are_capped_not_lost() {
        let mut h = SlidingHistogram::new(MIN, 1000);
        h.record(5000, 0);
        let p = h.percentiles(&mut None, 1).unwrap();
        assert_eq!((p.max, p.samples), (1000, 1));
    }
}
