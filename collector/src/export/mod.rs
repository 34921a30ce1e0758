//! Pushing into existing engines: Prometheus remote-write 1.0 (Prometheus, Mimir, Cortex,
//! Thanos Receive, VictoriaMetrics) and OTLP metrics over gRPC or HTTP (the OpenTelemetry
//! Collector, Alloy, and the engines' OTLP endpoints).
//!
//! One task reads every snapshot the store publishes, as the servers do, so it never delays
//! sampling; [`series`] keeps what is new, every interval a batch is encoded once per protocol
//! ([`remote_write`], [`otlp`]) and queued for each destination, and each destination's
//! [`delivery`] sender pushes its queue in order.

pub mod config;
pub mod delivery;
pub mod otlp;
pub mod remote_write;
pub mod series;
pub mod transport;
pub mod wire;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use bytes::Bytes;
use tokio::{sync::oneshot, task::JoinHandle};

use self::{
    config::{ExportConfig, Protocol},
    delivery::{DeliveryStats, Pacing, Queue, Request},
    series::{Batch, Tracker},
    transport::Transport,
};
use crate::{
    http::{
        MoreMetrics,
        prom::{Exposition, Kind},
    },
    net::backoff,
    store::StoreHandle,
};

/// One destination's queue, counters and sender.
struct Endpoint {
    protocol: Protocol,
    label: String,
    queue: Arc<Queue>,
    stats: Arc<DeliveryStats>,
    sender: JoinHandle<()>,
}

impl Drop for Endpoint {
    // An exporter dropped without `stop` takes its senders with it.
    fn drop(&mut self) {
        self.sender.abort();
    }
}

/// The exporters' counters, for `/metrics`.
pub struct ExportMetrics {
    endpoints: Vec<(Protocol, String, Arc<DeliveryStats>)>,
    missed_snapshots: Arc<AtomicU64>,
}

const FAMILIES: [(&str, Kind, &str); 7] = [
    (
        "collector_export_samples_total",
        Kind::Counter,
        "Samples (remote-write) or data points (OTLP) the receiver accepted.",
    ),
    (
        "collector_export_bytes_total",
        Kind::Counter,
        "Request bytes the receiver accepted, as sent (snappy-compressed for remote-write).",
    ),
    (
        "collector_export_requests_total",
        Kind::Counter,
        "Push attempts, retries included.",
    ),
    (
        "collector_export_failures_total",
        Kind::Counter,
        "Push attempts that failed: network errors, timeouts, 5xx/429 (retried) and other refusals (dropped).",
    ),
    (
        "collector_export_dropped_samples_total",
        Kind::Counter,
        "Samples never delivered, by reason: queue_full (the oldest made room), rejected (refused by the receiver), shutdown (queued when the grace ran out).",
    ),
    (
        "collector_export_queue_bytes",
        Kind::Gauge,
        "Encoded bytes waiting to be sent, the request in flight included.",
    ),
    (
        "collector_export_missed_snapshots_total",
        Kind::Counter,
        "Snapshots the exporter did not see because it fell a whole pass behind.",
    ),
];

impl MoreMetrics for ExportMetrics {
    fn write(&self, e: &mut Exposition) {
        for (name, kind, help) in FAMILIES {
            e.family(name, kind, help);
        }
        for (protocol, label, s) in &self.endpoints {
            let labels = [
                ("protocol", protocol.as_str()),
                ("endpoint", label.as_str()),
            ];
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
            e.sample(
                "collector_export_samples_total",
                "",
                &labels,
                get(&s.samples),
                None,
            );
            e.sample(
                "collector_export_bytes_total",
                "",
                &labels,
                get(&s.bytes),
                None,
            );
            e.sample(
                "collector_export_requests_total",
                "",
                &labels,
                get(&s.requests),
                None,
            );
            e.sample(
                "collector_export_failures_total",
                "",
                &labels,
                get(&s.failures),
                None,
            );
            e.sample(
                "collector_export_queue_bytes",
                "",
                &labels,
                get(&s.queued_bytes),
                None,
            );
            for (reason, c) in [
                ("queue_full", &s.dropped_queue_full),
                ("rejected", &s.dropped_rejected),
                ("shutdown", &s.dropped_shutdown),
            ] {
                let mut l = labels.to_vec();
                l.push(("reason", reason));
                e.sample(
                    "collector_export_dropped_samples_total",
                    "",
                    &l,
                    get(c),
                    None,
                );
            }
        }
        e.sample(
            "collector_export_missed_snapshots_total",
            "",
            &[],
            self.missed_snapshots.load(Ordering::Relaxed) as f64,
            None,
        );
    }
}

/// The running exporters.
pub struct Exporter {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    pub metrics: Arc<ExportMetrics>,
}

