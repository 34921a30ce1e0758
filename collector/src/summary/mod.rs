//! The kubelet Summary model (node / pods / containers) built from one snapshot.

pub mod formulas;
mod fs;
mod network;
pub mod node;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use crate::{
    cri::{NameTable, stats::RuntimeFs},
    host_scan::DiskTable,
    k8s::identity::{self, Identity},
    node::NodeInfo,
    proto,
    rate::CgroupRates,
    sampler::{CgroupSample, Sample},
    unix_time::unix_nanos,
};

/// What the Summary takes besides the sample: the runtime's names and filesystem usage, the
/// slow disk scans, and where kubelet's system containers are.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Names pods and containers, their CreatedAt, and which containers are sandboxes
    /// ("pause"), which kubelet leaves out.
    pub names: Arc<NameTable>,
    pub runtime_fs: Arc<RuntimeFs>,
    pub disk: Arc<DiskTable>,
    pub kubelet_cgroup: Option<String>,
    /// The kubelet process's start, Unix ns (kubelet reports its own start for its entry).
    pub kubelet_start: Option<u64>,
    pub runtime_cgroup: Option<String>,
    pub misc_cgroup: Option<String>,
}

/// Node and pods of one sample (`rates` in `sample.cgroups` order), pods sorted by uid and their
/// containers by id. The store builds this once per sample for every reader.
///
/// Without a name from the runtime a pod keeps an empty name, a container is named by its id,
/// and both start at their cgroup's first sighting.
pub fn build(
    sample: &Sample,
    rates: &[CgroupRates],
    node: &NodeInfo,
    inputs: &Inputs,
) -> (proto::NodeStats, Vec<proto::PodStats>) {
    let names = &inputs.names;
    let time = unix_nanos(sample.wall);
    let mut node_stats = proto::NodeStats {
        node_name: node.node_name.clone(),
        start_time_unix_nano: node.boot_time_unix_nano,
        ..Default::default()
    };
    let mut pods: BTreeMap<String, proto::PodStats> = BTreeMap::new();
    // Each container's pod, processes (kubelet's pod count includes the sandbox's) and stats
    // (none for a sandbox, which kubelet leaves out).
    let mut containers: Vec<(String, Option<u64>, Option<proto::ContainerStats>)> = Vec::new();
    for (c, rates) in sample.cgroups.iter().zip(rates) {
        if &*c.path == "/" {
            node_stats = node::root(c, rates, sample.meminfo, time, node_stats);
            continue;
        }
        match identity::identify(&c.path) {
            Some(Identity::Pod(pod)) => {
                let stats = pods.entry(pod.uid.clone()).or_default();
                let res = Resources::of(c, rates);
                let name = names.pod(&pod.uid);
                *stats = proto::PodStats {
                    pod_ref: Some(proto::PodReference {
                        name: name.map(|n| n.name.clone()).unwrap_or_default(),
                        namespace: name.map(|n| n.namespace.clone()).unwrap_or_default(),
                        uid: pod.uid.clone(),
                    }),
                    start_time_unix_nano: names
                        .pod_created(&pod.uid)
                        .or(c.created_unix_nano)
                        .unwrap_or_default(),
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
                    network: c.network.as_deref().map(network::stats),
                    ..Default::default()
                };
            }
            Some(Identity::Container(pod, container)) => {
                let stats = (!names.is_sandbox(&container.id))
                    .then(|| container_stats(c, rates, &pod.uid, container, sample, inputs));
                containers.push((pod.uid, c.reading.processes, stats));
            }
            _ => {}
        }
    }
    let mut processes: HashMap<String, u64> = HashMap::new();
    for (uid, count, container) in containers {
        // A container whose pod cgroup vanished mid-pass has no pod to belong to this time.
        let Some(pod) = pods.get_mut(&uid) else {
            continue;
        };
        if let Some(container) = container {
            pod.containers.push(container);
        }
        if let Some(n) = count {
            *processes.entry(uid).or_default() += n;
        }
    }
    let mut pods: Vec<proto::PodStats> =
        pods.into_values().filter(|p| p.pod_ref.is_some()).collect();
    for pod in &mut pods {
        pod.containers
            .sort_by(|a, b| a.container_id.cmp(&b.container_id));
        let uid = pod.pod_ref.as_ref().map_or("", |r| r.uid.as_str());
        if let Some(stats) = &mut pod.process_stats {
            stats.process_count = processes.get(uid).copied();
        }
        storage(pod, sample, inputs);
    }
    node::host(&mut node_stats, &sample.host, inputs);
    node_stats.system_containers = node::system_containers(sample, rates, inputs);
    (node_stats, pods)
}

fn container_stats(
    c: &CgroupSample,
    rates: &CgroupRates,
    pod_uid: &str,
    container: identity::ContainerRef,
    sample: &Sample,
    inputs: &Inputs,
) -> proto::ContainerStats {
    let names = &inputs.names;
    let res = Resources::of(c, rates);
    let name = names.container(&container.id);
    // kubelet's log directory is named after the container, which only the runtime knows.
    let logs = name.and_then(|n| {
        let files = inputs.disk.pods.get(pod_uid)?.logs.containers.get(n)?;
        Some(fs::logs(sample.host.node_fs.as_ref(), files))
    });
    proto::ContainerStats {
        name: name.unwrap_or(&container.id).to_owned(),
        start_time_unix_nano: names
            .container_created(&container.id)
            .or(c.created_unix_nano)
            .unwrap_or_default(),
        cpu: Some(res.cpu),
        memory: res.memory,
        swap: res.swap,
        process_stats: Some(res.processes),
        io: res.io,
        ebpf: res.ebpf,
        rootfs: inputs
            .runtime_fs
            .writable_layers
            .get(&container.id)
            .map(fs::runtime),
        logs,
        container_id: container.id,
        runtime: container.runtime.as_str().to_owned(),
        cgroup_id: c.id,
        cgroup_path: c.path.to_string(),
        usage_percentiles: None,
    }
}

/// Volumes and ephemeral storage of a pod whose containers are in place.
fn storage(pod: &mut proto::PodStats, sample: &Sample, inputs: &Inputs) {
    let node_fs = sample.host.node_fs.as_ref();
    let uid = pod.pod_ref.as_ref().map_or("", |r| r.uid.as_str());
    let disk = inputs.disk.pods.get(uid);
    let mut volumes: Vec<proto::VolumeStats> = disk
        .map(|d| d.volumes.iter().map(fs::volume).collect())
        .unwrap_or_default();
    // kubelet lists the ephemeral volumes first, then the persistent ones.
    volumes.sort_by(|a, b| (!a.local_ephemeral, &a.name).cmp(&(!b.local_ephemeral, &b.name)));
    let pod_logs = disk
        .and_then(|d| d.logs.pod.as_ref())
        .map(|f| fs::logs(node_fs, f));
    let etc_hosts = disk
        .and_then(|d| d.etc_hosts)
        .map(|m| fs::file(node_fs, m.used, unix_nanos(m.time)));
    pod.ephemeral_storage = fs::ephemeral(&fs::EphemeralParts {
        node_fs,
        containers: &pod.containers,
        volumes: &volumes,
        pod_logs: pod_logs.as_ref(),
        etc_hosts: etc_hosts.as_ref(),
    });
    pod.volume = volumes;
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
