//! The node block: the root cgroup's usage, the host's network, the node and runtime
//! filesystems, rlimit, and kubelet's system containers.

use super::{Inputs, Resources, formulas, fs, network};
use crate::{
    cgroupfs::reading::Source,
    proto,
    rate::CgroupRates,
    sampler::{CgroupSample, HostReading, MemInfo, Sample},
    unix_time::unix_nanos,
};

/// kubelet's names for its system containers (`SystemContainer*` in stats/v1alpha1).
pub const KUBELET: &str = "kubelet";
pub const RUNTIME: &str = "runtime";
pub const MISC: &str = "misc";
pub const PODS: &str = "pods";

pub fn root(
    root: &CgroupSample,
    rates: &CgroupRates,
    meminfo: Option<MemInfo>,
    meminfo_time: u64,
    base: proto::NodeStats,
) -> proto::NodeStats {
    let r = &root.reading;
    let time = unix_nanos(root.read_wall);
    let memory = r.memory.map(|m| {
        // The v2 root has no memory.current: kubelet uses anon + file of the root memory.stat.
        let usage = match (r.memory_source, m.usage_bytes) {
            (Source::V2, None) => m
                .stat
                .anon
                .zip(m.stat.file)
                .map(|(a, f)| a.saturating_add(f)),
            (_, usage) => usage,
        };
        formulas::memory(
            &m,
            rates,
            r.memory_psi,
            time,
            usage,
            meminfo.map(|i| i.total),
        )
    });
    proto::NodeStats {
        cpu: Some(formulas::cpu(&r.cpu, rates, r.cpu_psi, time)),
        memory,
        swap: meminfo.map(|i| proto::SwapStats {
            time_unix_nano: meminfo_time,
            swap_available_bytes: Some(i.swap_free),
            swap_usage_bytes: Some(i.swap_total.saturating_sub(i.swap_free)),
        }),
        io: formulas::io(r.io, r.io_psi, time),
        process_stats: Some(formulas::processes(r)),
        ebpf: formulas::ebpf(&root.ebpf, rates),
        network: root.network.as_deref().map(network::stats),
        ..base
    }
}

/// What the node's host reads and the runtime add: node fs, runtime filesystems, rlimit.
pub fn host(node: &mut proto::NodeStats, host: &HostReading, inputs: &Inputs) {
    node.fs = host.node_fs.as_ref().map(fs::node_fs);
    node.rlimit = host.rlimit.map(|r| proto::RlimitStats {
        time_unix_nano: unix_nanos(r.time),
        max_pid: r.max_pid,
        cur_proc: r.cur_proc,
    });
    let rt = &inputs.runtime_fs;
    if rt.image_fs.is_some() || rt.container_fs.is_some() {
        node.runtime = Some(proto::RuntimeStats {
            image_fs: rt.image_fs.as_ref().map(fs::runtime),
            container_fs: rt.container_fs.as_ref().map(fs::runtime),
        });
    }
}

/// kubelet's system containers whose cgroup exists in this sample, in kubelet's order. The
/// pods entry is the pod cgroup root (the shallowest `kubepods` / `kubepods.slice`).
pub fn system_containers(
    sample: &Sample,
    rates: &[CgroupRates],
    inputs: &Inputs,
) -> Vec<proto::ContainerStats> {
    let wanted: [(&str, Option<&str>); 3] = [
        (KUBELET, inputs.kubelet_cgroup.as_deref()),
        (RUNTIME, inputs.runtime_cgroup.as_deref()),
        (MISC, inputs.misc_cgroup.as_deref()),
    ];
    let mut found: [Option<usize>; 4] = [None; 4];
    let mut pods_depth = usize::MAX;
    for (i, c) in sample.cgroups.iter().enumerate() {
        for (slot, (_, path)) in wanted.iter().enumerate() {
            if *path == Some(&*c.path) {
                found[slot] = Some(i);
            }
        }
        if c.path.ends_with("/kubepods") || c.path.ends_with("/kubepods.slice") {
            let depth = c.path.matches('/').count();
            if depth < pods_depth {
                pods_depth = depth;
                found[3] = Some(i);
            }
        }
    }
    let names = [KUBELET, RUNTIME, MISC, PODS];
    names
        .iter()
        .zip(found)
        .filter_map(|(name, i)| {
            let c = &sample.cgroups[i?];
            let res = Resources::of(c, &rates[i?]);
            let start = match *name {
                // kubelet reports its own start, not its cgroup's.
                KUBELET => inputs.kubelet_start.or(c.created_unix_nano),
                _ => c.created_unix_nano,
            };
            Some(proto::ContainerStats {
                name: (*name).to_owned(),
                start_time_unix_nano: start.unwrap_or_default(),
                cpu: Some(res.cpu),
                memory: res.memory,
                swap: res.swap,
                process_stats: Some(res.processes),
                io: res.io,
                ebpf: res.ebpf,
                cgroup_id: c.id,
                cgroup_path: c.path.to_string(),
                ..Default::default()
            })
        })
        .collect()
}
