//! The aggregator's gRPC API: `collector.v1.Aggregator`.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tonic::{Request, Response, Status};

use super::cluster::Cluster;
use crate::{
    net::auth::{Attributes, AttributesOf, Target},
    proto::{self, aggregator_server::Aggregator},
    server::{
        Admission, Limits,
        filter::check_dns_label,
        is_public_grpc,
        outbox::{self, End, Outbox, SubscriberStream},
        requested_interval,
    },
    unix_time::unix_nanos,
};

pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(10);
const MIN_WATCH_INTERVAL: Duration = Duration::from_secs(1);
const MAX_WATCH_INTERVAL: Duration = Duration::from_secs(600);
/// Messages a cluster subscriber may have queued before it counts as too slow.
const SUBSCRIBER_BUFFER: usize = 8;

/// What each aggregator call needs when authorization is on: the metrics.k8s.io resources
/// it returns, cluster-wide (the namespace is inside the request body, which authorization
/// does not read), as an HPA's or `kubectl top`'s RBAC grants them.
pub fn aggregator_attributes() -> AttributesOf {
    Arc::new(|_method: &http::Method, path: &str| {
        if is_public_grpc(path) {
            return None;
        }
        let on = |verb, resource| Attributes {
            verb,
            target: Target::Resource {
                group: "metrics.k8s.io",
                resource,
                subresource: "",
                name: String::new(),
                namespace: String::new(),
            },
        };
        let method = path.rsplit('/').next().unwrap_or_default();
        Some(match method {
            "ListPodMetrics" => vec![on("list", "pods")],
            "Watch" => vec![on("watch", "nodes"), on("watch", "pods")],
            // ListNodeMetrics, and reflection (how clients find the calls).
            _ => vec![on("list", "nodes")],
        })
    })
}

pub struct AggregatorService {
    cluster: Arc<Cluster>,
    admission: Admission,
}

impl AggregatorService {
    pub fn new(cluster: Arc<Cluster>, limits: &Limits) -> Self {
        Self {
            cluster,
            admission: Admission::new(limits.max_watch_subscribers, Default::default()),
        }
    }
}

fn namespace(ns: &str) -> Result<Option<&str>, Status> {
    if ns.is_empty() {
        return Ok(None);
    }
    check_dns_label("namespace", ns)?;
    Ok(Some(ns))
}

#[tonic::async_trait]
impl Aggregator for AggregatorService {
    async fn list_node_metrics(
        &self,
        _request: Request<proto::ListNodeMetricsRequest>,
    ) -> Result<Response<proto::ListNodeMetricsResponse>, Status> {
        Ok(Response::new(proto::ListNodeMetricsResponse {
            nodes: self.cluster.nodes().iter().map(|n| n.metrics()).collect(),
            collectors: self.cluster.targets(),
        }))
    }

    async fn list_pod_metrics(
        &self,
        request: Request<proto::ListPodMetricsRequest>,
    ) -> Result<Response<proto::ListPodMetricsResponse>, Status> {
        let ns = namespace(&request.get_ref().namespace)?;
        Ok(Response::new(proto::ListPodMetricsResponse {
            pods: self.cluster.pods(ns),
        }))
    }

    type WatchStream = SubscriberStream<proto::ClusterUpdate>;

    async fn watch(
        &self,
        request: Request<proto::ClusterWatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let interval = requested_interval(
            req.interval_ms,
            DEFAULT_WATCH_INTERVAL,
            MIN_WATCH_INTERVAL..=MAX_WATCH_INTERVAL,
        )?;
        let ns = namespace(&req.namespace)?.map(str::to_owned);
        let slot = self
            .admission
            .admit("cluster Watch", "--max-watch-subscribers")?;
        let (out, stream) = outbox::channel(outbox::Bounds {
            messages: SUBSCRIBER_BUFFER,
            bytes: outbox::SUBSCRIBER_QUEUE_BYTES,
        });
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            let end = watch(&cluster, interval, ns, &out).await;
            out.finish(end, "cluster Watch");
        });
        Ok(Response::new(Admission::hold(slot, stream)))
    }
}

/// What one cluster subscriber was last sent (nodes without their last-heard time).
#[derive(Default)]
struct Sent {
    nodes: HashMap<String, proto::NodeMetrics>,
    pods: HashMap<String, proto::PodMetrics>,
}

async fn watch(
    cluster: &Cluster,
    interval: Duration,
    namespace: Option<String>,
    out: &Outbox<proto::ClusterUpdate>,
) -> End {
    let mut sent = Sent::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for sequence in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = out.closed() => return End::Closed,
        }
        let update = diff(cluster, namespace.as_deref(), &mut sent, sequence);
        if let Err(end) = out.try_send(update) {
            return end;
        }
    }
    End::Closed
}

fn diff(
    cluster: &Cluster,
    namespace: Option<&str>,
    sent: &mut Sent,
    sequence: u64,
) -> proto::ClusterUpdate {
    let snapshot = sequence == 0;
    let nodes: HashMap<String, proto::NodeMetrics> = cluster
        .nodes()
        .iter()
        .map(|n| (n.entry.metrics.name.clone(), n.metrics()))
        .collect();
    // A node's metrics change only through a new point or staleness; last_heard moves with
    // every message and alone is not a change worth sending.
    let comparable = |n: &proto::NodeMetrics| proto::NodeMetrics {
        last_heard_unix_nano: 0,
        ..n.clone()
    };
    let pods: HashMap<String, proto::PodMetrics> = cluster
        .pods(namespace)
        .into_iter()
        .map(|p| (p.uid.clone(), p))
        .collect();
    let mut update = proto::ClusterUpdate {
        sequence,
        snapshot,
        timestamp_unix_nano: unix_nanos(SystemTime::now()),
        ..Default::default()
    };
    for (name, n) in &nodes {
        if snapshot || sent.nodes.get(name) != Some(&comparable(n)) {
            update.nodes.push(n.clone());
        }
    }
    for (uid, p) in &pods {
        if snapshot || sent.pods.get(uid) != Some(p) {
            update.pods.push(p.clone());
        }
    }
    update.removed_nodes = sent
        .nodes
        .keys()
        .filter(|n| !nodes.contains_key(*n))
        .cloned()
        .collect();
    update.removed_pod_uids = sent
        .pods
        .keys()
        .filter(|u| !pods.contains_key(*u))
        .cloned()
        .collect();
    update.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    update.pods.sort_by(|a, b| a.uid.cmp(&b.uid));
    update.removed_nodes.sort();
    update.removed_pod_uids.sort();
    sent.nodes = nodes
        .iter()
        .map(|(k, n)| (k.clone(), comparable(n)))
        .collect();
    sent.pods = pods;
    update
}
