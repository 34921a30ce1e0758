//! `/metrics`: the collector's own health and cost, and what only the probes can tell (eBPF CPU
//! time, page faults, run-queue wait histograms, OOM kills, socket traffic) per container and
//! pod, with the same container/pod/namespace labels as `/metrics/resource`. The remote-write
//! exporter sends the eBPF families under the same names, socket traffic excepted (it is not
//! pushed yet).

use std::sync::{LazyLock, atomic::Ordering};

use collector_common::RUNQ_BUCKETS;

use super::{
    MoreMetrics,
    prom::{Exposition, Kind, format_value},
    resource::{pod_name, pod_namespace},
};
use crate::{
    probes::RUNQ_VALUES, rate::runq, sampler::CgroupSample, server::ServerStats, store::Snapshot,
};

/// Histogram edges: bucket i of the kernel histogram holds waits in [2^i, 2^(i+1)) ns, so the
/// cumulative count up to edge 2^k ns is the sum of buckets below k. Every other power of two
/// from ~1 µs to ~1 s keeps the series per cgroup at 12.
const RUNQ_EDGES_LOG2: [usize; 11] = [10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];

/// Each edge with its `le` label, formatted once rather than per cgroup per scrape.
pub static RUNQ_EDGES: LazyLock<Vec<(usize, String)>> = LazyLock::new(|| {
    RUNQ_EDGES_LOG2
        .iter()
        .map(|&k| (k, format_value((1u64 << k) as f64 / 1e9)))
        .collect()
});

