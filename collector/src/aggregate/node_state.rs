//! One node as its collector's Watch stream describes it, reduced to what the cluster view needs:
//! two CPU points and the last working set per node and per container.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use super::{
    pods::{ContainerEntry, Interner, PodEntry, same_or_new},
    points::{CpuTrack, Point},
};
use crate::proto;

#[derive(Debug)]
struct ContainerTrack {
    /// Interned: the same few names on every node.
    name: Arc<str>,
    cpu: CpuTrack,
    working_set: Option<u64>,
}

#[derive(Debug)]
struct PodTrack {
    /// Shared with the published [`PodEntry`] (no copy per publication).
    name: Arc<str>,
    namespace: Arc<str>,
    /// By container name (a restarted container keeps its name, not its id). A Vec: pods have
    /// a few containers, and a map's buckets would cost more than the entries (1,000 nodes x
    /// 110 pods).
    containers: Vec<ContainerTrack>,
}

/// The reduced state of one node, fed message by message.
#[derive(Debug, Default)]
pub struct NodeState {
    pub name: String,
    pub online_cpus: u32,
    cpu: CpuTrack,
    working_set: Option<u64>,
    memory_capacity: Option<u64>,
    /// By uid; the key is the uid the published entries share.
    pods: HashMap<Arc<str>, PodTrack>,
    /// Pods seen in the chunks of a snapshot still being received.
    snapshot_seen: Option<HashSet<Arc<str>>>,
    /// Namespaces and container names, shared across the cluster (none: each its own copy).
    names: Option<Arc<Interner>>,
}

fn cpu_point(cpu: Option<&proto::CpuStats>) -> Option<Point> {
    let cpu = cpu?;
    Some(Point {
        time_unix_nano: cpu.time_unix_nano,
        cpu_core_nano_seconds: cpu.usage_core_nano_seconds?,
    })
}

impl NodeState {
    /// A node whose namespaces and container names are interned in `names`.
    pub fn with_names(names: Arc<Interner>) -> Self {
        Self {
            names: Some(names),
            ..Self::default()
        }
    }

    /// Applies one Watch message (or chunk). Returns true when the message is complete (the
    /// last chunk), i.e. when the state is worth publishing.
    pub fn apply(&mut self, msg: &proto::WatchResponse) -> bool {
        if let Some(node) = &msg.node {
            self.online_cpus = node.online_cpus;
            if self.name.is_empty() {
                self.name = if node.node_name.is_empty() {
                    node.hostname.clone()
                } else {
                    node.node_name.clone()
                };
            }
        }
        if msg.snapshot && self.snapshot_seen.is_none() {
            self.snapshot_seen = Some(HashSet::new());
        }
        if let Some(node) = &msg.node_stats {
            if self.name.is_empty() {
                self.name = node.node_name.clone();
            }
            if let Some(point) = cpu_point(node.cpu.as_ref()) {
                self.cpu.observe(point, node.start_time_unix_nano);
            }
            let memory = node.memory.as_ref();
            self.working_set = memory.and_then(|m| m.working_set_bytes);
            self.memory_capacity = memory.and_then(|m| m.limit_bytes);
        }
        for pod in &msg.pods {
            self.apply_pod(pod);
        }
        for uid in &msg.removed_pod_uids {
            self.pods.remove(uid.as_str());
        }
        if msg.more {
            return false;
        }
        // A complete snapshot replaces what the previous stream said.
        if let Some(seen) = self.snapshot_seen.take() {
            self.pods.retain(|uid, _| seen.contains(uid));
        }
        true
    }

