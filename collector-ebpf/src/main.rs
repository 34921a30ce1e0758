//! The collector's eBPF programs. One module per probe family; every program is loaded and
//! attached on its own by user space, so any subset can run.
#![no_std]
#![no_main]

mod counters;
mod cpu_time;
mod events;
mod faults;
mod runqueue;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here; this only satisfies no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