fn declare(e: &mut Exposition) {
    let families: [(&'static str, Kind, &'static str); 48] = [
        (
            "collector_sampler_passes_total",
            Kind::Counter,
            "Sampling passes since start.",
        ),
        (
            "collector_sampler_failed_passes_total",
            Kind::Counter,
            "Sampling passes that failed as a whole (e.g. out of file descriptors); nothing was published for them.",
        ),
        (
            "collector_cgroups",
            Kind::Gauge,
            "Cgroups in the last sampling pass.",
        ),
        (
            "collector_cgroupfs_parse_errors_total",
            Kind::Counter,
            "Values in cgroup files that did not parse (the field was reported absent).",
        ),
        (
            "collector_cgroupfs_read_errors_total",
            Kind::Counter,
            "cgroup files that existed but could not be read (the field was reported absent).",
        ),
        (
            "collector_ebpf_map_read_errors_total",
            Kind::Counter,
            "Failed reads of the eBPF maps (that pass had no eBPF fields).",
        ),
        (
            "collector_start_time_seconds",
            Kind::Gauge,
            "When this collector process started (Unix seconds): every eBPF counter restarts from zero when it changes.",
        ),
        (
            "collector_ebpf_counters_since_seconds",
            Kind::Gauge,
            "When the eBPF counters started counting (the probes attached, Unix seconds).",
        ),
        (
            "collector_ebpf_map_entries",
            Kind::Gauge,
            "Entries in the per-cgroup eBPF map.",
        ),
        (
            "collector_ebpf_dropped_total",
            Kind::Counter,
            "Measurements lost because an eBPF map or event ring was full, by what was lost.",
        ),
        (
            "collector_ebpf_unattributed_cgroups_total",
            Kind::Counter,
            "Map entries of cgroups no walk found, credited to the root and freed.",
        ),
        (
            "collector_ebpf_map_memory_bytes",
            Kind::Gauge,
            "Kernel memory of each eBPF map (its fdinfo memlock).",
        ),
        (
            "collector_ebpf_map_memory_projected_bytes",
            Kind::Gauge,
            "Kernel memory the same map would take with this many possible CPUs.",
        ),
        (
            "collector_cgroupfs_reads_total",
            Kind::Counter,
            "Cgroups read from cgroupfs, by outcome (read, or carried: left unread on a full \
             pass because the probes saw them idle since their last reading).",
        ),
        (
            "collector_cgroup_walks_total",
            Kind::Counter,
            "Walks of the whole cgroup tree, by why (full pass or early).",
        ),
        (
            "collector_watch_subscribers",
            Kind::Gauge,
            "Watch streams open now.",
        ),
        (
            "collector_watch_dropped_subscribers_total",
            Kind::Counter,
            "Watch subscribers dropped for falling behind.",
        ),
        (
            "collector_watch_refused_subscribers_total",
            Kind::Counter,
            "Watch subscriptions refused because --max-watch-subscribers were open.",
        ),
        (
            "collector_refused_connections_total",
            Kind::Counter,
            "Connections closed at once because --max-connections were open, by listener.",
        ),
        (
            "collector_accept_errors_total",
            Kind::Counter,
            "Failed accepts (e.g. out of file descriptors), each followed by a pause, by listener.",
        ),
        (
            "collector_probe_up",
            Kind::Gauge,
            "1 when the eBPF program is loaded and attached, 0 otherwise.",
        ),
        (
            "collector_bpf_program_runs_total",
            Kind::Counter,
            "Runs of each eBPF program since bpf_stats was enabled.",
        ),
        (
            "collector_bpf_program_run_seconds_total",
            Kind::Counter,
            "Time spent in each eBPF program since bpf_stats was enabled.",
        ),
        (
            "container_ebpf_cpu_usage_seconds_total",
            Kind::Counter,
            "On-CPU time of the container's tasks seen by the sched_switch probe since it attached.",
        ),
        (
            "container_ebpf_page_faults_total",
            Kind::Counter,
            "Page faults of the container's tasks seen by the perf probes since they attached, by type.",
        ),
        (
            "container_ebpf_network_bytes_total",
            Kind::Counter,
            "L3 bytes (IP header included) of the container's sockets seen by the cgroup_skb probe since it attached, by direction.",
        ),
        (
            "container_ebpf_network_packets_total",
            Kind::Counter,
            "Packets of the container's sockets seen by the cgroup_skb probe since it attached, by direction.",
        ),
        (
            "container_ebpf_oom_kills_total",
            Kind::Counter,
            "OOM kills of the container's tasks seen by the mark_victim probe since it attached.",
        ),
        (
            "container_runqueue_wait_seconds",
            Kind::Histogram,
            "Time the container's runnable tasks waited for a CPU, since the probes attached.",
        ),
        (
            "pod_ebpf_cpu_usage_seconds_total",
            Kind::Counter,
            "On-CPU time of the pod's tasks seen by the sched_switch probe since it attached.",
        ),
        (
            "pod_ebpf_page_faults_total",
            Kind::Counter,
            "Page faults of the pod's tasks seen by the perf probes since they attached, by type.",
        ),
        (
            "pod_ebpf_network_bytes_total",
            Kind::Counter,
            "L3 bytes (IP header included) of the pod's sockets seen by the cgroup_skb probe since it attached, by direction.",
        ),
        (
            "pod_ebpf_network_packets_total",
            Kind::Counter,
            "Packets of the pod's sockets seen by the cgroup_skb probe since it attached, by direction.",
        ),
        (
            "pod_ebpf_oom_kills_total",
            Kind::Counter,
            "OOM kills of the pod's tasks seen by the mark_victim probe since it attached.",
        ),
        (
            "pod_runqueue_wait_seconds",
            Kind::Histogram,
            "Time the pod's runnable tasks waited for a CPU, since the probes attached.",
        ),
        (
            "node_ebpf_cpu_usage_seconds_total",
            Kind::Counter,
            "On-CPU time of every task but the idle ones, seen by the sched_switch probe since it attached.",
        ),
        (
            "node_ebpf_page_faults_total",
            Kind::Counter,
            "Page faults seen by the perf probes since they attached, by type.",
        ),
        (
            "node_ebpf_network_bytes_total",
            Kind::Counter,
            "L3 bytes (IP header included) of every local socket seen by the cgroup_skb probe since it attached, by direction.",
        ),
        (
            "node_ebpf_network_packets_total",
            Kind::Counter,
            "Packets of every local socket seen by the cgroup_skb probe since it attached, by direction.",
        ),
        (
            "node_runqueue_wait_seconds",
            Kind::Histogram,
            "Time runnable tasks waited for a CPU, since the probes attached.",
        ),
        (
            "collector_terminated_cgroups",
            Kind::Gauge,
            "Removed cgroups whose final records are kept for late subscribers.",
        ),
        (
            "collector_oom_kills_recent",
            Kind::Gauge,
            "OOM kills kept for late subscribers.",
        ),
        (
            "collector_host_read_errors_total",
            Kind::Counter,
            "Reads outside cgroupfs (net/dev, statfs) that failed for a process that still existed.",
        ),
        (
            "collector_disk_scan_rounds_total",
            Kind::Counter,
            "Rounds of du walks over volumes, logs and etc-hosts.",
        ),
        (
            "collector_disk_scan_round_seconds",
            Kind::Gauge,
            "Wall time of the last round, its duty-cycle pauses included.",
        ),
        (
            "collector_disk_scan_walk_seconds",
            Kind::Gauge,
            "Time the last round spent walking (its cost, without the pauses).",
        ),
        (
            "collector_disk_scan_entries",
            Kind::Gauge,
            "Files and directories the last round visited.",
        ),
        (
            "collector_disk_scan_errors_total",
            Kind::Counter,
            "Paths the rounds could not measure (left out of the Summary, as kubelet does).",
        ),
    ];
    for (name, kind, help) in families {
        e.family(name, kind, help);
    }
}

