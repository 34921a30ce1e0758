//! A collector in-process on loopback and a Watch subscription to it, with the stream folded
//! into a [`View`] message by message.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use collector::{
    app::{self, Running, ServeConfig},
    probes::ProbeConfig,
    proto::{
        CgroupStats, CollectorStats, GetSummaryRequest, OomKill, TerminatedCgroup, WatchRequest,
        WatchResponse, collector_client::CollectorClient, probe_status::State,
    },
};
use tonic::{Streaming, transport::Channel};

use crate::{can_run, skip};

/// The stream's view of every cgroup, updated message by message.
#[derive(Default)]
pub struct View {
    pub cgroups: HashMap<u64, CgroupStats>,
    /// Every removal the stream announced.
    pub removed: HashSet<u64>,
    /// Every terminated record and OOM kill the stream carried.
    pub terminated: Vec<TerminatedCgroup>,
    pub oom_kills: Vec<OomKill>,
    /// Probe statuses from the snapshot.
    pub probes: HashMap<String, State>,
    /// The collector's own counters, from the latest message.
    pub collector: Option<CollectorStats>,
}

impl View {
    pub fn apply(&mut self, msg: WatchResponse) {
        for id in msg.removed_cgroup_ids {
            self.cgroups.remove(&id);
            self.removed.insert(id);
        }
        for c in msg.cgroups {
            self.cgroups.insert(c.cgroup_id, c);
        }
        for p in msg.probes {
            self.probes.insert(p.name.clone(), p.state());
        }
        self.terminated.extend(msg.terminated);
        self.oom_kills.extend(msg.oom_kills);
        if msg.collector.is_some() {
            self.collector = msg.collector;
        }
    }

    /// (eBPF ns, cgroupfs ns) of one cgroup.
    pub fn cpu(&self, id: u64) -> Option<(u64, u64)> {
        let c = self.cgroups.get(&id)?;
        Some((
            c.ebpf_cpu.as_ref()?.on_cpu_nano_seconds,
            c.cgroupfs_cpu.as_ref()?.usage_core_nano_seconds?,
        ))
    }

    pub fn active(&self, program: &str) -> bool {
        self.probes.get(program) == Some(&State::Active)
    }
}

/// Applies the next message and returns its sample time (Unix ns).
pub async fn next(stream: &mut Streaming<WatchResponse>, view: &mut View) -> u64 {
    let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("no Watch message within 10 s")
        .expect("Watch stream error")
        .expect("Watch stream ended");
    let at = msg.timestamp_unix_nano;
    view.apply(msg);
    at
}

/// Reads until the view reflects a sample taken at least `margin` after now.
pub async fn catch_up(stream: &mut Streaming<WatchResponse>, view: &mut View, margin: Duration) {
    let target = unix_ns(SystemTime::now() + margin);
    while next(stream, view).await < target {}
}

pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Starts an in-process collector with `config` on a free loopback port, and a client for it.
pub async fn start_local(config: ServeConfig) -> (Running, CollectorClient<Channel>) {
    let running = app::start(ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..config
    })
    .await
    .expect("collector starts");
    let client = CollectorClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap();
    (running, client)
}

/// Starts an in-process collector with its probes off (the kernel's own accounting is what is
/// under test) and returns it with the record of the cgroup at `relative` from a summary.
pub async fn cgroupfs_record(relative: &str) -> (Running, CgroupStats) {
    let (running, mut client) = start_local(ServeConfig {
        probes: ProbeConfig {
            disabled: true,
            ..ProbeConfig::default()
        },
        ..ServeConfig::default()
    })
    .await;
    let summary = client
        .get_summary(GetSummaryRequest::default())
        .await
        .unwrap()
        .into_inner();
    let record = summary
        .cgroups
        .into_iter()
        .find(|c| c.path == relative)
        .unwrap_or_else(|| panic!("{relative} is not in the summary"));
    (running, record)
}

/// Starts an in-process collector on loopback (cgroupfs read on every pass, so both sources
/// can be compared live) and subscribes over gRPC. `None` (after a skip message, or a failure
/// under COLLECTOR_REQUIRE_BPF=1) when sched_switch is not active.
pub async fn start_watching(
    test: &str,
    interval_ms: u32,
) -> Option<(Running, Streaming<WatchResponse>, View)> {
    start_watching_with(test, interval_ms, Duration::ZERO, &["sched_switch"]).await
}

/// Like [`start_watching`], with the cgroupfs pace and the programs the test needs active.
pub async fn start_watching_with(
    test: &str,
    interval_ms: u32,
    cgroupfs_interval: Duration,
    needs: &[&str],
) -> Option<(Running, Streaming<WatchResponse>, View)> {
    if !can_run(test) {
        return None;
    }
    let (running, client) = start_local(ServeConfig {
        cgroupfs_interval,
        ..ServeConfig::default()
    })
    .await;
    let (stream, view) = subscribe(test, client, interval_ms, needs).await?;
    Some((running, stream, view))
}

/// Subscribes to a running collector; `None` (after a skip message, or a failure under
/// COLLECTOR_REQUIRE_BPF=1) when a program the test needs is not active.
pub async fn subscribe(
    test: &str,
    mut client: CollectorClient<Channel>,
    interval_ms: u32,
    needs: &[&str],
) -> Option<(Streaming<WatchResponse>, View)> {
    let mut stream = client
        .watch(WatchRequest {
            interval_ms: Some(interval_ms),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    for &program in needs {
        let probe = first
            .probes
            .iter()
            .find(|p| p.name == program)
            .unwrap_or_else(|| panic!("{program} status reported"));
        if probe.state() != State::Active {
            skip(test, &format!("{program} not active: {}", probe.reason));
            return None;
        }
    }
    let mut view = View::default();
    view.apply(first);
    Some((stream, view))
}
