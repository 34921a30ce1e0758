//! Test workload: touches `MIB` MiB of fresh anonymous memory, spins until it has used `MS`
//! milliseconds of CPU time, prints `ready`, then keeps the memory until stdin closes or it is
//! killed.
//!
//! Usage: hold MIB MS

use std::io::{BufRead as _, Write as _};
use std::time::Duration;

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().unwrap_or(0));
    let mib = args.next().unwrap_or(64);
    let ms = args.next().unwrap_or(500);
    const PAGE: usize = 4096;
    let len = (mib as usize) << 20;
    // SAFETY: a fresh private anonymous mapping, only ever used as the slice below.
    let memory: &mut [u8] = unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(ptr, libc::MAP_FAILED, "mmap {len} bytes");
        // 4 KiB pages, so one fault per page whatever the node's THP setting (Debian's 6.1
        // defaults to always: 64 MiB would be ~32 faults, not 16,384).
        libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE);
        std::slice::from_raw_parts_mut(ptr.cast(), len)
    };
    for page in memory.chunks_mut(PAGE) {
        page[0] = 1;
    }
    let target = Duration::from_millis(ms);
    let cpu_time = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer; the process CPU clock always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    };
    let mut x: u64 = 0;
    while cpu_time() < target {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    println!("ready");
    std::io::stdout().flush().ok();
    // Blocks until the parent closes our stdin (or kills us).
    let _ = std::io::stdin().lock().lines().count();
    std::hint::black_box((&*memory, x));
}
