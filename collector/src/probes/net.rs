//! User side of the `net` family: bytes and packets of each cgroup's sockets, from the
//! `cgroup_skb` pair attached at the cgroup2 root.
//!
//! What it counts: every packet a local socket sends (egress) or receives (ingress), at L3 (IP
//! header included, link-layer header not), charged to the cgroup the socket was created in —
//! so a host-network pod's traffic lands on the pod, which the interface counters of
//! `/proc/<pid>/net/dev` cannot tell apart, and so does loopback. What it does not: packets with
//! no local socket (forwarded, bridged, dropped before socket lookup), and, on kernels before
//! 5.15 where a net_cls or net_prio v1 hierarchy is in use, the socket's cgroup2 (the kernel then
//! reports the root for every socket).

use std::{collections::HashMap, fs::File, path::Path};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
};
use collector_common::{NetCounters, names};

use super::{ProbeError, attach, family, memory::MapMemory, object, status::ProbeState};

/// rx bytes, rx packets, tx bytes, tx packets.
pub const NET_VALUES: usize = 4;
pub const RX_BYTES: usize = 0;
pub const RX_PACKETS: usize = 1;
pub const TX_BYTES: usize = 2;
pub const TX_PACKETS: usize = 3;

pub type NetValues = [u64; NET_VALUES];

/// What attaching needs beyond loading BPF programs at all.
const PERMISSION_HINT: &str = "cgroup_skb programs need CAP_NET_ADMIN (with CAP_BPF), or root";

pub struct NetReader {
    counters: BpfHashMap<MapData, u64, NetCounters>,
}

impl NetReader {
    /// Each cgroup's own socket traffic (not its descendants'), and the number of map entries.
    pub fn read(&self) -> Result<(HashMap<u64, NetValues>, usize), ProbeError> {
        let mut own = HashMap::new();
        for entry in self.counters.iter() {
            let (id, c) = entry.map_err(ProbeError::map(names::NET_COUNTERS_MAP))?;
            add(own.entry(id).or_insert([0; NET_VALUES]), &c);
        }
        let entries = own.len();
        Ok((own, entries))
    }

    /// Deletes a removed cgroup's entry and returns its final values.
    pub fn take(&mut self, id: u64) -> NetValues {
        let mut v = [0; NET_VALUES];
        if let Ok(c) = self.counters.get(&id, 0) {
            add(&mut v, &c);
        }
        // Already gone is fine: nothing to free.
        let _ = self.counters.remove(&id);
        v
    }
}

fn add(v: &mut NetValues, c: &NetCounters) {
    v[RX_BYTES] += c.rx_bytes;
    v[RX_PACKETS] += c.rx_packets;
    v[TX_BYTES] += c.tx_bytes;
    v[TX_PACKETS] += c.tx_packets;
}

/// Loads the `net` object with room for `max_cgroups` cgroups and attaches both programs to the
/// cgroup2 root at `cgroup_root` through bpf_links (which sit beside other programs there,
/// systemd's IP accounting or a CNI's; ours only count and always pass).
pub fn load(
    btf: &aya::Btf,
    cgroup_root: &Path,
    max_cgroups: u32,
) -> Result<(Ebpf, Vec<MapMemory>, NetReader), ProbeState> {
    let root = File::open(cgroup_root).map_err(|e| {
        ProbeState::Unsupported(format!(
            "cannot open the cgroup2 root {}: {e}",
            cgroup_root.display()
        ))
    })?;
    let sizes = [(names::NET_COUNTERS_MAP, max_cgroups)];
    let (mut ebpf, memory) = object::load(&family::NET, btf, None::<&u64>, &sizes)
        .map_err(|e| attach::classify_with(&e, "loading", PERMISSION_HINT))?;
    for (program, kind) in [
        (names::NET_INGRESS_PROG, CgroupSkbAttachType::Ingress),
        (names::NET_EGRESS_PROG, CgroupSkbAttachType::Egress),
    ] {
        attach_skb(&mut ebpf, program, kind, &root)?;
    }
    let counters = super::take_map(&mut ebpf, names::NET_COUNTERS_MAP)
        .map_err(|e| ProbeState::Failed(super::error_text(&e)))?;
    Ok((ebpf, memory, NetReader { counters }))
}

fn attach_skb(
    ebpf: &mut Ebpf,
    program: &'static str,
    kind: CgroupSkbAttachType,
    root: &File,
) -> Result<(), ProbeState> {
    let Some(prog) = ebpf.program_mut(program) else {
        return Err(ProbeState::Failed(format!(
            "program {program} missing from the eBPF object"
        )));
    };
    let prog: &mut CgroupSkb = prog
        .try_into()
        .map_err(|e| ProbeState::Failed(format!("{program} is not a cgroup_skb program: {e}")))?;
    prog.load()
        .map_err(|e| attach::classify_with(&e, &format!("loading {program}"), PERMISSION_HINT))?;
    // A bpf_link (every kernel we support, 5.7+) always attaches beside the cgroup's other
    // programs; link_create refuses the BPF_F_ALLOW_MULTI flag itself, hence `Single` (no flag).
    prog.attach(root, kind, CgroupAttachMode::Single)
        .map_err(|e| attach::classify_with(&e, &format!("attaching {program}"), PERMISSION_HINT))?;
    Ok(())
}

/// The status names of the family, for [`Family::Net`].
pub const STATUS_NAMES: [&str; 2] = [names::NET_INGRESS_PROG, names::NET_EGRESS_PROG];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::Family;

    #[test]
    fn counters_sum_into_values_in_their_layout() {
        let mut v = [0; NET_VALUES];
        let c = NetCounters {
            rx_bytes: 100,
            rx_packets: 2,
            tx_bytes: 60,
            tx_packets: 1,
        };
        add(&mut v, &c);
        add(&mut v, &c);
        assert_eq!(v, [200, 4, 120, 2]);
        assert_eq!(Family::Net.status_names(), STATUS_NAMES);
    }
}