fn collector(e: &mut Exposition, s: &Snapshot, server: &ServerStats) {
    let st = &s.stats;
    // Counters and gauges alike: every figure here is an integer.
    let int = |e: &mut Exposition, name, labels: &[(&str, &str)], v: u64| {
        e.sample(name, "", labels, v as f64, None);
    };
    int(e, "collector_sampler_passes_total", &[], st.passes);
    int(
        e,
        "collector_sampler_failed_passes_total",
        &[],
        st.failed_passes,
    );
    int(e, "collector_cgroups", &[], s.sample.cgroups.len() as u64);
    int(
        e,
        "collector_cgroupfs_parse_errors_total",
        &[],
        st.parse_errors,
    );
    int(
        e,
        "collector_cgroupfs_read_errors_total",
        &[],
        st.read_errors,
    );
    int(
        e,
        "collector_ebpf_map_read_errors_total",
        &[],
        st.probe_read_errors,
    );
    int(e, "collector_ebpf_map_entries", &[], st.ebpf_map_entries);
    if let Some(epoch) = server.epoch.get() {
        let seconds = |ns: u64| ns as f64 / 1e9;
        e.sample(
            "collector_start_time_seconds",
            "",
            &[],
            seconds(epoch.start_unix_nano),
            None,
        );
        if let Some(since) = epoch.ebpf_since_unix_nano {
            e.sample(
                "collector_ebpf_counters_since_seconds",
                "",
                &[],
                seconds(since),
                None,
            );
        }
    }
    let d = st.ebpf_drops;
    for (what, v) in [
        ("runs", d.cgroup_inserts),
        ("histogram_waits", d.runq_histograms),
        ("oom_events", d.oom_events),
        ("lifecycle_events", d.lifecycle_events),
        ("truncated_paths", d.truncated_paths),
        ("network_packets", d.net_inserts),
    ] {
        int(e, "collector_ebpf_dropped_total", &[("what", what)], v);
    }
    int(
        e,
        "collector_ebpf_unattributed_cgroups_total",
        &[],
        st.ebpf_unattributed_cgroups,
    );
    for m in s.maps.iter() {
        let labels = [("object", m.object), ("map", m.name.as_str())];
        if let Some(bytes) = m.kernel_bytes {
            int(e, "collector_ebpf_map_memory_bytes", &labels, bytes);
        }
        for (cpus, n) in [("64", 64), ("128", 128)] {
            let labels = [labels[0], labels[1], ("cpus", cpus)];
            let bytes = m.projected_bytes(n);
            int(
                e,
                "collector_ebpf_map_memory_projected_bytes",
                &labels,
                bytes,
            );
        }
    }
    for (outcome, v) in [("read", st.cgroupfs_reads), ("carried", st.idle_carried)] {
        int(
            e,
            "collector_cgroupfs_reads_total",
            &[("outcome", outcome)],
            v,
        );
    }
    for (why, v) in [
        ("full_pass", st.walks - st.early_walks),
        ("early", st.early_walks),
    ] {
        int(e, "collector_cgroup_walks_total", &[("why", why)], v);
    }
    let subscribers = server.watch_subscribers.load(Ordering::Relaxed);
    int(e, "collector_watch_subscribers", &[], subscribers);
    int(
        e,
        "collector_watch_dropped_subscribers_total",
        &[],
        server.dropped_subscribers(),
    );
    int(
        e,
        "collector_watch_refused_subscribers_total",
        &[],
        server.refused_subscribers.load(Ordering::Relaxed),
    );
    for (listener, c) in [
        ("grpc", &server.grpc_connections),
        ("http", &server.http_connections),
    ] {
        let labels = [("listener", listener)];
        let refused = c.refused.load(Ordering::Relaxed);
        int(e, "collector_refused_connections_total", &labels, refused);
        let errors = c.accept_errors.load(Ordering::Relaxed);
        int(e, "collector_accept_errors_total", &labels, errors);
    }
    for p in &s.probes {
        let up = u64::from(p.is_active());
        int(
            e,
            "collector_probe_up",
            &[("probe", p.name), ("provides", p.provides)],
            up,
        );
    }
    for p in &s.program_stats {
        let labels = [("program", p.name.as_str())];
        int(e, "collector_bpf_program_runs_total", &labels, p.run_count);
        e.sample(
            "collector_bpf_program_run_seconds_total",
            "",
            &labels,
            p.run_time_ns as f64 / 1e9,
            None,
        );
    }
    int(
        e,
        "collector_terminated_cgroups",
        &[],
        s.recent.terminated.len() as u64,
    );
    int(
        e,
        "collector_oom_kills_recent",
        &[],
        s.recent.oom_kills.len() as u64,
    );
    int(
        e,
        "collector_host_read_errors_total",
        &[],
        st.host_read_errors,
    );
    let scan = &s.disk_scan;
    int(e, "collector_disk_scan_rounds_total", &[], scan.rounds);
    for (name, v) in [
        ("collector_disk_scan_round_seconds", scan.last_round_seconds),
        ("collector_disk_scan_walk_seconds", scan.last_walk_seconds),
    ] {
        e.sample(name, "", &[], v, None);
    }
    int(e, "collector_disk_scan_entries", &[], scan.last_entries);
    int(e, "collector_disk_scan_errors_total", &[], scan.errors);
}

