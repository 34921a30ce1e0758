//! Code shared by the collector's eBPF objects (`src/bin/*.rs`, one per probe family and kernel
//! generation): the drop counters every object keeps and the kernel reads they make. The
//! `sched` family's logic (`src/sched.rs`) is included by its own two objects only.
#![no_std]
// The shared run-queue histogram and the net counters need an atomic add, which core's atomics
// do not offer on this target; the intrinsic lowers to BPF's `lock +=` (XADD, every kernel since
// 4.x) when its result is unused.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics for atomic_xadd, see above"
)]

pub mod atomic;
pub mod counters;
pub mod kernel;
pub mod task_storage;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here; this only satisfies no_std.
    loop {}
}

/// Declares the object's license section. The kernel loads BTF tracing programs, and lets them
/// call GPL-only helpers, only under a GPL-compatible string; "Dual MIT/GPL" is one, and it also
/// states the MIT grant the workspace's `MIT OR Apache-2.0` gives for this source.
#[macro_export]
macro_rules! license {
    () => {
        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
