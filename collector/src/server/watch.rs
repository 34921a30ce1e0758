//! What a Watch subscription is sent: a full snapshot, then per-interval updates of what
//! changed. The messages of one shape are computed once for all its subscribers
//! ([`super::fanout`]); each subscriber has a bounded buffer, and one that does not keep up is
//! dropped with RESOURCE_EXHAUSTED: the sampler and the other subscribers never wait for it.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::filter::Filter;
use crate::{
    convert, proto,
    rate::{Reading, per_second},
    sampler::CgroupSample,
    store::{Record, Snapshot},
    unix_time::unix_nanos,
};

fn pod_uid(p: &proto::PodStats) -> String {
    p.pod_ref
        .as_ref()
        .map(|r| r.uid.clone())
        .unwrap_or_default()
}

/// Messages a subscriber may have queued before it counts as too slow.
pub const SUBSCRIBER_BUFFER: usize = 16;

/// What a subscriber asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub interval: Duration,
    pub filter: Filter,
    pub histograms: bool,
    pub only_cpu_and_memory: bool,
    pub max_message_bytes: usize,
}

/// Cumulative counters last sent for a cgroup, to compute rates over this subscriber's interval.
#[derive(Clone, Copy, Default)]
struct Sent {
    cgroupfs_ns: Option<Reading>,
    ebpf_ns: Option<Reading>,
}

/// What a subscriber remembers of a cgroup it sent: a hash of the shared record, the rates it
/// computed over its own interval, and their baselines. No copy of the record itself, so 100
/// subscribers of 1,000 cgroups keep kilobytes each, not megabytes.
#[derive(Clone, Copy, Default)]
struct SentCgroup {
    hash: u64,
    cgroupfs_nano_cores: Option<u64>,
    ebpf_nano_cores: Option<u64>,
    counters: Sent,
}

/// A subscription's view of what it last sent: the baseline of its next update.
pub(super) struct SubscriberState {
    opts: Options,
    sequence: u64,
    /// `seq` of the last snapshot sent: removals and OOM kills after it are still to send.
    last_seq: u64,
    last_at: Instant,
    sent: HashMap<u64, SentCgroup>,
    probes: Vec<proto::ProbeStatus>,
    /// Pods as last sent, by uid.
    pods: HashMap<String, proto::PodStats>,
}

impl SubscriberState {
    pub(super) fn new(opts: Options) -> Self {
        Self {
            opts,
            sequence: 0,
            last_seq: 0,
            last_at: Instant::now(),
            sent: HashMap::new(),
            probes: Vec::new(),
            pods: HashMap::new(),
        }
    }

    /// The node as this subscriber wants it.
    fn node_stats(&self, snap: &Snapshot) -> proto::NodeStats {
        if self.opts.only_cpu_and_memory {
            slim::node(&snap.node_stats)
        } else {
            snap.node_stats.clone()
        }
    }

    /// The pods that pass this subscriber's filter, as it wants them.
    fn pods<'a>(&'a self, snap: &'a Snapshot) -> impl Iterator<Item = proto::PodStats> + 'a {
        snap.pods
            .iter()
            .filter(|p| self.opts.filter.pod_passes(p))
            .map(|p| {
                if self.opts.only_cpu_and_memory {
                    slim::pod(p)
                } else {
                    p.clone()
                }
            })
    }

    /// Node and every pod. Pod and node rates are over the collector's last two samples.
    pub(super) fn pods_snapshot(&mut self, snap: &Snapshot, msg: &mut proto::WatchResponse) {
        msg.node_stats = Some(self.node_stats(snap));
        msg.pods = self.pods(snap).collect();
        self.pods = msg.pods.iter().map(|p| (pod_uid(p), p.clone())).collect();
    }

    /// Node again, pods that changed (complete), and uids of pods that went away.
    pub(super) fn pods_update(&mut self, snap: &Snapshot, msg: &mut proto::WatchResponse) {
        msg.node_stats = Some(self.node_stats(snap));
        let mut next = HashMap::with_capacity(self.pods.len());
        for pod in self.pods(snap) {
            let uid = pod_uid(&pod);
            if self.pods.get(&uid) != Some(&pod) {
                msg.pods.push(pod.clone());
            }
            next.insert(uid, pod);
        }
        msg.removed_pod_uids = self
            .pods
            .keys()
            .filter(|uid| !next.contains_key(*uid))
            .cloned()
            .collect();
        msg.removed_pod_uids.sort_unstable();
        self.pods = next;
    }

