//! Test workload: sleeps in short naps for a while, waking often but using almost no CPU.
//!
//! Usage: naps TOTAL_MS NAP_US

use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().unwrap_or(0));
    let total = Duration::from_millis(args.next().unwrap_or(1000));
    let nap = Duration::from_micros(args.next().unwrap_or(5000));
    let end = Instant::now() + total;
    while Instant::now() < end {
        std::thread::sleep(nap);
    }
}
