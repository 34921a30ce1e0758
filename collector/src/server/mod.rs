//! The gRPC API: `collector.v1.Collector` plus health and reflection.

pub mod chunk;
pub mod fanout;
pub mod filter;
pub mod frames;
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

use tonic::{Request, Response, Status};
use tower::layer::util::{Identity, Stack};

use crate::{
    convert,
    net::{
        accept,
        auth::{Attributes, AttributesOf, AuthLayer, Target},
    },
    proto::{self, collector_server::Collector},
    store::{Snapshot, StoreHandle},
    unix_time::unix_nanos,
};

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest Watch interval, for callers on this host (loopback).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest Watch interval for callers off this host: every pass at 100 ms would keep a
/// full cgroupfs read running all the time on a big node.
pub const DEFAULT_MIN_REMOTE_INTERVAL: Duration = Duration::from_secs(1);
/// Concurrent HTTP/2 streams (calls) per connection.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// Watch subscribers at once; each may hold up to a queue and a message in flight.
pub const DEFAULT_MAX_WATCH_SUBSCRIBERS: usize = 32;
/// HTTP/2 keepalive: a ping this often, and a peer that does not answer within the timeout is
/// disconnected (a dead peer's streams and queues are freed).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often health is re-evaluated for the gRPC health service.
const HEALTH_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// Caps on what callers may hold, and the interval policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections per listener; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Concurrent streams per HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// Watch subscribers at once; more get RESOURCE_EXHAUSTED.
    pub max_watch_subscribers: usize,
    /// The shortest Watch interval for callers not on loopback.
    pub min_remote_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: accept::DEFAULT_MAX_CONNECTIONS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_watch_subscribers: DEFAULT_MAX_WATCH_SUBSCRIBERS,
            min_remote_interval: DEFAULT_MIN_REMOTE_INTERVAL,
        }
    }
}

/// A gRPC server of ours: limits, keepalive, and authentication in front of every service.
pub type GrpcServer = tonic::transport::Server<Stack<AuthLayer, Identity>>;
/// Its services.
pub type GrpcRouter = tonic::transport::server::Router<Stack<AuthLayer, Identity>>;

/// A gRPC server with the limits and keepalive every server of ours uses, and `auth` in front
/// of its services.
pub fn grpc_server(limits: &Limits, auth: AuthLayer) -> GrpcServer {
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(auth)
}

/// gRPC calls that need no authentication: health checks (kubelet's probes, the aggregator's
/// and top's detection of what answers) say nothing about tenants.
pub fn is_public_grpc(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
}

/// What every collector call needs when authorization is on: reading `nodes/stats` of this
/// node, the subresource kubelet guards its Summary API with (reflection included: it is how
/// clients find the calls).
pub fn collector_attributes(node: String) -> AttributesOf {
    Arc::new(move |_method: &http::Method, path: &str| {
        (!is_public_grpc(path)).then(|| {
            vec![Attributes {
                verb: "get",
                target: Target::Resource {
                    group: "",
                    resource: "nodes",
                    subresource: "stats",
                    name: node.clone(),
                    namespace: String::new(),
                },
            }]
        })
    })
}

/// Admission of streaming subscribers: a slot each, held until tonic drops the response (so
/// a dropped subscriber whose last message still sits in HTTP/2 buffers keeps counting).
#[derive(Clone)]
pub struct Admission {
    slots: Arc<tokio::sync::Semaphore>,
    max: usize,
    refused: Arc<AtomicU64>,
}

impl Admission {
    pub fn new(max: usize, refused: Arc<AtomicU64>) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            refused,
        }
    }

    /// A slot, or RESOURCE_EXHAUSTED saying which cap was hit.
    pub fn admit(
        &self,
        what: &str,
        flag: &str,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            Status::resource_exhausted(format!(
                "{} {what} subscribers are connected, the most this server accepts ({flag}); \
                 retry later",
                self.max
            ))
        })
    }

    /// `stream`, holding `slot` for as long as it exists.
    pub fn hold<T: Send + 'static>(
        slot: tokio::sync::OwnedSemaphorePermit,
        stream: outbox::SubscriberStream<T>,
    ) -> outbox::SubscriberStream<T> {
        Box::pin(futures::StreamExt::map(stream, move |item| {
            let _slot = &slot;
            item
        }))
    }
}

/// Whether a request came over loopback (connection info set by [`accept`]).
pub fn from_loopback<T>(request: &Request<T>) -> bool {
    request
        .extensions()
        .get::<accept::Peer>()
        .is_some_and(|p| p.addr.ip().is_loopback())
}