    pub(super) fn snapshot(
        &mut self,
        snap: &Snapshot,
        node: &proto::NodeInfo,
    ) -> proto::WatchResponse {
        let mut cgroups = Vec::new();
        for (c, record) in wanted_cgroups(&self.opts, snap) {
            let stats = &record.stats;
            self.sent.insert(
                c.id,
                SentCgroup {
                    hash: record.hash,
                    cgroupfs_nano_cores: stats.cgroupfs_cpu.and_then(|f| f.usage_nano_cores),
                    ebpf_nano_cores: stats.ebpf_cpu.and_then(|e| e.usage_nano_cores),
                    counters: sent_counters(c, stats, snap),
                },
            );
            cgroups.push(stats.clone());
        }
        self.probes = snap.probes.iter().map(convert::probe_status).collect();
        self.last_at = snap.sample.taken_at;
        self.last_seq = snap.seq;
        proto::WatchResponse {
            sequence: self.next_sequence(),
            snapshot: true,
            timestamp_unix_nano: unix_nanos(snap.sample.wall),
            cgroups,
            removed_cgroup_ids: Vec::new(),
            probes: self.probes.clone(),
            node: Some(node.clone()),
            collector: None,
            ..Default::default()
        }
    }

    pub(super) fn update(&mut self, snap: &Snapshot) -> proto::WatchResponse {
        let mut changed = Vec::new();
        let mut next = HashMap::with_capacity(self.sent.len());
        for (c, record) in wanted_cgroups(&self.opts, snap) {
            let previous = self.sent.get(&c.id).copied();
            let prev = previous.unwrap_or_default();
            let mut counters = sent_counters(c, &record.stats, snap);
            // CPU rates over this subscriber's own interval (the rest, e.g. fault rates, are
            // over the collector's last two samples). A cgroupfs reading carried forward since
            // the last message keeps the rate sent with it, and its baseline.
            let mut fs_rate = None;
            if let Some(cur) = counters.cgroupfs_ns {
                let carried = prev.counters.cgroupfs_ns.is_some_and(|p| p.at == cur.at);
                if carried {
                    fs_rate = prev.cgroupfs_nano_cores;
                    counters.cgroupfs_ns = prev.counters.cgroupfs_ns;
                } else {
                    fs_rate = per_second(prev.counters.cgroupfs_ns, cur);
                }
            }
            let ebpf_rate = counters
                .ebpf_ns
                .and_then(|cur| per_second(prev.counters.ebpf_ns, cur));
            let sent = SentCgroup {
                hash: record.hash,
                cgroupfs_nano_cores: fs_rate,
                ebpf_nano_cores: ebpf_rate,
                counters,
            };
            let same = previous.is_some_and(|p| {
                (p.hash, p.cgroupfs_nano_cores, p.ebpf_nano_cores)
                    == (sent.hash, fs_rate, ebpf_rate)
            });
            if !same {
                let mut stats = record.stats.clone();
                if let Some(fs) = stats.cgroupfs_cpu.as_mut() {
                    fs.usage_nano_cores = fs_rate;
                }
                if let Some(e) = stats.ebpf_cpu.as_mut() {
                    e.usage_nano_cores = ebpf_rate;
                }
                changed.push(stats);
            }
            next.insert(c.id, sent);
        }
        let mut removed: Vec<u64> = self
            .sent
            .keys()
            .filter(|id| !next.contains_key(id))
            .copied()
            .collect();
        removed.sort_unstable();
        self.sent = next;

        let probes: Vec<_> = snap.probes.iter().map(convert::probe_status).collect();
        let probes = if probes != self.probes {
            self.probes = probes.clone();
            probes
        } else {
            Vec::new()
        };
        self.last_at = snap.sample.taken_at;
        proto::WatchResponse {
            sequence: self.next_sequence(),
            snapshot: false,
            timestamp_unix_nano: unix_nanos(snap.sample.wall),
            cgroups: changed,
            removed_cgroup_ids: removed,
            probes,
            node: None,
            collector: None,
            ..Default::default()
        }
    }

