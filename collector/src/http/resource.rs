//! `/metrics/resource`: kubelet's resource metrics endpoint, name for name and label for label
//! (pkg/kubelet/metrics/collectors/resource_metrics.go), so metrics-server can scrape us instead
//! of the kubelet. Samples carry the timestamp of the reading they come from, in ms, except
//! `container_start_time_seconds`, which kubelet sends without one (a start hours ago would be
//! a sample Prometheus rejects as too old). The remote-write exporter sends the same families
//! under the same names.

use super::prom::{Exposition, Kind, millis};
use crate::{proto, store::Snapshot};

pub const NODE_CPU: &str = "node_cpu_usage_seconds_total";
pub const NODE_MEMORY: &str = "node_memory_working_set_bytes";
pub const NODE_SWAP: &str = "node_swap_usage_bytes";
pub const CONTAINER_CPU: &str = "container_cpu_usage_seconds_total";
pub const CONTAINER_MEMORY: &str = "container_memory_working_set_bytes";
pub const CONTAINER_SWAP: &str = "container_swap_usage_bytes";
pub const CONTAINER_SWAP_LIMIT: &str = "container_swap_limit_bytes";
pub const CONTAINER_START: &str = "container_start_time_seconds";
pub const POD_CPU: &str = "pod_cpu_usage_seconds_total";
pub const POD_MEMORY: &str = "pod_memory_working_set_bytes";
pub const POD_SWAP: &str = "pod_swap_usage_bytes";
const SCRAPE_ERROR: &str = "resource_scrape_error";

fn declare(e: &mut Exposition) {
    e.family(NODE_CPU, Kind::Counter, "[STABLE] Cumulative cpu time consumed by the node in core-seconds")
        .family(NODE_MEMORY, Kind::Gauge, "[STABLE] Current working set of the node in bytes")
        .family(NODE_SWAP, Kind::Gauge, "[ALPHA] Current swap usage of the node in bytes. Reported only on non-windows systems")
        .family(CONTAINER_CPU, Kind::Counter, "[STABLE] Cumulative cpu time consumed by the container in core-seconds")
        .family(CONTAINER_MEMORY, Kind::Gauge, "[STABLE] Current working set of the container in bytes")
        .family(CONTAINER_SWAP, Kind::Gauge, "[ALPHA] Current amount of the container swap usage in bytes. Reported only on non-windows systems")
        .family(CONTAINER_SWAP_LIMIT, Kind::Gauge, "[ALPHA] Current amount of the container swap limit in bytes. Reported only on non-windows systems")
        .family(CONTAINER_START, Kind::Gauge, "[STABLE] Start time of the container since unix epoch in seconds")
        .family(POD_CPU, Kind::Counter, "[STABLE] Cumulative cpu time consumed by the pod in core-seconds")
        .family(POD_MEMORY, Kind::Gauge, "[STABLE] Current working set of the pod in bytes")
        .family(POD_SWAP, Kind::Gauge, "[ALPHA] Current amount of the pod swap usage in bytes. Reported only on non-windows systems")
        .family(SCRAPE_ERROR, Kind::Gauge, "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise");
}

/// The pod's name label: its name, or its uid while names from the runtime are missing (an
/// empty label would merge every unnamed pod into one series; kubelet always has names).
pub fn pod_name(pod: &proto::PodStats) -> &str {
    match &pod.pod_ref {
        Some(r) if !r.name.is_empty() => &r.name,
        Some(r) => &r.uid,
        None => "",
    }
}

pub fn pod_namespace(pod: &proto::PodStats) -> &str {
    pod.pod_ref.as_ref().map_or("", |r| r.namespace.as_str())
}

/// CPU, working set and swap of one level (node, pod or container), each when present.
fn usage(
    e: &mut Exposition,
    [cpu_name, memory_name, swap_name]: [&'static str; 3],
    labels: &[(&str, &str)],
    cpu: Option<&proto::CpuStats>,
    memory: Option<&proto::MemoryStats>,
    swap: Option<&proto::SwapStats>,
) {
    if let Some(c) = cpu
        && let Some(ns) = c.usage_core_nano_seconds
    {
        e.sample(
            cpu_name,
            "",
            labels,
            ns as f64 / 1e9,
            millis(c.time_unix_nano),
        );
    }
    if let Some(m) = memory
        && let Some(ws) = m.working_set_bytes
    {
        e.sample(memory_name, "", labels, ws as f64, millis(m.time_unix_nano));
    }
    if let Some(s) = swap
        && let Some(bytes) = s.swap_usage_bytes
    {
        e.sample(
            swap_name,
            "",
            labels,
            bytes as f64,
            millis(s.time_unix_nano),
        );
    }
}

/// The body for the latest snapshot; `None` (no sample yet) gives resource_scrape_error 1.
pub fn render(snapshot: Option<&Snapshot>) -> String {
    let mut e = Exposition::default();
    declare(&mut e);
    let Some(s) = snapshot else {
        e.sample(SCRAPE_ERROR, "", &[], 1.0, None);
        return e.render();
    };
    let n = &s.node_stats;
    usage(
        &mut e,
        [NODE_CPU, NODE_MEMORY, NODE_SWAP],
        &[],
        n.cpu.as_ref(),
        n.memory.as_ref(),
        n.swap.as_ref(),
    );
    for pod in &s.pods {
        let (name, namespace) = (pod_name(pod), pod_namespace(pod));
        let pod_labels = [("pod", name), ("namespace", namespace)];
        usage(
            &mut e,
            [POD_CPU, POD_MEMORY, POD_SWAP],
            &pod_labels,
            pod.cpu.as_ref(),
            pod.memory.as_ref(),
            pod.swap.as_ref(),
        );
        for c in &pod.containers {
            let labels = [
                ("container", c.name.as_str()),
                ("pod", name),
                ("namespace", namespace),
            ];
            usage(
                &mut e,
                [CONTAINER_CPU, CONTAINER_MEMORY, CONTAINER_SWAP],
                &labels,
                c.cpu.as_ref(),
                c.memory.as_ref(),
                c.swap.as_ref(),
            );
            // kubelet: swap available + usage, when the limit is known.
            if let Some(s) = &c.swap
                && let Some(available) = s.swap_available_bytes
            {
                let limit = available.saturating_add(s.swap_usage_bytes.unwrap_or(0));
                e.sample(
                    CONTAINER_SWAP_LIMIT,
                    "",
                    &labels,
                    limit as f64,
                    millis(s.time_unix_nano),
                );
            }
            if c.start_time_unix_nano >= 1_000_000_000 {
                let start = c.start_time_unix_nano;
                e.sample(CONTAINER_START, "", &labels, start as f64 / 1e9, None);
            }
        }
    }
    e.sample(SCRAPE_ERROR, "", &[], 0.0, None);
    e.render()
}