/// Counters about the API itself.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub watch_subscribers: AtomicU64,
    /// Subscribers dropped for falling behind.
    pub dropped_subscribers: AtomicU64,
    /// Subscriptions refused because `max_watch_subscribers` were connected.
    pub refused_subscribers: Arc<AtomicU64>,
    pub grpc_connections: Arc<accept::ConnectionStats>,
    pub http_connections: Arc<accept::ConnectionStats>,
    /// Since when this process's counters count; set once the probes are loaded.
    pub epoch: std::sync::OnceLock<Epoch>,
}

/// The origin of this process's counters: a restart changes it, and with it every eBPF
/// counter starts from zero (the cgroupfs ones are the kernel's and continue).
#[derive(Debug, Clone, Copy)]
pub struct Epoch {
    pub start_unix_nano: u64,
    /// When the probes attached; `None` when none is active.
    pub ebpf_since_unix_nano: Option<u64>,
}

impl ServerStats {
    pub fn dropped_subscribers(&self) -> u64 {
        self.dropped_subscribers.load(Ordering::Relaxed)
    }

    /// The sampler's and probes' figures of `snap` with this server's Watch counters.
    pub fn collector_stats(&self, snap: &Snapshot) -> proto::CollectorStats {
        let epoch = self.epoch.get();
        proto::CollectorStats {
            watch_subscribers: self.watch_subscribers.load(Ordering::Relaxed),
            dropped_subscribers: self.dropped_subscribers(),
            start_time_unix_nano: epoch.map_or(0, |e| e.start_unix_nano),
            ebpf_counters_since_unix_nano: epoch.and_then(|e| e.ebpf_since_unix_nano),
            ..convert::collector_stats(&snap.stats, &snap.program_stats, &snap.maps)
        }
    }
}

pub struct CollectorService {
    store: StoreHandle,
    node: Arc<proto::NodeInfo>,
    stats: Arc<ServerStats>,
    max_message_bytes: usize,
    limits: Limits,
    admission: Admission,
    fanout: Arc<fanout::Fanout>,
}

impl CollectorService {
    pub fn new(
        store: StoreHandle,
        stats: Arc<ServerStats>,
        max_message_bytes: usize,
        limits: Limits,
    ) -> Self {
        let node = Arc::new(convert::node_info(&store.node));
        let admission = Admission::new(
            limits.max_watch_subscribers,
            stats.refused_subscribers.clone(),
        );
        let fanout = fanout::Fanout::new(
            store.clone(),
            node.clone(),
            stats.clone(),
            outbox::Budget::new(outbox::QUEUE_BUDGET_BYTES),
        );
        Self {
            store,
            node,
            stats,
            max_message_bytes,
            limits,
            admission,
            fanout,
        }
    }

