//! The gRPC API: `collector.v1.Collector` plus health and reflection.

pub mod chunk;
pub mod filter;
pub mod outbox;
pub mod watch;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::{
    convert,
    net::tls,
    proto::{
        self,
        collector_server::{Collector, CollectorServer},
    },
    store::{Snapshot, StoreHandle},
    unix_time::unix_nanos,
};

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// Counters about the API itself.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub watch_subscribers: AtomicU64,
    /// Subscribers dropped for falling behind.
    pub dropped_subscribers: AtomicU64,
}

impl ServerStats {
    pub fn dropped_subscribers(&self) -> u64 {
        self.dropped_subscribers.load(Ordering::Relaxed)
    }

    /// The sampler's and probes' figures of `snap` with this server's Watch counters.
    pub fn collector_stats(&self, snap: &Snapshot) -> proto::CollectorStats {
        proto::CollectorStats {
            watch_subscribers: self.watch_subscribers.load(Ordering::Relaxed),
            dropped_subscribers: self.dropped_subscribers(),
            ..convert::collector_stats(&snap.stats, &snap.program_stats, &snap.maps)
        }
    }
}

pub struct CollectorService {
    store: StoreHandle,
    node: Arc<proto::NodeInfo>,
    stats: Arc<ServerStats>,
    max_message_bytes: usize,
}

impl CollectorService {
    pub fn new(store: StoreHandle, stats: Arc<ServerStats>, max_message_bytes: usize) -> Self {
        let node = Arc::new(convert::node_info(&store.node));
        Self {
            store,
            node,
            stats,
            max_message_bytes,
        }
    }
}

/// Checks a requested Watch interval: unset means the default; out of range is the caller's error.
pub fn watch_interval(interval_ms: Option<u32>) -> Result<Duration, Status> {
    requested_interval(interval_ms, DEFAULT_INTERVAL, MIN_INTERVAL..=MAX_INTERVAL)
}

/// A streaming interval from a request: `default` when unset, INVALID_ARGUMENT outside `allowed`.
pub fn requested_interval(
    interval_ms: Option<u32>,
    default: Duration,
    allowed: std::ops::RangeInclusive<Duration>,
) -> Result<Duration, Status> {
    let Some(ms) = interval_ms else {
        return Ok(default);
    };
    let interval = Duration::from_millis(u64::from(ms));
    if !allowed.contains(&interval) {
        return Err(Status::invalid_argument(format!(
            "interval_ms = {ms} is outside the allowed {}..={} ms",
            allowed.start().as_millis(),
            allowed.end().as_millis()
        )));
    }
    Ok(interval)
}

/// How long GetSummary waits for the first sample of a collector that is still starting.
const FIRST_SAMPLE_PATIENCE: Duration = Duration::from_secs(5);

#[tonic::async_trait]
impl Collector for CollectorService {
    async fn get_summary(
        &self,
        request: Request<proto::GetSummaryRequest>,
    ) -> Result<Response<proto::Summary>, Status> {
        let histograms = request.get_ref().include_histograms;
        let snap = self
            .store
            .first_or_latest(FIRST_SAMPLE_PATIENCE)
            .await
            .ok_or_else(|| Status::unavailable("no sample taken yet; retry in a second"))?;
        let time = unix_nanos(snap.sample.wall);
        Ok(Response::new(proto::Summary {
            timestamp_unix_nano: time,
            node: Some((*self.node).clone()),
            node_stats: Some(snap.node_stats.clone()),
            pods: snap.pods.clone(),
            cgroups: snap
                .sample
                .cgroups
                .iter()
                .zip(&snap.rates)
                .map(|(c, r)| convert::cgroup_stats(c, *r, histograms))
                .collect(),
            probes: snap.probes.iter().map(convert::probe_status).collect(),
            collector: Some(self.stats.collector_stats(&snap)),
            recently_terminated: snap
                .recent
                .terminated
                .iter()
                .map(|(_, t)| t.clone())
                .collect(),
            recent_oom_kills: snap
                .recent
                .oom_kills
                .iter()
                .map(|(_, k)| k.clone())
                .collect(),
        }))
    }

