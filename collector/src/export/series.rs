//! What the exporters send, taken from the store's snapshots: every series of the node, each pod
//! and each container, each point stamped with the time of what it measures.
//!
//! - A cgroupfs reading (CPU, working set, swap, start time) is sent once, stamped with the time
//!   it was read: between full cgroupfs passes a snapshot repeats the last reading with its old
//!   time, and a repeat is never sent again.
//! - What every pass measures anew (the probes' counters and histograms, the node's swap from
//!   /proc/meminfo) is sent once per export interval, stamped with its pass.
//! - A series that leaves the snapshot (its cgroup was removed, or its labels changed when the
//!   runtime named it) gets one stale point after its last one, as a scrape would give it.
//!
//! Points stay in the order they were taken, so each series' timestamps strictly increase
//! (compared in ms, the unit of remote-write).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    http::{own::by_id, resource},
    probes::{RUNQ_VALUES, net},
    proto,
    sampler::EbpfValues,
    store::Snapshot,
    unix_time::unix_nanos,
};

/// Whose series: the node, a pod or a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Node,
    Pod,
    Container,
}

/// The identity a series is labelled with. Empty strings where a level has no such name (the
/// node has no pod); a pod without a name from the runtime is named by its uid, as on
/// `/metrics/resource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    pub level: Level,
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub container_id: String,
}

impl Entity {
    fn node() -> Self {
        Self {
            level: Level::Node,
            namespace: String::new(),
            pod: String::new(),
            pod_uid: String::new(),
            container: String::new(),
            container_id: String::new(),
        }
    }

    fn matches(&self, level: Level, pod: &proto::PodStats, container: &str, id: &str) -> bool {
        self.level == level
            && self.pod == resource::pod_name(pod)
            && self.namespace == resource::pod_namespace(pod)
            && self.container == container
            && self.container_id == id
    }

    fn of(level: Level, pod: &proto::PodStats, container: &str, id: &str) -> Self {
        Self {
            level,
            namespace: resource::pod_namespace(pod).to_owned(),
            pod: resource::pod_name(pod).to_owned(),
            pod_uid: pod
                .pod_ref
                .as_ref()
                .map_or_else(String::new, |r| r.uid.clone()),
            container: container.to_owned(),
            container_id: id.to_owned(),
        }
    }
}

/// What a series measures; each protocol names it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Cumulative CPU time (cgroupfs `usage_usec`, kubelet's usageCoreNanoSeconds), seconds.
    Cpu,
    /// Working set (kubelet's formula), bytes.
    WorkingSet,
    /// Swap in use, bytes (the node's from /proc/meminfo).
    Swap,
    /// The container's start time, Unix seconds.
    StartTime,
    /// On-CPU time seen by the sched_switch probe, seconds.
    EbpfCpu,
    EbpfMinorFaults,
    EbpfMajorFaults,
    EbpfOomKills,
    /// The run-queue wait histogram (kernel log2 buckets of ns).
    RunqWait,
    /// L3 bytes and packets of the cgroup's sockets seen by the cgroup_skb probe.
    EbpfRxBytes,
    EbpfTxBytes,
    EbpfRxPackets,
    EbpfTxPackets,
}

/// How many [`Metric`]s there are (the length of per-entity state).
const METRICS: usize = 13;

impl Metric {
    fn index(self) -> usize {
        self as usize
    }

    const ALL: [Metric; METRICS] = [
        Self::Cpu,
        Self::WorkingSet,
        Self::Swap,
        Self::StartTime,
        Self::EbpfCpu,
        Self::EbpfMinorFaults,
        Self::EbpfMajorFaults,
        Self::EbpfOomKills,
        Self::RunqWait,
        Self::EbpfRxBytes,
        Self::EbpfTxBytes,
        Self::EbpfRxPackets,
        Self::EbpfTxPackets,
    ];

    /// Whether every pass measures it anew (sent once per interval) rather than a cgroupfs
    /// reading (sent once per reading).
    fn per_pass(self, level: Level) -> bool {
        match self {
            Self::Swap => level == Level::Node,
            metric => metric.counted_by_probes(),
        }
    }