    /// Removals and OOM kills of every snapshot since the last message (none are lost when this
    /// subscriber's interval spans several samples).
    pub(super) fn events_since(&mut self, snap: &Snapshot, update: &mut proto::WatchResponse) {
        // Both logs are in seq order: skip what was sent without scanning it.
        let last = self.last_seq;
        let recent = &snap.recent;
        let filter = self.opts.filter.cgroups(&snap.pods);
        let from = recent.terminated.partition_point(|(seq, _)| *seq <= last);
        update.terminated = recent
            .terminated
            .range(from..)
            .filter(|(_, t)| filter.passes(&t.path))
            .map(|(_, t)| t.clone())
            .collect();
        let from = recent.oom_kills.partition_point(|(seq, _)| *seq <= last);
        update.oom_kills = recent
            .oom_kills
            .range(from..)
            .filter(|(_, k)| filter.passes(&k.cgroup_path))
            .map(|(_, k)| k.clone())
            .collect();
        self.last_seq = snap.seq;
    }

    /// When the sample of the last message was taken.
    pub(super) fn last_at(&self) -> Instant {
        self.last_at
    }

    fn next_sequence(&mut self) -> u64 {
        let s = self.sequence;
        self.sequence += 1;
        s
    }
}

/// The cgroups a subscriber gets records of, with their shared records. With
/// only_cpu_and_memory there are none, and the records are never built for it.
fn wanted_cgroups<'a>(
    opts: &'a Options,
    snap: &'a Snapshot,
) -> impl Iterator<Item = (&'a CgroupSample, &'a Record)> + 'a {
    let records: &[Record] = if opts.only_cpu_and_memory {
        &[]
    } else {
        snap.records(opts.histograms)
    };
    let filter = opts.filter.cgroups(&snap.pods);
    snap.sample
        .cgroups
        .iter()
        .zip(records)
        .filter(move |(c, _)| filter.passes(&c.path))
}

fn sent_counters(c: &CgroupSample, stats: &proto::CgroupStats, snap: &Snapshot) -> Sent {
    let at = snap.sample.taken_at;
    Sent {
        cgroupfs_ns: stats
            .cgroupfs_cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map(|value| Reading {
                value,
                at: c.read_at,
            }),
        ebpf_ns: stats.ebpf_cpu.map(|e| Reading {
            value: e.on_cpu_nano_seconds,
            at,
        }),
    }
}

/// kubelet's only_cpu_and_memory: the cpu and memory blocks and the identity; the node keeps
/// its swap and its system containers (cpu, memory, swap), as kubelet's does.
mod slim {
    use crate::proto;

    pub fn node(n: &proto::NodeStats) -> proto::NodeStats {
        proto::NodeStats {
            node_name: n.node_name.clone(),
            start_time_unix_nano: n.start_time_unix_nano,
            cpu: n.cpu,
            memory: n.memory,
            swap: n.swap,
            system_containers: n
                .system_containers
                .iter()
                .map(|c| proto::ContainerStats {
                    swap: c.swap,
                    ..container(c)
                })
                .collect(),
            ..Default::default()
        }
    }

    pub fn pod(p: &proto::PodStats) -> proto::PodStats {
        proto::PodStats {
            pod_ref: p.pod_ref.clone(),
            start_time_unix_nano: p.start_time_unix_nano,
            qos_class: p.qos_class.clone(),
            containers: p.containers.iter().map(container).collect(),
            cpu: p.cpu,
            memory: p.memory,
            cgroup_id: p.cgroup_id,
            cgroup_path: p.cgroup_path.clone(),
            ..Default::default()
        }
    }

    fn container(c: &proto::ContainerStats) -> proto::ContainerStats {
        proto::ContainerStats {
            name: c.name.clone(),
            start_time_unix_nano: c.start_time_unix_nano,
            cpu: c.cpu,
            memory: c.memory,
            container_id: c.container_id.clone(),
            runtime: c.runtime.clone(),
            cgroup_id: c.cgroup_id,
            cgroup_path: c.cgroup_path.clone(),
            ..Default::default()
        }
    }
}