    /// Watch as the wire serves it: the subscriber joins the feed of its shape and receives
    /// the bytes encoded once for all of them ([`frames::CollectorRoutes`]).
    pub fn watch_frames(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<outbox::SubscriberStream<frames::Frame>>, Status> {
        let loopback = from_loopback(&request);
        let req = request.get_ref();
        let opts = watch::Options {
            interval: watch_interval(req.interval_ms, loopback, self.limits.min_remote_interval)?,
            filter: filter::Filter::from_request(req)?,
            histograms: req.include_histograms,
            only_cpu_and_memory: req.only_cpu_and_memory,
            max_message_bytes: self.max_message_bytes,
        };
        let slot = self.admission.admit("Watch", "--max-watch-subscribers")?;
        Ok(Response::new(Admission::hold(
            slot,
            self.fanout.subscribe(opts),
        )))
    }
}

/// Checks a requested Watch interval: unset means the default; out of range is the caller's
/// error. Callers off this host may not go below `min_remote` (nor the default below it).
pub fn watch_interval(
    interval_ms: Option<u32>,
    loopback: bool,
    min_remote: Duration,
) -> Result<Duration, Status> {
    let min = if loopback {
        MIN_INTERVAL
    } else {
        min_remote.clamp(MIN_INTERVAL, MAX_INTERVAL)
    };
    let default = DEFAULT_INTERVAL.max(min);
    requested_interval(interval_ms, default, min..=MAX_INTERVAL).map_err(|e| {
        if loopback {
            e
        } else {
            Status::invalid_argument(format!(
                "{} (callers off this host: at least {} ms, --min-watch-interval-ms)",
                e.message(),
                min.as_millis()
            ))
        }
    })
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
        // The records shared with Watch: converted once per snapshot, not once per call.
        let records = snap.records(histograms);
        Ok(Response::new(proto::Summary {
            timestamp_unix_nano: time,
            node: Some((*self.node).clone()),
            node_stats: Some(snap.node_stats.clone()),
            pods: snap.pods.clone(),
            cgroups: records.iter().map(|r| r.stats.clone()).collect(),
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

    type WatchStream = outbox::SubscriberStream<proto::WatchResponse>;

    /// The generated server's path, which [`frames::CollectorRoutes`] does not take (it serves
    /// Watch itself, from the shared bytes): the same frames, decoded.
    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        use futures::StreamExt as _;
        let frames = self.watch_frames(request)?.into_inner();
        Ok(Response::new(Box::pin(frames.map(|frame| {
            frame.and_then(|f| {
                f.decode()
                    .map_err(|e| Status::internal(format!("re-reading our own message: {e}")))
            })
        }))))
    }
}

/// Serves the API on `incoming` until `shutdown` completes.
pub async fn serve(
    incoming: accept::Incoming,
    service: CollectorService,
    auth: AuthLayer,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let store = service.store.clone();
    let limits = service.limits;
    let reporter = health_reporter.clone();
    let freshness = tokio::spawn(report_health(store.clone(), reporter));
    tokio::spawn(report_probe_health(store, health_reporter));
    let router = with_reflection(
        grpc_server(&limits, auth)
            .add_service(health)
            .add_service(frames::CollectorRoutes::new(service)),
        COLLECTOR_SERVICE,
    );
    let shutdown = async move {
        shutdown.await;
        freshness.abort();
    };
    serve_router(router, incoming, shutdown).await
}

/// The API service names, as reflection lists them.
pub const COLLECTOR_SERVICE: &str = "collector.v1.Collector";
pub const AGGREGATOR_SERVICE: &str = "collector.v1.Aggregator";
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Adds server reflection listing `service` (the one API this server serves), the health
/// service (grpcurl cannot call what reflection does not describe) and reflection itself, in
/// both the v1 protocol and v1alpha, which many clients (grpcio's reflection database, older
/// grpcurl) use.
pub fn with_reflection(router: GrpcRouter, service: &'static str) -> GrpcRouter {
    let builder = |reflection: &'static str| {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(service)
            .with_service_name(HEALTH_SERVICE)
            .with_service_name(reflection)
    };
    const VALID: &str = "the embedded descriptor sets are produced at build time and valid";
    router
        .add_service(
            builder("grpc.reflection.v1.ServerReflection")
                .build_v1()
                .expect(VALID),
        )
        .add_service(
            builder("grpc.reflection.v1alpha.ServerReflection")
                .build_v1alpha()
                .expect(VALID),
        )
}

/// Keeps the overall health ("") and the Collector service's health in step with the store:
/// SERVING while the newest sample is fresh, NOT_SERVING before the first sample, when it is
/// too old (passes fail or hang) or when the store task is gone.
async fn report_health(store: StoreHandle, reporter: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    let mut tick = tokio::time::interval(HEALTH_CHECK_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tick.tick().await;
        let health = store.health();
        let serving = health.is_serving();
        if last != Some(serving) {
            if last.is_some() {
                if serving {
                    tracing::info!("healthy again");
                } else {
                    tracing::warn!("unhealthy: {health}");
                }
            }
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in ["", COLLECTOR_SERVICE] {
                reporter.set_service_status(name, status).await;
            }
            last = Some(serving);
        }
    }
}

/// Runs a router on accepted connections (plaintext or TLS, capped; see [`accept`]).
pub async fn serve_router(
    router: GrpcRouter,
    incoming: accept::Incoming,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    router
        .serve_with_incoming_shutdown(incoming.into_stream(), shutdown)
        .await
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

    #[test]
    fn callers_off_the_host_may_not_go_below_the_remote_minimum() {
        let min_remote = Duration::from_secs(1);
        let ms = Duration::from_millis;
        // Loopback: 100 ms is fine, the default stays 1 s.
        assert_eq!(
            watch_interval(Some(100), true, min_remote).unwrap(),
            ms(100)
        );
        assert_eq!(watch_interval(None, true, min_remote).unwrap(), ms(1_000));
        // Remote: below the policy is the caller's error, and the message names the flag.
        let err = watch_interval(Some(100), false, min_remote).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("--min-watch-interval-ms"), "{err}");
        assert_eq!(
            watch_interval(Some(1_000), false, min_remote).unwrap(),
            ms(1_000)
        );
        // A policy above the default raises the default too.
        assert_eq!(
            watch_interval(None, false, Duration::from_secs(5)).unwrap(),
            ms(5_000)
        );
    }
}
