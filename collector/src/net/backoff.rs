//! Retry pacing shared by every client that reconnects or resends: the aggregator's feeds and
//! the push exporters.

use std::time::Duration;

/// Capped exponential backoff with jitter: each delay is drawn from [d/2, d], where d doubles
/// per failure up to the cap, so many aggregators (or many targets) do not retry in lockstep.
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self {
            min,
            max,
            current: min,
            seed: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        // xorshift64: enough randomness for jitter, no dependency.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fraction = (self.seed % 1000) as f64 / 1000.0;
        d.mul_f64(0.5 + 0.5 * fraction)
    }
}

/// A seed for [`Backoff`] that differs per `name` (a target, a destination) and per process.
pub fn seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) ^ std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(3);
        let mut b = Backoff::new(min, max, 42);
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        let mut nominal = min;
        for d in &delays {
            assert!(*d >= nominal / 2 && *d <= nominal, "{d:?} vs {nominal:?}");
            nominal = (nominal * 2).min(max);
        }
        assert!(delays[9] >= max / 2, "capped, not grown without bound");
        assert!(delays.windows(2).any(|w| w[0] != w[1] / 2), "jittered");
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
