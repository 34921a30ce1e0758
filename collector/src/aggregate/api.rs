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
/// Pods per ListPodMetrics page when the request sets no limit (~1 MiB), and the most a
/// request may ask for.
pub const DEFAULT_LIST_LIMIT: usize = 5_000;
pub const MAX_LIST_LIMIT: usize = 10_000;
/// Cluster Watch messages above this are split into chunks.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// How long the rest of a chunked message may wait for room in a subscriber's queue.
const CHUNK_PATIENCE: Duration = Duration::from_secs(10);

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
    queue_budget: Arc<outbox::Budget>,
}

impl AggregatorService {
    pub fn new(cluster: Arc<Cluster>, limits: &Limits) -> Self {
        Self {
            cluster,
            admission: Admission::new(limits.max_watch_subscribers, Default::default()),
            queue_budget: outbox::Budget::new(outbox::QUEUE_BUDGET_BYTES),
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
        let req = request.get_ref();
        let ns = namespace(&req.namespace)?;
        let limit = match req.limit as usize {
            0 => DEFAULT_LIST_LIMIT,
            n if n <= MAX_LIST_LIMIT => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "limit = {n} is above the most a page may hold, {MAX_LIST_LIMIT}"
                )));
            }
        };
        let after = page_start(&req.continue_token)?;
        let (pods, continue_token) = page(self.cluster.pods(ns), after.as_ref(), limit);
        Ok(Response::new(proto::ListPodMetricsResponse {
            pods,
            continue_token,
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
            budget: self.queue_budget.clone(),
        });
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            let end = watch(&cluster, interval, ns, &out).await;
            out.finish(end, "cluster Watch");
        });
        Ok(Response::new(Admission::hold(slot, stream)))
    }
}

/// A pod's place in the list's order (namespace, name, uid, node: the same pod can be reported
/// by two nodes' collectors for a moment), which a continue token names.
type PodKey = (String, String, String, String);

fn pod_key(p: &proto::PodMetrics) -> PodKey {
    (
        p.namespace.clone(),
        p.name.clone(),
        p.uid.clone(),
        p.node.clone(),
    )
}

/// The key a continue token names; INVALID_ARGUMENT for one this server did not hand out.
fn page_start(token: &str) -> Result<Option<PodKey>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    // Namespaces and names are DNS names and uids are UUIDs: none holds a '/'.
    let mut parts = token.splitn(4, '/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(name), Some(uid), Some(node)) if !uid.is_empty() => Ok(Some((
            ns.to_owned(),
            name.to_owned(),
            uid.to_owned(),
            node.to_owned(),
        ))),
        _ => Err(Status::invalid_argument(format!(
            "continue_token {token:?} is not one this server returned"
        ))),
    }
}

/// Up to `limit` pods of the sorted `pods` after `after`, and the token of the next page when
/// more follow. Pages are cut from the cluster view as it is when each is asked for.
fn page(
    mut pods: Vec<proto::PodMetrics>,
    after: Option<&PodKey>,
    limit: usize,
) -> (Vec<proto::PodMetrics>, String) {
    pods.sort_by_cached_key(pod_key);
    let mut rest = pods
        .into_iter()
        .filter(|p| after.is_none_or(|a| pod_key(p) > *a))
        .peekable();
    let page: Vec<proto::PodMetrics> = rest.by_ref().take(limit).collect();
    let token = match (rest.peek(), page.last()) {
        (Some(_), Some(last)) => format!(
            "{}/{}/{}/{}",
            last.namespace, last.name, last.uid, last.node
        ),
        _ => String::new(),
    };
    (page, token)
}

