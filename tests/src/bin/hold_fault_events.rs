//! VM helper, started by the guest's init: holds the page-fault software events (minor and
//! major) open on every CPU until killed, so that the kernel's static keys for them stay on
//! while collectors start and stop. Flipping them live-patches the page-fault path, which
//! QEMU's multi-threaded TCG can mistranslate on the other vCPU (see xtask/src/vm/init.sh).
//! Prints "holding N events" once they are open.

use std::io;

/// `struct perf_event_attr` up to PERF_ATTR_SIZE_VER0 (64 bytes), which every kernel accepts.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_PAGE_FAULTS_MIN: u64 = 5;
const PERF_COUNT_SW_PAGE_FAULTS_MAJ: u64 = 6;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// A counting (not sampling) event on every task of `cpu`.
fn open(config: u64, cpu: i32) -> io::Result<i32> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_SOFTWARE,
        size: size_of::<PerfEventAttr>() as u32,
        config,
        ..Default::default()
    };
    // SAFETY: a valid attr of the size it declares; pid -1 with a cpu means all tasks there.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1,
            cpu,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd as i32)
}

fn main() {
    // SAFETY: plain sysconf query.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as i32;
    let mut held = 0;
    for cpu in 0..cpus {
        for config in [PERF_COUNT_SW_PAGE_FAULTS_MIN, PERF_COUNT_SW_PAGE_FAULTS_MAJ] {
            match open(config, cpu) {
                Ok(_) => held += 1,
                Err(e) => eprintln!("hold_fault_events: event {config} on cpu {cpu}: {e}"),
            }
        }
    }
    println!("holding {held} events");
    loop {
        // SAFETY: plain syscall; returns only when a signal is caught.
        unsafe { libc::pause() };
    }
}
