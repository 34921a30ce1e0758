//! The one task that owns the samples: it runs the sampler at the pace subscribers need and
//! publishes each result as an immutable snapshot. Readers never block it.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{Notify, watch};

use crate::{
    convert,
    cri::CriNames,
    host_scan::{DiskScan, RoundFigures},
    node::NodeInfo,
    percentiles::UsageWindows,
    probes::{MapMemory, ProbeStatus, ProgramRunStats},
    proto,
    rate::{
        CgroupRates,
        cgroup::{RateState, rates_since},
    },
    sampler::{Sample, Sampler, SamplerStats},
    summary::{self, Inputs},
    unix_time::unix_nanos,
};

/// Health turns NOT_SERVING when the newest sample is older than this many base periods...
pub const STALE_AFTER_PERIODS: u32 = 3;
/// ...or than this, whichever is longer (a full cgroupfs pass over a big tree takes seconds).
pub const MIN_STALE_AFTER: Duration = Duration::from_secs(10);

/// How old the newest sample may be before the collector reports itself unhealthy.
pub fn stale_after(base_period: Duration) -> Duration {
    (base_period * STALE_AFTER_PERIODS).max(MIN_STALE_AFTER)
}

/// Whether the collector is doing its job, for health checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Health {
    /// No sample yet (starting).
    NoSample,
    /// The newest sample is recent.
    Fresh,
    /// The newest sample is this old: passes fail or hang.
    Stale { age: Duration, limit: Duration },
    /// The store task ended: nothing will ever be sampled again.
    Stopped,
}

impl Health {
    pub fn is_serving(&self) -> bool {
        *self == Health::Fresh
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::NoSample => write!(f, "no sample taken yet"),
            Health::Fresh => write!(f, "ok"),
            Health::Stale { age, limit } => write!(
                f,
                "the newest sample is {:.1} s old (limit {:.1} s): sampling passes fail or hang",
                age.as_secs_f64(),
                limit.as_secs_f64()
            ),
            Health::Stopped => write!(f, "the store task has stopped"),
        }
    }
}

/// How many removals and OOM kills the store remembers for subscribers and GetSummary.
pub const RECENT_TERMINATED: usize = 1024;
pub const RECENT_OOM_KILLS: usize = 256;

#[derive(Debug, Default, Clone)]
pub struct Recent {
    pub terminated: VecDeque<(u64, proto::TerminatedCgroup)>,
    pub oom_kills: VecDeque<(u64, proto::OomKill)>,
}

impl Recent {
    fn push(&mut self, seq: u64, sample: &Sample) {
        let time = unix_nanos(sample.wall);
        for t in &sample.terminated {
            self.terminated
                .push_back((seq, convert::terminated(t, time)));
        }
        for k in &sample.oom_kills {
            self.oom_kills.push_back((seq, convert::oom_kill(k)));
        }
        while self.terminated.len() > RECENT_TERMINATED {
            self.terminated.pop_front();
        }
        while self.oom_kills.len() > RECENT_OOM_KILLS {
            self.oom_kills.pop_front();
        }
    }
}

#[derive(Debug)]
pub struct Snapshot {
    pub seq: u64,
    pub sample: Sample,
    /// Same order as `sample.cgroups`.
    pub rates: Vec<CgroupRates>,
    pub probes: Vec<ProbeStatus>,
    pub stats: SamplerStats,
    /// The kubelet-shaped view of `sample`, built once here for every reader.
    pub node_stats: proto::NodeStats,
    pub pods: Vec<proto::PodStats>,
    /// Each probe program's run count and time (bpf_stats).
    pub program_stats: Vec<ProgramRunStats>,
    /// How the slow disk scans' last round went.
    pub disk_scan: RoundFigures,
    /// Kernel memory of the probes' maps (fixed at load).
    pub maps: Arc<[MapMemory]>,
    /// Removals and OOM kills of recent samples, each tagged with its snapshot's `seq`, so a
    /// subscriber that skipped samples still gets every one once.
    pub recent: Arc<Recent>,
    /// Every cgroup's record, converted once for all subscribers (on first use), without and
    /// with histograms.
    pub records: [std::sync::OnceLock<Arc<[Record]>>; 2],
}

/// One cgroup's protobuf record and a hash of its encoding, so a subscriber can tell whether
/// it changed since it last sent it without keeping a copy.
#[derive(Debug)]
pub struct Record {
    pub stats: proto::CgroupStats,
    pub hash: u64,
}

impl Snapshot {
    /// The records of `sample.cgroups` (same order), built by the first subscriber that asks.
    pub fn records(&self, histograms: bool) -> &Arc<[Record]> {
        self.records[usize::from(histograms)].get_or_init(|| {
            use std::hash::{Hash as _, Hasher as _};
            let mut buf = Vec::new();
            self.sample
                .cgroups
                .iter()
                .zip(&self.rates)
                .map(|(c, r)| {
                    let stats = convert::cgroup_stats(c, *r, histograms);
                    buf.clear();
                    prost::Message::encode(&stats, &mut buf).expect("a Vec grows as needed");
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    buf.hash(&mut h);
                    Record {
                        stats,
                        hash: h.finish(),
                    }
                })
                .collect()
        })
    }
}