    /// What the probes count (since they attached), as opposed to a cgroupfs reading.
    fn counted_by_probes(self) -> bool {
        !matches!(
            self,
            Self::Cpu | Self::WorkingSet | Self::Swap | Self::StartTime
        )
    }

    /// The network direction a series counts (its `direction` label), for the net metrics.
    pub fn direction(self) -> Option<&'static str> {
        match self {
            Self::EbpfRxBytes | Self::EbpfRxPackets => Some("receive"),
            Self::EbpfTxBytes | Self::EbpfTxPackets => Some("transmit"),
            _ => None,
        }
    }

    /// Counters (cumulative sums) as opposed to gauges; the histogram is cumulative too.
    pub fn is_counter(self) -> bool {
        self == Self::Cpu || (self.counted_by_probes() && self != Self::RunqWait)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    /// Cumulative kernel histogram: log2 buckets of ns, then total ns, then count.
    Runq(Arc<[u64; RUNQ_VALUES]>),
    /// The series ended: Prometheus' stale marker, OTLP's "no recorded value".
    Stale,
}

/// One point of a series.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// When the value was measured, Unix ns.
    pub time_ns: u64,
    pub value: Value,
}

/// The points of one series since the last batch, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub entity: Arc<Entity>,
    pub metric: Metric,
    /// Since when a counter counts (container start, node boot, probes attached), Unix ns;
    /// 0 when unknown.
    pub start_ns: u64,
    pub points: Vec<Point>,
}

/// Everything to send in one round, grouped by entity (consecutive series share it).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    pub series: Vec<Series>,
}

