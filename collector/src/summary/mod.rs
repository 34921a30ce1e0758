//! The kubelet Summary model (node / pods / containers) built from one snapshot.

pub mod formulas;

use std::collections::BTreeMap;

use crate::{
    cgroupfs::reading::Source,
    cri::NameTable,
    k8s::identity::{self, Identity},
    node::NodeInfo,
    proto,
    rate::CgroupRates,
    sampler::{CgroupSample, MemInfo, Sample},
    unix_time::unix_nanos,
};

/// Node and pods of one sample (`rates` in `sample.cgroups` order), pods sorted by uid and their
/// containers by id. The store builds this once per sample for every reader.
///
/// `names` (from the CRI runtime) names pods and containers and marks sandbox ("pause")
/// containers, which kubelet leaves out; without an entry a pod keeps an empty name and a
/// container is named by its id.
pub fn build(
    sample: &Sample,
    rates: &[CgroupRates],
    node: &NodeInfo,
    names: &NameTable,
) -> (proto::NodeStats, Vec<proto::PodStats>) {
    let time = unix_nanos(sample.wall);
    let mut node_stats = proto::NodeStats {
        node_name: node.node_name.clone(),
        start_time_unix_nano: node.boot_time_unix_nano,
        ..Default::default()
    };
    let mut pods: BTreeMap<String, proto::PodStats> = BTreeMap::new();
    let mut containers: Vec<(String, proto::ContainerStats)> = Vec::new();
    for (c, rates) in sample.cgroups.iter().zip(rates) {
        if &*c.path == "/" {
            node_stats = node_root(c, rates, sample.meminfo, time, node_stats);
            continue;
        }
        let identity = identity::identify(&c.path);
        match &identity {
            Some(Identity::Pod(_)) => {}
            Some(Identity::Container(_, container)) if !names.is_sandbox(&container.id) => {}
            _ => continue,
        }
        let res = Resources::of(c, rates);
        match identity {
            Some(Identity::Pod(pod)) => {
                let stats = pods.entry(pod.uid.clone()).or_default();
                let name = names.pod(&pod.uid);
                *stats = proto::PodStats {
                    pod_ref: Some(proto::PodReference {
                        name: name.map(|n| n.name.clone()).unwrap_or_default(),
                        namespace: name.map(|n| n.namespace.clone()).unwrap_or_default(),
                        uid: pod.uid,
                    }),
                    start_time_unix_nano: c.created_unix_nano.unwrap_or_default(),
                    qos_class: pod.qos.as_str().to_owned(),
                    containers: std::mem::take(&mut stats.containers),
                    cpu: Some(res.cpu),
                    memory: res.memory,
                    swap: res.swap,
                    process_stats: Some(res.processes),
                    io: res.io,
                    ebpf: res.ebpf,
                    cgroup_id: c.id,
                    cgroup_path: c.path.to_string(),
                    // Filled by the store's sliding windows.
                    usage_percentiles: None,
                };
            }
            Some(Identity::Container(pod, container)) => containers.push((
                pod.uid,
                proto::ContainerStats {
                    name: names
                        .container(&container.id)
                        .unwrap_or(&container.id)
                        .to_owned(),
                    start_time_unix_nano: c.created_unix_nano.unwrap_or_default(),
                    cpu: Some(res.cpu),
                    memory: res.memory,
                    swap: res.swap,
                    process_stats: Some(res.processes),
                    io: res.io,
                    ebpf: res.ebpf,
                    container_id: container.id,
                    runtime: container.runtime.as_str().to_owned(),
                    cgroup_id: c.id,
                    cgroup_path: c.path.to_string(),
                    usage_percentiles: None,
                },
            )),
            Some(Identity::PodInternal(_)) | None => {}
        }
    }
    for (uid, container) in containers {
        // A container whose pod cgroup vanished mid-pass has no pod to belong to this time.
        if let Some(pod) = pods.get_mut(&uid) {
            pod.containers.push(container);
        }
    }
    let mut pods: Vec<proto::PodStats> =
        pods.into_values().filter(|p| p.pod_ref.is_some()).collect();
    for pod in &mut pods {
        pod.containers
            .sort_by(|a, b| a.container_id.cmp(&b.container_id));
    }
    (node_stats, pods)
}

fn node_root(
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
        ..base
    }
}

/// The per-cgroup blocks pods, containers and raw cgroup records share.
pub(crate) struct Resources {
    pub cpu: proto::CpuStats,
    pub memory: Option<proto::MemoryStats>,
    pub swap: Option<proto::SwapStats>,
    pub processes: proto::ProcessStats,
    pub io: Option<proto::IoStats>,
    pub ebpf: Option<proto::EbpfStats>,
}

impl Resources {
    /// Times are the reading's own: a reading carried forward between full passes keeps the
    /// time it was taken, as kubelet's per-block `time` fields mean.
    pub(crate) fn of(c: &CgroupSample, rates: &CgroupRates) -> Self {
        let time = unix_nanos(c.read_wall);
        let r = &c.reading;
        Self {
            cpu: formulas::cpu(&r.cpu, rates, r.cpu_psi, time),
            memory: r
                .memory
                .map(|m| formulas::memory(&m, rates, r.memory_psi, time, None, None)),
            swap: r.memory.map(|m| formulas::swap(&m, r.memory_source, time)),
            processes: formulas::processes(r),
            io: formulas::io(r.io, r.io_psi, time),
            ebpf: formulas::ebpf(&c.ebpf, rates),
        }
    }
}