    fn apply_pod(&mut self, pod: &proto::PodStats) {
        let Some(reference) = &pod.pod_ref else {
            return;
        };
        let names = self.names.as_deref();
        let uid = match self.pods.get_key_value(reference.uid.as_str()) {
            Some((uid, _)) => uid.clone(),
            None => Arc::from(reference.uid.as_str()),
        };
        if let Some(seen) = &mut self.snapshot_seen {
            seen.insert(uid.clone());
        }
        let track = self.pods.entry(uid).or_insert_with(|| PodTrack {
            name: Arc::from(""),
            namespace: Arc::from(""),
            containers: Vec::new(),
        });
        same_or_new(&mut track.name, &reference.name, None);
        same_or_new(&mut track.namespace, &reference.namespace, names);
        // The pod message is complete: containers it does not list are gone.
        track
            .containers
            .retain(|t| pod.containers.iter().any(|c| *t.name == *c.name));
        for c in &pod.containers {
            let entry = match track.containers.iter().position(|t| *t.name == *c.name) {
                Some(i) => &mut track.containers[i],
                None => {
                    let name = match names {
                        Some(names) => names.intern(&c.name),
                        None => Arc::from(c.name.as_str()),
                    };
                    track.containers.push(ContainerTrack {
                        name,
                        cpu: CpuTrack::default(),
                        working_set: None,
                    });
                    track.containers.last_mut().expect("just pushed")
                }
            };
            if let Some(point) = cpu_point(c.cpu.as_ref()) {
                entry.cpu.observe(point, c.start_time_unix_nano);
            }
            entry.working_set = c.memory.and_then(|m| m.working_set_bytes);
        }
    }

    /// The node's metrics (staleness and addresses are the cluster's to fill).
    pub fn node_metrics(&self) -> proto::NodeMetrics {
        let rate = self.cpu.rate();
        proto::NodeMetrics {
            name: self.name.clone(),
            timestamp_unix_nano: self
                .cpu
                .last()
                .map(|p| p.time_unix_nano)
                .unwrap_or_default(),
            window_nano_seconds: rate.map(|r| r.window_nano_seconds).unwrap_or_default(),
            cpu_nano_cores: rate.map(|r| r.nano_cores),
            memory_working_set_bytes: self.working_set,
            online_cpus: self.online_cpus,
            memory_capacity_bytes: self.memory_capacity,
            ..Default::default()
        }
    }

    /// Pods whose every container has a rate and a working set, as metrics-server reports them
    /// (a pod with a container that just started or restarted waits for its second point),
    /// sorted by namespace, name and uid.
    pub fn pod_metrics(&self) -> Vec<PodEntry> {
        let mut out: Vec<PodEntry> = self
            .pods
            .iter()
            .filter_map(|(uid, pod)| one_pod(uid, pod))
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid)));
        out
    }
}