/// The eBPF families of one level ("node", "pod" or "container") for one cgroup's sample.
fn ebpf(e: &mut Exposition, level: Level, labels: &[(&str, &str)], c: &CgroupSample) {
    let v = &c.ebpf;
    if let Some(ns) = v.cpu_ns {
        e.sample(level.cpu, "", labels, ns as f64 / 1e9, None);
    }
    if let Some([minor, major]) = v.faults {
        for (kind, n) in [("minor", minor), ("major", major)] {
            let mut l = labels.to_vec();
            l.push(("type", kind));
            e.sample(level.faults, "", &l, n as f64, None);
        }
    }
    if let Some(n) = v.network {
        use crate::probes::net::{RX_BYTES, RX_PACKETS, TX_BYTES, TX_PACKETS};
        for (direction, bytes, packets) in [
            ("receive", n[RX_BYTES], n[RX_PACKETS]),
            ("transmit", n[TX_BYTES], n[TX_PACKETS]),
        ] {
            let mut l = labels.to_vec();
            l.push(("direction", direction));
            e.sample(level.network_bytes, "", &l, bytes as f64, None);
            e.sample(level.network_packets, "", &l, packets as f64, None);
        }
    }
    if let (Some(name), Some(n)) = (level.oom, v.oom_kills) {
        e.sample(name, "", labels, n as f64, None);
    }
    if let Some(h) = &v.runq {
        let (waits, total_ns) = runq::histogram_totals(h);
        for (le, cumulative) in runq_buckets(h) {
            let mut l = labels.to_vec();
            l.push(("le", le));
            e.sample(level.runq, "_bucket", &l, cumulative as f64, None);
        }
        e.sample(level.runq, "_sum", labels, total_ns as f64 / 1e9, None);
        e.sample(level.runq, "_count", labels, waits as f64, None);
    }
}

