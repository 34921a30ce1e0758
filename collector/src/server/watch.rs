//! One Watch subscriber: a full snapshot, then per-interval updates of what changed.
//!
//! Each subscriber has its own task and a bounded buffer. If the client does not keep up, the
//! buffer fills and the subscriber is dropped with RESOURCE_EXHAUSTED; the sampler and the other
//! subscribers never wait for it.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tonic::Status;

use super::{ServerStats, convert};
use crate::{
    proto,
    rate::{Reading, per_second},
    sampler::CgroupSample,
    store::{Snapshot, Subscription},
};

fn pod_uid(p: &proto::PodStats) -> String {
    p.pod_ref
        .as_ref()
        .map(|r| r.uid.clone())
        .unwrap_or_default()
}

/// Messages a subscriber may have queued before it counts as too slow.
pub const SUBSCRIBER_BUFFER: usize = 16;

pub type WatchSender = mpsc::Sender<Result<proto::WatchResponse, Status>>;

/// Cumulative counters last sent for a cgroup, to compute rates over this subscriber's interval.
#[derive(Clone, Copy, Default)]
struct Sent {
    cgroupfs_ns: Option<Reading>,
    ebpf_ns: Option<Reading>,
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client went away or the collector is stopping.
    Closed,
    /// Dropped for falling behind.
    TooSlow,
}

/// What every message of a subscription may need besides the snapshot.
pub struct Context {
    pub node: Arc<proto::NodeInfo>,
    pub server_stats: Arc<ServerStats>,
}

pub async fn run(mut sub: Subscription, interval: Duration, ctx: Context, tx: WatchSender) -> End {
    let Some(first) = wait_for_snapshot(&mut sub).await else {
        return End::Closed;
    };
    let mut state = SubscriberState::default();
    let stats = |snap: &Snapshot| {
        Some(convert::collector_stats(
            &snap.stats,
            &snap.program_stats,
            &ctx.server_stats,
        ))
    };
    let mut snapshot = state.snapshot(&first, &ctx.node);
    snapshot.collector = stats(&first);
    state.pods_snapshot(&first, &mut snapshot);
    if let Err(end) = send(&tx, snapshot) {
        return end;
    }
    // A sample that lands a little early still counts as this interval's.
    let slack = interval / 4;
    loop {
        tokio::select! {
            changed = sub.snapshots.changed() => if changed.is_err() { return End::Closed },
            _ = tx.closed() => return End::Closed,
        }
        let Some(snap) = sub.snapshots.borrow_and_update().clone() else {
            continue;
        };
        if snap
            .sample
            .taken_at
            .saturating_duration_since(state.last_at)
            + slack
            < interval
        {
            continue;
        }
        let mut update = state.update(&snap);
        update.collector = stats(&snap);
        state.events_since(&snap, &mut update);
        state.pods_update(&snap, &mut update);
        if let Err(end) = send(&tx, update) {
            return end;
        }
    }
}

async fn wait_for_snapshot(sub: &mut Subscription) -> Option<Arc<Snapshot>> {
    loop {
        if let Some(s) = sub.snapshots.borrow_and_update().clone() {
            return Some(s);
        }
        sub.snapshots.changed().await.ok()?;
    }
}

/// Queues a message unless the client is too slow; `Err` when the stream must end.
/// One slot is kept free so a dropped subscriber still learns why.
fn send(tx: &WatchSender, msg: proto::WatchResponse) -> Result<(), End> {
    if tx.capacity() <= 1 {
        let _ = tx.try_send(Err(Status::resource_exhausted(format!(
            "subscriber fell {SUBSCRIBER_BUFFER} messages behind and was dropped; \
             resubscribe for a fresh snapshot"
        ))));
        tracing::info!("dropped a slow Watch subscriber");
        return Err(End::TooSlow);
    }
    tx.try_send(Ok(msg)).map_err(|_| End::Closed)
}

struct SubscriberState {
    sequence: u64,
    /// `seq` of the last snapshot sent: removals and OOM kills after it are still to send.
    last_seq: u64,
    last_at: Instant,
    sent: HashMap<u64, (proto::CgroupStats, Sent)>,
    probes: Vec<proto::ProbeStatus>,
    /// Pods as last sent, by uid.
    pods: HashMap<String, proto::PodStats>,
}

impl Default for SubscriberState {
    fn default() -> Self {
        Self {
            sequence: 0,
            last_seq: 0,
            last_at: Instant::now(),
            sent: HashMap::new(),
            probes: Vec::new(),
            pods: HashMap::new(),
        }
    }
}

