//! The cluster view as metrics.k8s.io/v1beta1 JSON (NodeMetrics, PodMetrics and their lists),
//! at the paths the Kubernetes API serves them, so existing tooling can read it.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use super::{cluster::Cluster, quantity};
use crate::{
    net::auth::{self, Attributes, AttributesOf, Auth, Target},
    proto,
    server::filter::check_dns_label,
    unix_time::{now_unix_nano, rfc3339_seconds},
};

const GROUP_VERSION: &str = "metrics.k8s.io/v1beta1";
const PREFIX: &str = "/apis/metrics.k8s.io/v1beta1";

/// The metrics.k8s.io endpoints behind `auth` (health stays public).
pub fn router(cluster: Arc<Cluster>, auth: Arc<Auth>) -> Router {
    let attributes: AttributesOf = Arc::new(metrics_api_attributes);
    router_without_auth(cluster).layer(axum::middleware::from_fn_with_state(
        (auth, attributes),
        auth::http_gate,
    ))
}

/// What a request needs, as the API server's authorizer sees the same request: the
/// metrics.k8s.io resource, verb (list for collections) and namespace; other paths as
/// non-resource URLs; health public.
pub fn metrics_api_attributes(method: &axum::http::Method, path: &str) -> Option<Vec<Attributes>> {
    if path == "/healthz" || path == "/readyz" {
        return None;
    }
    let resource = |verb, resource, namespace: &str, name: &str| Attributes {
        verb,
        target: Target::Resource {
            group: "metrics.k8s.io",
            resource,
            subresource: "",
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        },
    };
    let get = auth::verb(method);
    let rest = path.strip_prefix(PREFIX).unwrap_or("");
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let what = match (path.starts_with(&format!("{PREFIX}/")), parts.as_slice()) {
        (true, ["nodes"]) => resource("list", "nodes", "", ""),
        (true, ["nodes", name]) => resource(get, "nodes", "", name),
        (true, ["pods"]) => resource("list", "pods", "", ""),
        (true, ["namespaces", ns, "pods"]) => resource("list", "pods", ns, ""),
        (true, ["namespaces", ns, "pods", name]) => resource(get, "pods", ns, name),
        _ => Attributes {
            verb: get,
            target: Target::Path(path.to_owned()),
        },
    };
    Some(vec![what])
}

fn router_without_auth(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route(PREFIX, get(resources))
        .route(&format!("{PREFIX}/nodes"), get(list_nodes))
        .route(&format!("{PREFIX}/nodes/{{name}}"), get(one_node))
        .route(&format!("{PREFIX}/pods"), get(list_all_pods))
        .route(&format!("{PREFIX}/namespaces/{{ns}}/pods"), get(list_pods))
        .route(
            &format!("{PREFIX}/namespaces/{{ns}}/pods/{{name}}"),
            get(one_pod),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(cluster)
}

/// The pod's name in the API: its name, or its uid while the node has no CRI names.
fn pod_name(p: &proto::PodMetrics) -> &str {
    if p.name.is_empty() { &p.uid } else { &p.name }
}

fn node_json(n: &proto::NodeMetrics) -> Value {
    json!({
        "kind": "NodeMetrics",
        "apiVersion": GROUP_VERSION,
        "metadata": {
            "name": n.name,
            "creationTimestamp": rfc3339_seconds(now_unix_nano()),
        },
        "timestamp": rfc3339_seconds(n.timestamp_unix_nano),
        "window": quantity::go_duration(Duration::from_nanos(n.window_nano_seconds)),
        "usage": {
            "cpu": quantity::cpu(n.cpu_nano_cores.unwrap_or_default()),
            "memory": quantity::memory(n.memory_working_set_bytes.unwrap_or_default()),
        },
    })
}

fn pod_json(p: &proto::PodMetrics) -> Value {
    let containers: Vec<Value> = p
        .containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "usage": {
                    "cpu": quantity::cpu(c.cpu_nano_cores),
                    "memory": quantity::memory(c.memory_working_set_bytes),
                },
            })
        })
        .collect();
    json!({
        "kind": "PodMetrics",
        "apiVersion": GROUP_VERSION,
        "metadata": {
            "name": pod_name(p),
            "namespace": p.namespace,
            "creationTimestamp": rfc3339_seconds(now_unix_nano()),
            "labels": {},
        },
        "timestamp": rfc3339_seconds(p.timestamp_unix_nano),
        "window": quantity::go_duration(Duration::from_nanos(p.window_nano_seconds)),
        "containers": containers,
    })
}

fn list(kind: &str, items: Vec<Value>) -> Json<Value> {
    Json(json!({
        "kind": kind,
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": items,
    }))
}

/// A Kubernetes Status object, as the API server answers errors.
fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

fn not_found(what: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{what} \"{name}\" not found"),
    )
}

/// Nodes with usable metrics: fresh and with a rate, like metrics-server lists them.
fn usable_nodes(cluster: &Cluster) -> Vec<proto::NodeMetrics> {
    cluster
        .nodes()
        .iter()
        .filter(|n| !n.stale && n.entry.metrics.cpu_nano_cores.is_some())
        .map(|n| n.metrics())
        .collect()
}

async fn resources() -> Json<Value> {
    let resource = |name: &str, kind: &str, namespaced: bool| {
        json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
               "verbs": ["get", "list"]})
    };
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [resource("nodes", "NodeMetrics", false), resource("pods", "PodMetrics", true)],
    }))
}

async fn list_nodes(State(cluster): State<Arc<Cluster>>) -> Json<Value> {
    list(
        "NodeMetricsList",
        usable_nodes(&cluster).iter().map(node_json).collect(),
    )
}

async fn one_node(State(cluster): State<Arc<Cluster>>, Path(name): Path<String>) -> Response {
    match usable_nodes(&cluster).iter().find(|n| n.name == name) {
        Some(n) => Json(node_json(n)).into_response(),
        None => not_found("nodemetrics", &name),
    }
}

async fn list_all_pods(State(cluster): State<Arc<Cluster>>) -> Json<Value> {
    list(
        "PodMetricsList",
        cluster.pods(None).iter().map(pod_json).collect(),
    )
}

async fn list_pods(State(cluster): State<Arc<Cluster>>, Path(ns): Path<String>) -> Response {
    if let Err(e) = check_dns_label("namespace", &ns) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            e.message().to_owned(),
        );
    }
    list(
        "PodMetricsList",
        cluster.pods(Some(&ns)).iter().map(pod_json).collect(),
    )
    .into_response()
}

async fn one_pod(
    State(cluster): State<Arc<Cluster>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match cluster.pods(Some(&ns)).iter().find(|p| pod_name(p) == name) {
        Some(p) => Json(pod_json(p)).into_response(),
        None => not_found("podmetrics", &name),
    }
}
