//! VM helper: holds the kernel's `cgroup_skb` static keys on for the whole guest run.
//!
//! The net probe's tests attach and detach `cgroup_skb` programs, and the first attach (last
//! detach) of each direction flips `cgroup_bpf_enabled_key`, a jump label that the kernel
//! live-patches with an int3 in the socket receive path. Under QEMU's multi-threaded TCG a
//! 6.12 guest oopsed on that int3 in `sk_filter_trim_cap` (a softirq on the other vCPU). This
//! attaches the net probe's own ingress/egress pair to an empty cgroup (it counts nothing
//! there) and sleeps until killed, so the keys never flip while the tests run.
//!
//! Usage: hold_skb_keys CGROUP_DIR

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let cgroup: PathBuf = std::env::args_os()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: hold_skb_keys CGROUP_DIR"))?
        .into();
    let btf = aya::Btf::from_sys_fs()?;
    let (_ebpf, _memory, _reader) =
        collector::probes::net::load(&btf, &cgroup, 16).map_err(|state| {
            anyhow::anyhow!("attaching cgroup_skb to {}: {state:?}", cgroup.display())
        })?;
    println!("holding the cgroup_skb keys at {}", cgroup.display());
    loop {
        std::thread::park();
    }
}