/// The classic histogram's buckets of a kernel run-queue histogram: each `le` label (seconds)
/// with the cumulative count of waits below it, `+Inf` last (every wait).
pub fn runq_buckets(h: &[u64; RUNQ_VALUES]) -> impl Iterator<Item = (&'static str, u64)> + '_ {
    let mut cumulative = 0u64;
    let mut below = 0; // buckets already summed
    RUNQ_EDGES
        .iter()
        .map(move |(k, le)| {
            let upto = (*k).min(RUNQ_BUCKETS);
            cumulative += h[below..upto].iter().sum::<u64>();
            below = upto;
            (le.as_str(), cumulative)
        })
        .chain(std::iter::once(("+Inf", runq::bucket_total(h))))
}

/// The names of the eBPF families of one level (node, pod or container).
#[derive(Clone, Copy)]
pub struct Level {
    pub cpu: &'static str,
    pub faults: &'static str,
    pub network_bytes: &'static str,
    pub network_packets: &'static str,
    pub oom: Option<&'static str>,
    pub runq: &'static str,
}

pub const NODE: Level = Level {
    cpu: "node_ebpf_cpu_usage_seconds_total",
    faults: "node_ebpf_page_faults_total",
    network_bytes: "node_ebpf_network_bytes_total",
    network_packets: "node_ebpf_network_packets_total",
    oom: None,
    runq: "node_runqueue_wait_seconds",
};
pub const POD: Level = Level {
    cpu: "pod_ebpf_cpu_usage_seconds_total",
    faults: "pod_ebpf_page_faults_total",
    network_bytes: "pod_ebpf_network_bytes_total",
    network_packets: "pod_ebpf_network_packets_total",
    oom: Some("pod_ebpf_oom_kills_total"),
    runq: "pod_runqueue_wait_seconds",
};
pub const CONTAINER: Level = Level {
    cpu: "container_ebpf_cpu_usage_seconds_total",
    faults: "container_ebpf_page_faults_total",
    network_bytes: "container_ebpf_network_bytes_total",
    network_packets: "container_ebpf_network_packets_total",
    oom: Some("container_ebpf_oom_kills_total"),
    runq: "container_runqueue_wait_seconds",
};

pub fn by_id(s: &Snapshot, id: u64) -> Option<&CgroupSample> {
    let cgroups = &s.sample.cgroups;
    cgroups
        .binary_search_by_key(&id, |c| c.id)
        .ok()
        .map(|i| &cgroups[i])
}

pub fn render(
    snapshot: Option<&Snapshot>,
    server: &ServerStats,
    more: Option<&dyn MoreMetrics>,
) -> String {
    let mut e = Exposition::default();
    declare(&mut e);
    if let Some(more) = more {
        more.write(&mut e);
    }
    let Some(s) = snapshot else {
        let subscribers = server.watch_subscribers.load(Ordering::Relaxed);
        e.sample(
            "collector_watch_subscribers",
            "",
            &[],
            subscribers as f64,
            None,
        );
        return e.render();
    };
    collector(&mut e, s, server);
    // The root cgroup is the node.
    if let Some(root) = s.sample.cgroups.iter().find(|c| &*c.path == "/") {
        ebpf(&mut e, NODE, &[], root);
    }
    for pod in &s.pods {
        let (name, namespace) = (pod_name(pod), pod_namespace(pod));
        if let Some(c) = by_id(s, pod.cgroup_id) {
            ebpf(&mut e, POD, &[("pod", name), ("namespace", namespace)], c);
        }
        for container in &pod.containers {
            if let Some(c) = by_id(s, container.cgroup_id) {
                let labels = [
                    ("container", container.name.as_str()),
                    ("pod", name),
                    ("namespace", namespace),
                ];
                ebpf(&mut e, CONTAINER, &labels, c);
            }
        }
    }
    e.render()
}
