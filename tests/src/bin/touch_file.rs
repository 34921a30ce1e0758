//! Test workload: maps a file read-only and reads one byte of every page (page-cache misses
//! become major faults), prints `done`, then waits until stdin closes.
//!
//! Usage: touch_file PATH

use std::{
    fs::File,
    io::{BufRead as _, Write as _},
    os::fd::AsRawFd as _,
};

fn main() {
    let path = std::env::args().nth(1).expect("usage: touch_file PATH");
    let file = File::open(&path).expect("open");
    let len = file.metadata().expect("stat").len() as usize;
    // SAFETY: a private read-only mapping of a file we opened; unmapped at exit.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED, "mmap failed");
    // No readahead beyond the faulting page: each uncached page is its own major fault.
    // SAFETY: advising our own mapping.
    unsafe { libc::madvise(addr, len, libc::MADV_RANDOM) };
    let mut sum = 0u64;
    for offset in (0..len).step_by(4096) {
        // SAFETY: inside the mapping.
        sum += u64::from(unsafe { std::ptr::read_volatile(addr.cast::<u8>().add(offset)) });
    }
    println!("done {sum}");
    std::io::stdout().flush().ok();
    let _ = std::io::stdin().lock().lines().count();
}
