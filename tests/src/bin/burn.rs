//! Test workload: spins on one CPU for the given number of milliseconds (wall clock), then exits.

use std::time::{Duration, Instant};

fn main() {
    let ms: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let end = Instant::now() + Duration::from_millis(ms);
    let mut x: u64 = 0;
    while Instant::now() < end {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    std::hint::black_box(x);
}
