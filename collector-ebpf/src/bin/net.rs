//! The `net` family: bytes and packets of every socket, charged to the socket's cgroup, from a
//! `cgroup_skb` ingress/egress pair attached (multi) at the cgroup2 root. Unlike an interface's
//! counters this sees a host-network pod's own traffic, and loopback; it sees only traffic with a
//! local socket (nothing forwarded or bridged past the host's sockets).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::bpf_skb_cgroup_id,
    macros::{cgroup_skb, map},
    maps::HashMap,
    programs::SkBuffContext,
};
use collector_common::{DEFAULT_MAX_CGROUPS, NetCounters, counter};
use collector_ebpf::{atomic::add, counters::bump};

/// Entries are allocated as cgroups first send or receive (`BPF_F_NO_PREALLOC`): the kernel
/// memory follows the cgroups with sockets, not the capacity.
const BPF_F_NO_PREALLOC: u32 = 1;

/// One value per cgroup shared by all CPUs, not a per-CPU hash: these programs need atomic
/// adds even on a CPU's own value (see `count`), so a per-CPU copy would only spare the cache
/// line's travel between CPUs that handle one cgroup's packets at once, at 32 bytes per
/// possible CPU per cgroup: 32 MiB at 128 CPUs and the default 8,192 cgroups, half the probes'
/// whole budget (`tests/tests/map_memory.rs`).
#[map]
static NET_COUNTERS: HashMap<u64, NetCounters> =
    HashMap::with_max_entries(DEFAULT_MAX_CGROUPS, BPF_F_NO_PREALLOC);

/// The verdict that lets the packet through: these programs only count.
const PASS: i32 = 1;

#[cgroup_skb(ingress)]
pub fn net_ingress(ctx: SkBuffContext) -> i32 {
    count(&ctx, true);
    PASS
}

#[cgroup_skb(egress)]
pub fn net_egress(ctx: SkBuffContext) -> i32 {
    count(&ctx, false);
    PASS
}

#[inline(always)]
fn count(ctx: &SkBuffContext, ingress: bool) {
    // SAFETY: the program's own context; the helper reads the socket's cgroup2 id.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let bytes = u64::from(ctx.len());
    let c = match NET_COUNTERS.get_ptr_mut(cgroup_id) {
        Some(c) => c,
        None => {
            // The first packet of this cgroup: zeros, then the add below. Another CPU may have
            // inserted it since (BPF_NOEXIST fails then): the value is there either way.
            let _ = NET_COUNTERS.insert(cgroup_id, NetCounters::default(), BPF_NOEXIST.into());
            match NET_COUNTERS.get_ptr_mut(cgroup_id) {
                Some(c) => c,
                None => {
                    bump(counter::NET_INSERT_FAILED);
                    return;
                }
            }
        }
    };
    // Atomic: the value is shared by all CPUs, and even on one CPU cgroup_skb programs run with
    // migration, not preemption or bottom halves, disabled, so an egress run in a task can be
    // interrupted by an ingress run in softirq (or preempted by another task's egress).
    // SAFETY: aligned u64s of the map's value, valid for this run.
    unsafe {
        if ingress {
            add(&raw mut (*c).rx_bytes, bytes);
            add(&raw mut (*c).rx_packets, 1);
        } else {
            add(&raw mut (*c).tx_bytes, bytes);
            add(&raw mut (*c).tx_packets, 1);
        }
    }
}

collector_ebpf::license!();
