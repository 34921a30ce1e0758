//! Test workload: spins until the process has used `MS` milliseconds of CPU time (with
//! `--wall`, until `MS` milliseconds have passed), on `THREADS` threads (default 1), then exits.
//! A CPU-time target makes the work the same on an idle and a busy machine.
//!
//! Usage: burn [--wall] MS [THREADS]

use std::time::{Duration, Instant};

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; the process CPU clock always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn spin(done: &(dyn Fn() -> bool + Sync)) {
    let mut x: u64 = 0;
    while !done() {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    std::hint::black_box(x);
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let wall = args.first().is_some_and(|a| a == "--wall");
    if wall {
        args.remove(0);
    }
    let ms: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let threads: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let target = Duration::from_millis(ms);
    let end = Instant::now() + target;
    let done = move || {
        if wall {
            Instant::now() >= end
        } else {
            cpu_time() >= target
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(|| spin(&done));
        }
        spin(&done);
    });
}