/// Requested update intervals of live subscribers; the sampler runs at the smallest.
#[derive(Default)]
struct Intervals {
    next_id: u64,
    by_id: BTreeMap<u64, Duration>,
}

#[derive(Clone)]
pub struct StoreHandle {
    latest: watch::Receiver<Option<Arc<Snapshot>>>,
    intervals: Arc<Mutex<Intervals>>,
    changed: Arc<Notify>,
    pub node: Arc<NodeInfo>,
    stale_after: Duration,
}

/// A subscriber's view: new snapshots as they are published. Dropping it withdraws its interval.
pub struct Subscription {
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    id: u64,
    intervals: Arc<Mutex<Intervals>>,
    changed: Arc<Notify>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.intervals).by_id.remove(&self.id);
        self.changed.notify_one();
    }
}

impl StoreHandle {
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.latest.borrow().clone()
    }

    /// Fresh while the newest sample is younger than the staleness limit and the store runs.
    pub fn health(&self) -> Health {
        // The sender lives in the store task: closed means the task is gone.
        if self.latest.has_changed().is_err() {
            return Health::Stopped;
        }
        match self.latest() {
            None => Health::NoSample,
            Some(snap) => {
                let age = snap.sample.taken_at.elapsed();
                if age > self.stale_after {
                    Health::Stale {
                        age,
                        limit: self.stale_after,
                    }
                } else {
                    Health::Fresh
                }
            }
        }
    }

    /// Every snapshot as it is published, without asking the sampler for a faster pace (for
    /// observers that only follow: the health reporter, the exporters).
    pub fn snapshots(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.latest.clone()
    }

    /// The latest snapshot, waiting up to `patience` for the first one (a request that arrives
    /// while the collector is still starting should get data, not an error). `None` when no
    /// sample arrived in time or the store stopped.
    pub async fn first_or_latest(&self, patience: Duration) -> Option<Arc<Snapshot>> {
        let mut rx = self.latest.clone();
        let wait = rx.wait_for(Option::is_some);
        match tokio::time::timeout(patience, wait).await {
            Ok(Ok(snapshot)) => snapshot.clone(),
            _ => None,
        }
    }

    pub fn subscribe(&self, interval: Duration) -> Subscription {
        let id = {
            let mut intervals = lock(&self.intervals);
            intervals.next_id += 1;
            let id = intervals.next_id;
            intervals.by_id.insert(id, interval);
            id
        };
        self.changed.notify_one();
        Subscription {
            snapshots: self.latest.clone(),
            id,
            intervals: self.intervals.clone(),
            changed: self.changed.clone(),
        }
    }
}

/// Containers the runtime has not named yet (their name is still their id).
fn unnamed_containers(pods: &[proto::PodStats]) -> impl Iterator<Item = &str> {
    pods.iter()
        .flat_map(|p| &p.containers)
        .filter(|c| c.name == c.container_id)
        .map(|c| c.container_id.as_str())
}

/// The probes' statuses, the runtime's (names, filesystem usage) and the disk scans', in one
/// list for every reader.
fn statuses(sampler: &Sampler, extras: &Extras) -> Vec<ProbeStatus> {
    let mut statuses = sampler.probes().statuses();
    statuses.push(extras.names.status());
    statuses.push(extras.names.fs_status());
    statuses.push(extras.disk.status());
    statuses
}

fn lock(m: &Mutex<Intervals>) -> std::sync::MutexGuard<'_, Intervals> {
    // A panic while holding this lock cannot leave the map inconsistent; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the store adds to each summary beyond the sample.
pub struct Extras {
    /// Pod and container names and filesystem usage from the runtime (CRI).
    pub names: Arc<CriNames>,
    /// Sliding-window percentiles of pod and container usage.
    pub windows: UsageWindows,
    /// Volumes, logs and etc-hosts (du walks) and the kubelet process.
    pub disk: Arc<DiskScan>,
    /// Where kubelet's system containers are, when given (else found).
    pub system: SystemCgroups,
}

/// kubelet's `--kubelet-cgroups`, `--runtime-cgroups` and `--system-cgroups`. Without the first
/// two the kubelet's and the runtime's cgroups are found (the kubelet process, the CRI socket's
/// peer); the "misc" container exists only when named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemCgroups {
    pub kubelet: Option<String>,
    pub runtime: Option<String>,
    pub misc: Option<String>,
}

impl Extras {
    /// The Summary's inputs as of now.
    fn inputs(&self) -> Inputs {
        let disk = self.disk.table();
        let kubelet = disk.kubelet.as_ref();
        Inputs {
            names: self.names.table(),
            runtime_fs: self.names.runtime_fs(),
            kubelet_cgroup: self
                .system
                .kubelet
                .clone()
                .or_else(|| kubelet.map(|k| k.cgroup.clone())),
            kubelet_start: kubelet.and_then(|k| k.start_unix_nano),
            runtime_cgroup: self
                .system
                .runtime
                .clone()
                .or_else(|| self.names.runtime_cgroup()),
            misc_cgroup: self.system.misc.clone(),
            disk,
        }
    }
}