    type WatchStream = watch::WatchStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.get_ref();
        let opts = watch::Options {
            interval: watch_interval(req.interval_ms)?,
            filter: filter::Filter::from_request(req)?,
            histograms: req.include_histograms,
            only_cpu_and_memory: req.only_cpu_and_memory,
            max_message_bytes: self.max_message_bytes,
        };
        let (outbox, stream) = watch::channel();
        let subscription = self.store.subscribe(opts.interval);
        let stats = self.stats.clone();
        let node = self.node.clone();
        tokio::spawn(async move {
            stats.watch_subscribers.fetch_add(1, Ordering::Relaxed);
            let context = watch::Context {
                node,
                server_stats: stats.clone(),
            };
            let end = watch::run(subscription, opts, context, outbox).await;
            if end == outbox::End::TooSlow {
                stats.dropped_subscribers.fetch_add(1, Ordering::Relaxed);
            }
            stats.watch_subscribers.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Response::new(stream))
    }
}

/// Serves the API on `listener` (over TLS when `tls` is set) until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: CollectorService,
    tls: Option<Arc<tls::TlsReloader>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CollectorServer<CollectorService>>()
        .await;
    tokio::spawn(report_probe_health(service.store.clone(), health_reporter));
    let router = with_reflection(
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(CollectorServer::new(service)),
    );
    serve_router(router, listener, tls, shutdown).await
}

/// Adds server reflection for every service of the API (collector and aggregator), both the v1
/// protocol and v1alpha, which many clients (grpcio's reflection database, older grpcurl) use.
pub fn with_reflection(
    router: tonic::transport::server::Router,
) -> tonic::transport::server::Router {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
    };
    const VALID: &str = "the embedded descriptor set is produced by build.rs and always valid";
    router
        .add_service(builder().build_v1().expect(VALID))
        .add_service(builder().build_v1alpha().expect(VALID))
}

/// Runs a router on a bound listener, plaintext or TLS (with certificate reloading).
pub async fn serve_router(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<Arc<tls::TlsReloader>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    match tls {
        None => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await
        }
        Some(tls) => {
            let watcher = tls.clone().watch_files(tls::RELOAD_CHECK);
            let result = router
                .serve_with_incoming_shutdown(tls::incoming(listener, tls), shutdown)
                .await;
            watcher.abort();
            result
        }
    }
}

/// Health service name of each probe program: SERVING when active, NOT_SERVING otherwise (the
/// reason is in the `probes` of every snapshot).
pub fn probe_health_name(program: &str) -> String {
    format!("collector.v1.probe.{program}")
}

/// The probes whose serving state differs from what was last `sent` (all of them the first
/// time), recording the new state.
fn health_changes(
    sent: &mut HashMap<&'static str, bool>,
    probes: &[crate::probes::ProbeStatus],
) -> Vec<(&'static str, bool)> {
    probes
        .iter()
        .filter_map(|p| {
            let serving = p.is_active();
            (sent.insert(p.name, serving) != Some(serving)).then_some((p.name, serving))
        })
        .collect()
}

/// Keeps each probe's health entry in step with its status: set from the first snapshot, then
/// changed whenever a snapshot's status differs (a family whose maps stop reading turns
/// NOT_SERVING until they read again; CRI names come and go with the runtime).
async fn report_probe_health(store: StoreHandle, reporter: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    let mut snapshots = store.snapshots();
    let mut sent: HashMap<&'static str, bool> = HashMap::new();
    loop {
        let snap = snapshots.borrow_and_update().clone();
        for (name, serving) in snap.map_or_else(Vec::new, |s| health_changes(&mut sent, &s.probes))
        {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter
                .set_service_status(probe_health_name(name), status)
                .await;
        }
        if snapshots.changed().await.is_err() {
            return; // the store stopped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::{ProbeState, ProbeStatus};

    fn status(name: &'static str, state: ProbeState) -> ProbeStatus {
        ProbeStatus {
            name,
            provides: "x",
            state,
        }
    }

    #[test]
    fn probe_health_follows_status_changes_only() {
        let active = || ProbeState::Active { note: None };
        let failed = || ProbeState::Failed("reading its maps failed".into());
        let mut sent = HashMap::new();
        let first = [status("sched_switch", active()), status("cri", failed())];
        assert_eq!(
            health_changes(&mut sent, &first),
            [("sched_switch", true), ("cri", false)]
        );
        assert!(
            health_changes(&mut sent, &first).is_empty(),
            "nothing changed"
        );
        let later = [status("sched_switch", failed()), status("cri", active())];
        assert_eq!(
            health_changes(&mut sent, &later),
            [("sched_switch", false), ("cri", true)]
        );
    }
}