impl Batch {
    pub fn points(&self) -> usize {
        self.series.iter().map(|s| s.points.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// What is remembered of a node, pod or container between snapshots.
struct Tracked {
    entity: Arc<Entity>,
    /// Generation of the last snapshot that had it.
    seen: u64,
    /// Per metric, the ms timestamp of the last point taken (None: never sent).
    last_ms: [Option<u64>; METRICS],
    /// Per metric, where its pending points are in `Tracker::pending` (this round).
    pending: [Option<usize>; METRICS],
}

impl Tracked {
    fn new(entity: Entity) -> Self {
        Self {
            entity: Arc::new(entity),
            seen: 0,
            last_ms: [None; METRICS],
            pending: [None; METRICS],
        }
    }
}

/// Key of the node's state (no cgroup has inode 0).
const NODE_KEY: u64 = 0;

/// Turns successive snapshots into batches of new points and stale markers.
pub struct Tracker {
    /// Pace of the per-pass series.
    interval: Duration,
    /// When the probes attached: their counters count from then.
    probes_since_ns: u64,
    generation: u64,
    /// By cgroup id ([`NODE_KEY`] for the node).
    tracked: HashMap<u64, Tracked>,
    pending: Vec<Series>,
    last_seq: Option<u64>,
    /// Snapshots the exporter never saw (it fell a whole pass behind).
    pub missed_snapshots: u64,
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

impl Tracker {
    pub fn new(interval: Duration, probes_since: SystemTime) -> Self {
        Self {
            interval,
            probes_since_ns: unix_nanos(probes_since),
            generation: 0,
            tracked: HashMap::new(),
            pending: Vec::new(),
            last_seq: None,
            missed_snapshots: 0,
        }
    }

    /// Takes what is new in `snapshot`. Call it for every snapshot, oldest first.
    pub fn observe(&mut self, s: &Snapshot) {
        if let Some(last) = self.last_seq {
            if s.seq <= last {
                return;
            }
            self.missed_snapshots += s.seq - last - 1;
        }
        self.last_seq = Some(s.seq);
        self.generation += 1;
        let pass_ns = unix_nanos(s.sample.wall);
        let n = &s.node_stats;
        let root = s.sample.cgroups.iter().find(|c| &*c.path == "/");
        let node = Seen {
            key: NODE_KEY,
            start_ns: n.start_time_unix_nano,
            pass_ns,
            cpu: n.cpu.as_ref(),
            memory: n.memory.as_ref(),
            swap: n.swap.as_ref(),
            container_start_ns: None,
            ebpf: root.map(|c| &c.ebpf),
        };
        self.entity(&node, Entity::node, |e| e.level == Level::Node);
        for pod in &s.pods {
            let seen = Seen {
                key: pod.cgroup_id,
                start_ns: pod.start_time_unix_nano,
                pass_ns,
                cpu: pod.cpu.as_ref(),
                memory: pod.memory.as_ref(),
                swap: pod.swap.as_ref(),
                container_start_ns: None,
                ebpf: by_id(s, pod.cgroup_id).map(|c| &c.ebpf),
            };
            self.entity(
                &seen,
                || Entity::of(Level::Pod, pod, "", ""),
                |e| e.matches(Level::Pod, pod, "", ""),
            );
            for c in &pod.containers {
                let seen = Seen {
                    key: c.cgroup_id,
                    start_ns: c.start_time_unix_nano,
                    pass_ns,
                    cpu: c.cpu.as_ref(),
                    memory: c.memory.as_ref(),
                    swap: c.swap.as_ref(),
                    container_start_ns: (c.start_time_unix_nano > 0)
                        .then_some(c.start_time_unix_nano),
                    ebpf: by_id(s, c.cgroup_id).map(|c| &c.ebpf),
                };
                let (name, id) = (c.name.as_str(), c.container_id.as_str());
                self.entity(
                    &seen,
                    || Entity::of(Level::Container, pod, name, id),
                    |e| e.matches(Level::Container, pod, name, id),
                );
            }
        }
        // Whatever this snapshot no longer has ends now.
        let generation = self.generation;
        let gone: Vec<u64> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.seen != generation)
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            if let Some(mut t) = self.tracked.remove(&key) {
                self.end(&mut t, pass_ns);
            }
        }
    }

    /// The points taken since the last call, grouped by entity, each series oldest first.
    pub fn take(&mut self) -> Batch {
        for t in self.tracked.values_mut() {
            t.pending = [None; METRICS];
        }
        let mut series = std::mem::take(&mut self.pending);
        // Stable: an entity's series stay together in metric order; points keep their order.
        series.sort_by(|a, b| {
            Arc::as_ptr(&a.entity)
                .cmp(&Arc::as_ptr(&b.entity))
                .then(a.metric.cmp(&b.metric))
        });
        Batch { series }
    }

    /// Updates one node, pod or container: replaced (old series stale) when its labels
    /// changed, then every metric with a new point.
    fn entity(
        &mut self,
        seen: &Seen<'_>,
        make: impl FnOnce() -> Entity,
        same: impl Fn(&Entity) -> bool,
    ) {
        let generation = self.generation;
        let mut t = match self.tracked.remove(&seen.key) {
            Some(t) if same(&t.entity) => t,
            Some(mut old) => {
                self.end(&mut old, seen.pass_ns);
                Tracked::new(make())
            }
            None => Tracked::new(make()),
        };
        t.seen = generation;
        for metric in Metric::ALL {
            if let Some((time_ns, value)) = seen.value(metric) {
                self.offer(
                    &mut t,
                    metric,
                    time_ns,
                    value,
                    seen.start(metric, self.probes_since_ns),
                );
            }
        }
        self.tracked.insert(seen.key, t);
    }

    /// Queues a point unless it repeats a reading already sent or comes before the series'
    /// next per-pass turn.
    fn offer(
        &mut self,
        t: &mut Tracked,
        metric: Metric,
        time_ns: u64,
        value: Value,
        start_ns: u64,
    ) {
        let i = metric.index();
        let at = ms(time_ns);
        let due = match t.last_ms[i] {
            None => true,
            Some(last) if at <= last => false,
            Some(last) if metric.per_pass(t.entity.level) => {
                let interval = self.interval.as_millis() as u64;
                // A pass that lands a little early still counts (passes drift by jitter).
                at - last + interval / 20 >= interval
            }
            Some(_) => true,
        };
        if !due {
            return;
        }
        t.last_ms[i] = Some(at);
        self.push(t, metric, start_ns, Point { time_ns, value });
    }

    /// Stale points for every series of `t`, each after its last point.
    fn end(&mut self, t: &mut Tracked, now_ns: u64) {
        for metric in Metric::ALL {
            if let Some(last) = t.last_ms[metric.index()] {
                let time_ns = now_ns.max((last + 1) * 1_000_000);
                self.push(
                    t,
                    metric,
                    0,
                    Point {
                        time_ns,
                        value: Value::Stale,
                    },
                );
            }
        }
    }

    fn push(&mut self, t: &mut Tracked, metric: Metric, start_ns: u64, point: Point) {
        let slot = &mut t.pending[metric.index()];
        match *slot {
            Some(i) => {
                let s = &mut self.pending[i];
                if start_ns > 0 {
                    s.start_ns = start_ns;
                }
                s.points.push(point);
            }
            None => {
                *slot = Some(self.pending.len());
                self.pending.push(Series {
                    entity: t.entity.clone(),
                    metric,
                    start_ns,
                    points: vec![point],
                });
            }
        }
    }
}

/// One node, pod or container as a snapshot has it.
struct Seen<'a> {
    key: u64,
    /// Node boot, pod or container start, Unix ns (0 unknown).
    start_ns: u64,
    pass_ns: u64,
    cpu: Option<&'a proto::CpuStats>,
    memory: Option<&'a proto::MemoryStats>,
    swap: Option<&'a proto::SwapStats>,
    container_start_ns: Option<u64>,
    ebpf: Option<&'a EbpfValues>,
}

impl Seen<'_> {
    /// The value of `metric` with its time, when the snapshot has one.
    fn value(&self, metric: Metric) -> Option<(u64, Value)> {
        let number = |time: u64, v: f64| (time > 0).then_some((time, Value::Number(v)));
        let ebpf =
            |v: Option<u64>, scale: f64| v.map(|v| (self.pass_ns, Value::Number(v as f64 / scale)));
        match metric {
            Metric::Cpu => {
                let c = self.cpu?;
                number(c.time_unix_nano, c.usage_core_nano_seconds? as f64 / 1e9)
            }
            Metric::WorkingSet => {
                let m = self.memory?;
                number(m.time_unix_nano, m.working_set_bytes? as f64)
            }
            Metric::Swap => {
                let s = self.swap?;
                number(s.time_unix_nano, s.swap_usage_bytes? as f64)
            }
            // Stamped with the reading that saw the container, not its start: a sample as old
            // as the container would be out of bounds for a receiver's head block.
            Metric::StartTime => {
                let c = self.cpu?;
                number(c.time_unix_nano, self.container_start_ns? as f64 / 1e9)
            }
            Metric::EbpfCpu => ebpf(self.ebpf?.cpu_ns, 1e9),
            Metric::EbpfMinorFaults => ebpf(self.ebpf?.faults.map(|[minor, _]| minor), 1.0),
            Metric::EbpfMajorFaults => ebpf(self.ebpf?.faults.map(|[_, major]| major), 1.0),
            Metric::EbpfOomKills => ebpf(self.ebpf?.oom_kills, 1.0),
            Metric::EbpfRxBytes => ebpf(self.ebpf?.network.map(|n| n[net::RX_BYTES]), 1.0),
            Metric::EbpfTxBytes => ebpf(self.ebpf?.network.map(|n| n[net::TX_BYTES]), 1.0),
            Metric::EbpfRxPackets => ebpf(self.ebpf?.network.map(|n| n[net::RX_PACKETS]), 1.0),
            Metric::EbpfTxPackets => ebpf(self.ebpf?.network.map(|n| n[net::TX_PACKETS]), 1.0),
            Metric::RunqWait => {
                let h = self.ebpf?.runq.clone()?;
                Some((self.pass_ns, Value::Runq(h)))
            }
        }
    }

    /// Since when `metric` counts: eBPF counters from when the probes attached (or the
    /// cgroup appeared, if later), cgroupfs ones from the cgroup's start.
    fn start(&self, metric: Metric, probes_since_ns: u64) -> u64 {
        if metric.counted_by_probes() {
            probes_since_ns.max(self.start_ns)
        } else {
            self.start_ns
        }
    }
}

#[cfg(test)]
#[path = "series_tests.rs"]
mod tests;