/// Starts the store task. `base_period` is the pace without faster subscribers; health is stale
/// when the newest sample is older than `stale_after`. Aborting the returned task ends every
/// subscription (their snapshot channel closes).
pub fn spawn(
    sampler: Sampler,
    node: NodeInfo,
    extras: Extras,
    base_period: Duration,
    stale_after: Duration,
) -> (StoreHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let intervals = Arc::new(Mutex::new(Intervals::default()));
    let changed = Arc::new(Notify::new());
    let handle = StoreHandle {
        latest: rx,
        intervals: intervals.clone(),
        changed: changed.clone(),
        node: Arc::new(node),
        stale_after,
    };
    let node = handle.node.clone();
    let task = tokio::spawn(run(
        sampler,
        node,
        extras,
        tx,
        intervals,
        changed,
        base_period,
    ));
    (handle, task)
}

async fn run(
    mut sampler: Sampler,
    node: Arc<NodeInfo>,
    mut extras: Extras,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    intervals: Arc<Mutex<Intervals>>,
    changed: Arc<Notify>,
    base_period: Duration,
) {
    let mut seq = 0;
    // Failed passes in a row: the first is logged as a warning, the rest only counted (in
    // `failed_passes`) until a pass succeeds again.
    let mut failing = 0u64;
    let mut previous = RateState::default();
    let mut recent = Arc::new(Recent::default());
    let maps: Arc<[MapMemory]> = sampler.probes().map_memory().into();
    loop {
        let started = Instant::now();
        let (returned, result) = match tokio::task::spawn_blocking(move || {
            let result = sampler.sample();
            (sampler, result)
        })
        .await
        {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!("sampler task died: {e}; no further samples");
                return;
            }
        };
        sampler = returned;
        match result {
            Ok(sample) => {
                if failing > 0 {
                    tracing::info!("sampling recovered after {failing} failed passes");
                    failing = 0;
                }
                let rates = rates_since(&mut previous, &sample);
                let inputs = extras.inputs();
                let (node_stats, mut pods) = summary::build(&sample, &rates, &node, &inputs);
                extras.names.request(unnamed_containers(&pods));
                extras.windows.observe(&mut pods, unix_nanos(sample.wall));
                if !sample.terminated.is_empty() || !sample.oom_kills.is_empty() {
                    Arc::make_mut(&mut recent).push(seq, &sample);
                }
                let snapshot = Snapshot {
                    records: Default::default(),
                    program_stats: sampler.probes().run_stats(),
                    disk_scan: inputs.disk.figures,
                    maps: maps.clone(),
                    recent: recent.clone(),
                    seq,
                    sample,
                    rates,
                    probes: statuses(&sampler, &extras),
                    stats: sampler.stats,
                    node_stats,
                    pods,
                };
                seq += 1;
                tx.send_replace(Some(Arc::new(snapshot)));
            }
            // Keep serving the last snapshot (health turns NOT_SERVING once it is too old); say
            // once why it is not moving.
            Err(e) => {
                if failing == 0 {
                    tracing::warn!(
                        "sampling pass failed, nothing published until a pass succeeds: {e}"
                    );
                } else {
                    tracing::debug!("sampling pass failed again: {e}");
                }
                failing += 1;
            }
        }
        // Sleep until the next pass, re-planning when a subscriber arrives or leaves.
        loop {
            let period = lock(&intervals)
                .by_id
                .values()
                .copied()
                .min()
                .map_or(base_period, |fastest| fastest.min(base_period));
            let deadline = started + period;
            if Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => break,
                _ = changed.notified() => continue,
                _ = tx.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cgroupfs::CgroupMounts,
        probes::{ProbeConfig, Probes},
    };

    #[tokio::test]
    async fn health_is_fresh_then_stopped_when_the_store_task_ends() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 1\n").unwrap();
        let probes = Probes::load(&ProbeConfig {
            disabled: true,
            ..ProbeConfig::default()
        });
        let sampler = Sampler::new(dir.path().into(), &CgroupMounts::default(), probes);
        let node = NodeInfo::discover(CgroupMounts::default(), Some("n".into()));
        let extras = Extras {
            names: crate::cri::resolver::spawn(
                crate::cri::CriSetting::Off,
                Duration::from_secs(1),
                Duration::from_secs(1),
            )
            .0,
            windows: UsageWindows::new(crate::percentiles::DEFAULT_WINDOW),
            disk: DiskScan::disabled(),
            system: SystemCgroups::default(),
        };
        let period = Duration::from_millis(50);
        let (store, task) = spawn(sampler, node, extras, period, Duration::from_secs(5));
        assert!(
            store
                .first_or_latest(Duration::from_secs(5))
                .await
                .is_some()
        );
        assert_eq!(store.health(), Health::Fresh);
        task.abort();
        let _ = task.await;
        assert_eq!(store.health(), Health::Stopped);
        assert_eq!(stale_after(Duration::from_secs(1)), MIN_STALE_AFTER);
        assert_eq!(
            stale_after(Duration::from_secs(10)),
            Duration::from_secs(30)
        );
    }
}
