//! Run-queue latency windows: the waits between two samples, from the kernel's cumulative log2
//! histograms, summarized through an `hdrhistogram`.

use collector_common::RUNQ_BUCKETS;
use hdrhistogram::Histogram;

use crate::probes::RUNQ_VALUES;

/// The waits of one cgroup between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunqWindow {
    pub duration_ns: u64,
    pub waits: u64,
    pub total_wait_ns: u64,
    /// Upper edges of the log2 buckets the percentiles fall in; `None` without waits.
    pub p50_ns: Option<u64>,
    pub p90_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub max_ns: Option<u64>,
}

/// Cumulative waits and total wait ns of a flattened histogram.
pub fn totals(h: &[u64; RUNQ_VALUES]) -> (u64, u64) {
    (h[RUNQ_BUCKETS + 1], h[RUNQ_BUCKETS])
}

/// How many waits the buckets hold: a histogram's count, which its `+Inf` bucket and every
/// receiver's check (Prometheus refuses a native histogram whose count differs from its
/// buckets' sum) must agree with. The kernel adds a wait to its bucket and to the cgroup's
/// wait counter in two maps, so a read between the two finds them one apart.
pub fn bucket_total(h: &[u64; RUNQ_VALUES]) -> u64 {
    h[..RUNQ_BUCKETS].iter().sum()
}

/// A histogram's count (its buckets' sum, see [`bucket_total`]) and sum of waits in ns: what
/// every exposition of it renders.
pub fn histogram_totals(h: &[u64; RUNQ_VALUES]) -> (u64, u64) {
    (bucket_total(h), h[RUNQ_BUCKETS])
}

/// Upper edge of log2 bucket `i`: waits in it are below 2^(i+1) ns.
fn bucket_edge(i: usize) -> u64 {
    (1u64 << (i + 1).min(63)) - 1
}

/// Turns histogram deltas into windows, reusing one `hdrhistogram` for every cgroup and pass.
pub struct Summarizer {
    hist: Histogram<u64>,
}

impl Default for Summarizer {
    fn default() -> Self {
        Self {
            // Three significant digits are plenty for values that are bucket edges.
            hist: Histogram::new(3).expect("3 significant digits is a valid precision"),
        }
    }
}

impl Summarizer {
    /// The window between two cumulative histograms; `None` when a counter went backwards
    /// (the cgroup was recreated under the same id) or no time passed.
    pub fn window(
        &mut self,
        prev: &[u64; RUNQ_VALUES],
        cur: &[u64; RUNQ_VALUES],
        duration_ns: u64,
    ) -> Option<RunqWindow> {
        window(&mut self.hist, prev, cur, duration_ns)
    }
}

fn window(
    hist: &mut Histogram<u64>,
    prev: &[u64; RUNQ_VALUES],
    cur: &[u64; RUNQ_VALUES],
    duration_ns: u64,
) -> Option<RunqWindow> {
    if duration_ns == 0 || cur.iter().zip(prev).any(|(c, p)| c < p) {
        return None;
    }
    let (waits, total) = totals(cur);
    let (prev_waits, prev_total) = totals(prev);
    let mut w = RunqWindow {
        duration_ns,
        waits: waits - prev_waits,
        total_wait_ns: total - prev_total,
        ..RunqWindow::default()
    };
    hist.reset();
    let mut any = false;
    for i in 0..RUNQ_BUCKETS {
        let n = cur[i] - prev[i];
        if n > 0 {
            any |= hist.record_n(bucket_edge(i), n).is_ok();
        }
    }
    if any {
        w.p50_ns = Some(hist.value_at_quantile(0.50));
        w.p90_ns = Some(hist.value_at_quantile(0.90));
        w.p99_ns = Some(hist.value_at_quantile(0.99));
        w.max_ns = Some(hist.max());
    }
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(buckets: &[(usize, u64)], total_ns: u64) -> [u64; RUNQ_VALUES] {
        let mut h = [0; RUNQ_VALUES];
        let mut count = 0;
        for &(i, n) in buckets {
            h[i] = n;
            count += n;
        }
        h[RUNQ_BUCKETS] = total_ns;
        h[RUNQ_BUCKETS + 1] = count;
        h
    }

    #[test]
    fn percentiles_are_bucket_edges_of_the_interval_only() {
        let prev = hist(&[(10, 1000)], 1_000_000);
        // This interval: 90 waits of ~1-2 µs (bucket 10), 10 of ~2-4 ms (bucket 21).
        let cur = hist(
            &[(10, 1090), (21, 10)],
            1_000_000 + 90 * 1500 + 10 * 3_000_000,
        );
        let w = Summarizer::default()
            .window(&prev, &cur, 1_000_000_000)
            .unwrap();
        assert_eq!(w.waits, 100);
        assert_eq!(w.total_wait_ns, 90 * 1500 + 10 * 3_000_000);
        let within = |v: Option<u64>, edge: u64| {
            let v = v.unwrap();
            v.abs_diff(edge) <= edge / 500
        };
        assert!(within(w.p50_ns, 2047), "{:?}", w.p50_ns);
        assert!(within(w.p90_ns, 2047), "{:?}", w.p90_ns);
        assert!(within(w.p99_ns, (1 << 22) - 1), "{:?}", w.p99_ns);
        assert!(within(w.max_ns, (1 << 22) - 1), "{:?}", w.max_ns);
    }

    #[test]
    fn no_waits_no_percentiles_and_a_restart_is_absent() {
        let h = hist(&[(5, 3)], 100);
        let mut s = Summarizer::default();
        // After a window with waits, the reused histogram starts empty again.
        s.window(&hist(&[], 0), &h, 1).unwrap();
        let w = s.window(&h, &h, 1).unwrap();
        assert_eq!((w.waits, w.p50_ns), (0, None));
        assert_eq!(s.window(&h, &hist(&[(5, 1)], 10), 1), None);
        assert_eq!(s.window(&h, &h, 0), None);
    }
}