/// The chunks of `update`, each encoding to at most `limit` bytes unless one entry alone is
/// bigger: nodes then pods spread over chunks that share the sequence; every chunk but the
/// last has `more`; the removals travel in the first.
pub fn split(mut update: proto::ClusterUpdate, limit: usize) -> Vec<proto::ClusterUpdate> {
    use prost::Message as _;
    if update.encoded_len() <= limit {
        return vec![update];
    }
    let nodes = std::mem::take(&mut update.nodes);
    let pods = std::mem::take(&mut update.pods);
    let head = proto::ClusterUpdate {
        sequence: update.sequence,
        snapshot: update.snapshot,
        timestamp_unix_nano: update.timestamp_unix_nano,
        ..Default::default()
    };
    let entry = |len: usize| 1 + prost::encoding::encoded_len_varint(len as u64) + len;
    let mut chunks = Vec::new();
    let mut current = update;
    let mut size = current.encoded_len();
    let mut room_for = |current: &mut proto::ClusterUpdate, size: &mut usize, len: usize| {
        let empty = current.nodes.is_empty() && current.pods.is_empty();
        if *size + len > limit && !empty {
            chunks.push(std::mem::replace(current, head.clone()));
            *size = head.encoded_len();
        }
        *size += len;
    };
    for n in nodes {
        room_for(&mut current, &mut size, entry(n.encoded_len()));
        current.nodes.push(n);
    }
    for p in pods {
        room_for(&mut current, &mut size, entry(p.encoded_len()));
        current.pods.push(p);
    }
    chunks.push(current);
    let last = chunks.len() - 1;
    for (i, c) in chunks.iter_mut().enumerate() {
        c.more = i < last;
    }
    chunks
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
        let mut chunks = split(update, MAX_MESSAGE_BYTES).into_iter();
        // A full queue when a message is due means too slow; the rest of a message may wait.
        if let Some(first) = chunks.next()
            && let Err(end) = out.try_send(first)
        {
            return end;
        }
        for rest in chunks {
            if let Err(end) = out.send_within(rest, CHUNK_PATIENCE).await {
                return end;
            }
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

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn pod(ns: &str, name: &str, uid: &str) -> proto::PodMetrics {
        proto::PodMetrics {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
            ..Default::default()
        }
    }

    #[test]
    fn pages_cover_the_list_once_and_a_foreign_token_is_refused() {
        let pods: Vec<_> = (0..25)
            .map(|i| {
                pod(
                    &format!("ns{}", i % 3),
                    &format!("p{i:02}"),
                    &format!("u{i}"),
                )
            })
            .collect();
        let mut sorted = pods.clone();
        sorted.sort_by_key(pod_key);
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let after = page_start(&token).unwrap();
            let (page, next) = page(sorted.clone(), after.as_ref(), 10);
            assert!(page.len() <= 10);
            seen.extend(page);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, sorted);
        assert!(page_start("no-slashes").is_err());
    }

    #[test]
    fn a_big_cluster_update_is_chunked_under_the_limit_and_loses_nothing() {
        let update = proto::ClusterUpdate {
            sequence: 3,
            snapshot: true,
            removed_pod_uids: vec!["gone".into()],
            nodes: (0..50)
                .map(|i| proto::NodeMetrics {
                    name: format!("node-{i:04}"),
                    ..Default::default()
                })
                .collect(),
            pods: (0..5_000)
                .map(|i| pod("default", &format!("pod-{i:06}"), &format!("uid-{i:032}")))
                .collect(),
            ..Default::default()
        };
        let limit = 16 * 1024;
        let chunks = split(update.clone(), limit);
        assert!(chunks.len() > 10);
        let mut joined = chunks[0].clone();
        for (i, c) in chunks.iter().enumerate() {
            assert!(c.encoded_len() <= limit, "chunk {i}: {}", c.encoded_len());
            assert_eq!(
                (c.sequence, c.snapshot, c.more),
                (3, true, i + 1 < chunks.len())
            );
            if i > 0 {
                assert!(c.removed_pod_uids.is_empty());
                joined.nodes.extend(c.nodes.iter().cloned());
                joined.pods.extend(c.pods.iter().cloned());
            }
        }
        joined.more = false;
        assert_eq!(joined, update);
    }
}
