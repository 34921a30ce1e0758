//! metrics-server's two-point rates: per node and per container the previous and the last
//! cumulative CPU reading; the rate is over the window between them, and never across a restart.

/// One cumulative CPU reading: when the node took it and the counter then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub time_unix_nano: u64,
    pub cpu_core_nano_seconds: u64,
}

/// A rate and the window it is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub nano_cores: u64,
    pub window_nano_seconds: u64,
    /// Time of the last point.
    pub time_unix_nano: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTrack {
    prev: Option<Point>,
    last: Option<Point>,
    /// Start time of what the counter belongs to (a container's creation time): a different
    /// one means a new container whose counter started over.
    start_unix_nano: u64,
}

impl CpuTrack {
    /// Takes a new reading. The same reading again (the collector repeats its last cgroupfs
    /// read between full reads) and readings older than the last are ignored; a counter that
    /// went down or a new start time starts over with no rate.
    pub fn observe(&mut self, point: Point, start_unix_nano: u64) {
        let restarted = start_unix_nano != self.start_unix_nano;
        self.start_unix_nano = start_unix_nano;
        match self.last {
            Some(last) if !restarted && point.time_unix_nano <= last.time_unix_nano => {}
            Some(last) if restarted || point.cpu_core_nano_seconds < last.cpu_core_nano_seconds => {
                self.prev = None;
                self.last = Some(point);
            }
            Some(last) => {
                self.prev = Some(last);
                self.last = Some(point);
            }
            None => self.last = Some(point),
        }
    }

    pub fn last(&self) -> Option<Point> {
        self.last
    }

    /// Δ counter / Δ time over the last two points.
    pub fn rate(&self) -> Option<Rate> {
        let (prev, last) = (self.prev?, self.last?);
        let window = last.time_unix_nano.checked_sub(prev.time_unix_nano)?;
        let used = last
            .cpu_core_nano_seconds
            .checked_sub(prev.cpu_core_nano_seconds)?;
        if window == 0 {
            return None;
        }
        let nano_cores = u128::from(used) * 1_000_000_000 / u128::from(window);
        Some(Rate {
            nano_cores: u64::try_from(nano_cores).ok()?,
            window_nano_seconds: window,
            time_unix_nano: last.time_unix_nano,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn p(t: u64, cpu: u64) -> Point {
        Point {
            time_unix_nano: t,
            cpu_core_nano_seconds: cpu,
        }
    }

    #[test]
    fn rate_over_the_last_two_points_only() {
        let mut t = CpuTrack::default();
        t.observe(p(10 * S, 0), 1);
        assert_eq!(t.rate(), None, "one point: no rate");
        t.observe(p(20 * S, 5 * S), 1);
        assert_eq!(
            t.rate(),
            Some(Rate {
                nano_cores: S / 2,
                window_nano_seconds: 10 * S,
                time_unix_nano: 20 * S
            })
        );
        // The same reading repeated changes nothing.
        t.observe(p(20 * S, 5 * S), 1);
        assert_eq!(t.rate().unwrap().window_nano_seconds, 10 * S);
        t.observe(p(25 * S, 10 * S), 1);
        assert_eq!(t.rate().unwrap().nano_cores, S, "last window only");
    }

    #[test]
    fn a_restart_never_gives_a_negative_or_huge_rate() {
        let mut t = CpuTrack::default();
        t.observe(p(10 * S, 500 * S), 1);
        t.observe(p(20 * S, 505 * S), 1);
        assert_eq!(t.rate().unwrap().nano_cores, S / 2);
        // Counter dropped (container restarted in place): no rate until two new points.
        t.observe(p(30 * S, 2 * S), 1);
        assert_eq!(t.rate(), None);
        t.observe(p(40 * S, 3 * S), 1);
        assert_eq!(t.rate().unwrap().nano_cores, S / 10);
        // A new container (new start time) whose counter is already higher: no rate across it.
        t.observe(p(50 * S, 900 * S), 2);
        assert_eq!(t.rate(), None);
        // An older point out of order is ignored.
        t.observe(p(45 * S, 950 * S), 2);
        assert_eq!(t.last(), Some(p(50 * S, 900 * S)));
    }
}