fn one_pod(uid: &Arc<str>, pod: &PodTrack) -> Option<PodEntry> {
    if pod.containers.is_empty() {
        return None;
    }
    let mut containers = Vec::with_capacity(pod.containers.len());
    let mut latest = None::<super::points::Rate>;
    for c in &pod.containers {
        let rate = c.cpu.rate()?;
        containers.push(ContainerEntry {
            name: c.name.clone(),
            cpu_nano_cores: rate.nano_cores,
            memory_working_set_bytes: c.working_set?,
        });
        if latest.is_none_or(|l| rate.time_unix_nano > l.time_unix_nano) {
            latest = Some(rate);
        }
    }
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    let latest = latest?;
    Some(PodEntry {
        uid: uid.clone(),
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        timestamp_unix_nano: latest.time_unix_nano,
        window_nano_seconds: latest.window_nano_seconds,
        containers: containers.into_boxed_slice(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn cpu(t: u64, ns: u64) -> Option<proto::CpuStats> {
        Some(proto::CpuStats {
            time_unix_nano: t,
            usage_core_nano_seconds: Some(ns),
            ..Default::default()
        })
    }

    fn pod(uid: &str, containers: &[(&str, u64, u64, u64)]) -> proto::PodStats {
        proto::PodStats {
            pod_ref: Some(proto::PodReference {
                name: format!("pod-{uid}"),
                namespace: "default".into(),
                uid: uid.into(),
            }),
            containers: containers
                .iter()
                .map(|&(name, start, t, ns)| proto::ContainerStats {
                    name: name.into(),
                    start_time_unix_nano: start,
                    cpu: cpu(t, ns),
                    memory: Some(proto::MemoryStats {
                        working_set_bytes: Some(1 << 20),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn message(
        snapshot: bool,
        t: u64,
        node_ns: u64,
        pods: Vec<proto::PodStats>,
    ) -> proto::WatchResponse {
        proto::WatchResponse {
            snapshot,
            node: snapshot.then(|| proto::NodeInfo {
                node_name: "n1".into(),
                hostname: "h".into(),
                online_cpus: 4,
                ..Default::default()
            }),
            node_stats: Some(proto::NodeStats {
                node_name: "n1".into(),
                cpu: cpu(t, node_ns),
                ..Default::default()
            }),
            pods,
            ..Default::default()
        }
    }

    #[test]
    fn node_and_pods_get_rates_after_two_points() {
        let mut n = NodeState::default();
        assert!(n.apply(&message(
            true,
            10 * S,
            100 * S,
            vec![pod("a", &[("c", 1, 10 * S, S)])]
        )));
        assert_eq!(n.name, "n1");
        assert_eq!(n.node_metrics().cpu_nano_cores, None);
        assert!(n.pod_metrics().is_empty(), "no pod without a rate");
        n.apply(&message(
            false,
            20 * S,
            120 * S,
            vec![pod("a", &[("c", 1, 20 * S, 6 * S)])],
        ));
        let node = n.node_metrics();
        assert_eq!(node.cpu_nano_cores, Some(2 * S));
        assert_eq!(node.window_nano_seconds, 10 * S);
        let pods = n.pod_metrics();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].containers[0].cpu_nano_cores, S / 2);
        assert_eq!(pods[0].to_proto(&n.name).node, "n1");
    }

    #[test]
    fn a_restarted_container_hides_its_pod_until_it_has_two_points() {
        let mut n = NodeState::default();
        n.apply(&message(
            true,
            10 * S,
            0,
            vec![pod("a", &[("c", 1, 10 * S, 50 * S)])],
        ));
        n.apply(&message(
            false,
            20 * S,
            0,
            vec![pod("a", &[("c", 1, 20 * S, 55 * S)])],
        ));
        assert_eq!(n.pod_metrics().len(), 1);
        // Restarted: new start time, counter from zero. Never a negative or huge rate.
        n.apply(&message(
            false,
            30 * S,
            0,
            vec![pod("a", &[("c", 2, 30 * S, S)])],
        ));
        assert!(n.pod_metrics().is_empty());
        n.apply(&message(
            false,
            40 * S,
            0,
            vec![pod("a", &[("c", 2, 40 * S, 3 * S)])],
        ));
        assert_eq!(n.pod_metrics()[0].containers[0].cpu_nano_cores, S / 5);
    }

    #[test]
    fn a_chunked_snapshot_replaces_pods_only_when_complete() {
        let mut n = NodeState::default();
        n.apply(&message(true, S, 0, vec![pod("a", &[]), pod("b", &[])]));
        assert_eq!(n.pods.len(), 2);
        // A reconnect: new snapshot in two chunks, "b" is gone.
        let mut first = message(true, 2 * S, 0, vec![pod("a", &[])]);
        first.more = true;
        assert!(!n.apply(&first));
        assert_eq!(n.pods.len(), 2, "not replaced mid-snapshot");
        let second = proto::WatchResponse {
            snapshot: true,
            pods: vec![pod("c", &[])],
            ..Default::default()
        };
        assert!(n.apply(&second));
        let mut uids: Vec<String> = n.pods.keys().map(|u| u.to_string()).collect();
        uids.sort();
        assert_eq!(uids, ["a", "c"]);
        // Updates remove by uid.
        n.apply(&proto::WatchResponse {
            removed_pod_uids: vec!["a".into()],
            ..Default::default()
        });
        assert_eq!(n.pods.len(), 1);
    }
}