impl SubscriberState {
    /// Node and every pod. Pod and node rates are over the collector's last two samples.
    fn pods_snapshot(&mut self, snap: &Snapshot, msg: &mut proto::WatchResponse) {
        msg.node_stats = Some(snap.node_stats.clone());
        self.pods = snap.pods.iter().map(|p| (pod_uid(p), p.clone())).collect();
        msg.pods = snap.pods.clone();
    }

    /// Node again, pods that changed (complete), and uids of pods that went away.
    fn pods_update(&mut self, snap: &Snapshot, msg: &mut proto::WatchResponse) {
        msg.node_stats = Some(snap.node_stats.clone());
        let mut next = HashMap::with_capacity(snap.pods.len());
        for pod in &snap.pods {
            let uid = pod_uid(pod);
            if self.pods.get(&uid) != Some(pod) {
                msg.pods.push(pod.clone());
            }
            next.insert(uid, pod.clone());
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

    fn snapshot(&mut self, snap: &Snapshot, node: &proto::NodeInfo) -> proto::WatchResponse {
        let mut cgroups = Vec::with_capacity(snap.sample.cgroups.len());
        for (c, rates) in snap.sample.cgroups.iter().zip(&snap.rates) {
            let stats = convert::cgroup_stats(c, *rates);
            self.sent
                .insert(c.id, (stats.clone(), sent_counters(c, &stats, snap)));
            cgroups.push(stats);
        }
        self.probes = snap.probes.iter().map(convert::probe_status).collect();
        self.last_at = snap.sample.taken_at;
        self.last_seq = snap.seq;
        proto::WatchResponse {
            sequence: self.next_sequence(),
            snapshot: true,
            timestamp_unix_nano: convert::unix_nanos(snap.sample.wall),
            cgroups,
            removed_cgroup_ids: Vec::new(),
            probes: self.probes.clone(),
            node: Some(node.clone()),
            collector: None,
            ..Default::default()
        }
    }

    fn update(&mut self, snap: &Snapshot) -> proto::WatchResponse {
        let mut changed = Vec::new();
        let mut next = HashMap::with_capacity(snap.sample.cgroups.len());
        for (c, rates) in snap.sample.cgroups.iter().zip(&snap.rates) {
            let previous = self.sent.get(&c.id);
            let prev_counters = previous.map(|(_, s)| *s).unwrap_or_default();
            // CPU rates below are recomputed over this subscriber's interval; the rest (fault
            // rates) are over the collector's last two samples.
            let mut stats = convert::cgroup_stats(c, *rates);
            let mut counters = sent_counters(c, &stats, snap);
            // Rates over this subscriber's own interval. A cgroupfs reading carried forward
            // since the last message keeps the rate sent with it (and its baseline).
            if let (Some(fs), Some(cur)) = (stats.cgroupfs_cpu.as_mut(), counters.cgroupfs_ns) {
                let carried = prev_counters.cgroupfs_ns.is_some_and(|p| p.at == cur.at);
                fs.usage_nano_cores = if carried {
                    previous.and_then(|(old, _)| old.cgroupfs_cpu?.usage_nano_cores)
                } else {
                    per_second(prev_counters.cgroupfs_ns, cur)
                };
                if carried {
                    counters.cgroupfs_ns = prev_counters.cgroupfs_ns;
                }
            }
            if let (Some(e), Some(cur)) = (stats.ebpf_cpu.as_mut(), counters.ebpf_ns) {
                e.usage_nano_cores = per_second(prev_counters.ebpf_ns, cur);
            }
            if previous.is_none_or(|(old, _)| *old != stats) {
                changed.push(stats.clone());
            }
            next.insert(c.id, (stats, counters));
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
            timestamp_unix_nano: convert::unix_nanos(snap.sample.wall),
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
    fn events_since(&mut self, snap: &Snapshot, update: &mut proto::WatchResponse) {
        // Both logs are in seq order: skip what was sent without scanning it.
        let last = self.last_seq;
        let recent = &snap.recent;
        let from = recent.terminated.partition_point(|(seq, _)| *seq <= last);
        update.terminated = recent
            .terminated
            .range(from..)
            .map(|(_, t)| t.clone())
            .collect();
        let from = recent.oom_kills.partition_point(|(seq, _)| *seq <= last);
        update.oom_kills = recent
            .oom_kills
            .range(from..)
            .map(|(_, k)| k.clone())
            .collect();
        self.last_seq = snap.seq;
    }

    fn next_sequence(&mut self) -> u64 {
        let s = self.sequence;
        self.sequence += 1;
        s
    }
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