impl Exporter {
    /// Starts pushing the snapshots of `store` as `node`. `probes_since` is when the probes
    /// attached (the start of their counters).
    pub fn start(
        config: ExportConfig,
        store: &StoreHandle,
        node: String,
        probes_since: SystemTime,
    ) -> anyhow::Result<Self> {
        config.check()?;
        let pacing = Pacing {
            timeout: config.timeout,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max.max(config.backoff_min),
        };
        let mut endpoints = Vec::new();
        for d in &config.destinations {
            let transport = Transport::new(d, &config.tls)?;
            let stats = Arc::new(DeliveryStats::default());
            let queue = Arc::new(Queue::new(config.queue_bytes, stats.clone()));
            let label = d.label();
            let sender = tokio::spawn(delivery::run(
                queue.clone(),
                transport,
                label.clone(),
                pacing,
                backoff::seed(&label),
            ));
            tracing::info!(protocol = d.protocol.as_str(), endpoint = %label, "pushing metrics");
            endpoints.push(Endpoint {
                protocol: d.protocol,
                label,
                queue,
                stats,
                sender,
            });
        }
        let missed = Arc::new(AtomicU64::new(0));
        let metrics = Arc::new(ExportMetrics {
            endpoints: endpoints
                .iter()
                .map(|e| (e.protocol, e.label.clone(), e.stats.clone()))
                .collect(),
            missed_snapshots: missed.clone(),
        });
        let (stop, stopped) = oneshot::channel();
        let tracker = Tracker::new(config.interval, probes_since);
        let task = tokio::spawn(run(
            config,
            store.clone(),
            node,
            tracker,
            endpoints,
            missed,
            stopped,
        ));
        Ok(Self {
            stop: Some(stop),
            task,
            metrics,
        })
    }

    /// Sends what the latest snapshot adds, then waits (up to the shutdown grace) for every
    /// queue to drain; what is left is dropped and counted.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            tracing::warn!("exporter task ended abnormally: {e}");
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    config: ExportConfig,
    store: StoreHandle,
    node: String,
    mut tracker: Tracker,
    endpoints: Vec<Endpoint>,
    missed: Arc<AtomicU64>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut snapshots = store.snapshots();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let node: Arc<str> = node.into();
    loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break; // the store stopped
                }
                let snapshot = snapshots.borrow_and_update().clone();
                if let Some(s) = snapshot {
                    tracker.observe(&s);
                    missed.store(tracker.missed_snapshots, Ordering::Relaxed);
                }
            }
            _ = tick.tick() => flush(&mut tracker, &config, &node, &endpoints).await,
            _ = &mut stopped => break,
        }
    }
    // Whatever the last snapshot added, then drain.
    if let Some(s) = snapshots.borrow().clone() {
        tracker.observe(&s);
    }
    flush(&mut tracker, &config, &node, &endpoints).await;
    for e in &endpoints {
        e.queue.close();
    }
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    for mut e in endpoints {
        if tokio::time::timeout_at(deadline, &mut e.sender)
            .await
            .is_err()
        {
            e.sender.abort();
            e.queue.abandon();
            tracing::warn!(
                endpoint = %e.label,
                "queue not drained within {:?}; the rest is dropped",
                config.shutdown_grace
            );
        }
    }
}

/// Encodes the points taken since the last round (once per protocol, off the async threads)
/// and queues them for every destination.
async fn flush(
    tracker: &mut Tracker,
    config: &ExportConfig,
    node: &Arc<str>,
    endpoints: &[Endpoint],
) {
    let batch = tracker.take();
    if batch.is_empty() || endpoints.is_empty() {
        return;
    }
    let wanted = |p: Protocol| endpoints.iter().any(|e| e.protocol == p);
    let (rw, otlp) = (
        wanted(Protocol::RemoteWrite),
        wanted(Protocol::OtlpGrpc) || wanted(Protocol::OtlpHttp),
    );
    let node = node.clone();
    let histograms = config.histograms;
    let encoded =
        tokio::task::spawn_blocking(move || encode(&batch, &node, histograms, rw, otlp)).await;
    let Ok((rw, otlp)) = encoded else {
        tracing::error!("encoding a batch failed; it is lost");
        return;
    };
    for e in endpoints {
        let requests = match e.protocol {
            Protocol::RemoteWrite => &rw,
            Protocol::OtlpGrpc | Protocol::OtlpHttp => &otlp,
        };
        for r in requests {
            e.queue.push(r.clone());
        }
    }
}

fn encode(
    batch: &Batch,
    node: &str,
    histograms: remote_write::Histograms,
    rw: bool,
    otlp: bool,
) -> (Vec<Request>, Vec<Request>) {
    let rw = if rw {
        remote_write::encode(batch, node, histograms)
            .into_iter()
            .map(|e| Request {
                body: Bytes::from(e.body),
                samples: e.samples,
            })
            .collect()
    } else {
        Vec::new()
    };
    let otlp = if otlp {
        otlp::encode(batch, node)
            .into_iter()
            .map(|e| Request {
                body: Bytes::from(e.body),
                samples: e.points,
            })
            .collect()
    } else {
        Vec::new()
    };
    (rw, otlp)
}
