//! The collector's HTTP endpoints, for what speaks kubelet or Prometheus rather than gRPC:
//! - `/stats/summary[?only_cpu_and_memory=true]` (GET or POST): kubelet's Summary API JSON;
//! - `/metrics/resource`: kubelet's resource metrics, which metrics-server scrapes;
//! - `/metrics`: the collector's own metrics and the eBPF extras;
//! - `/healthz` and `/readyz`: 200 while the newest sample is fresh; 503 with the reason before
//!   the first sample, when it is too old (passes fail or hang) or when the store task is gone.
//!
//! Every handler reads the latest snapshot the store published; none waits for a pass.

pub mod own;
pub mod prom;
pub mod resource;
mod summary_json;

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

pub use summary_json::render as summary_document;

use crate::{
    net::auth::{self, Attributes, AttributesOf, Auth, Target},
    server::ServerStats,
    store::StoreHandle,
};

/// Plaintext HTTP default: loopback, next to the gRPC port's family.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50080";

/// Families a later layer adds to `/metrics` (the exporters' delivery counters), which this
/// layer cannot name.
pub trait MoreMetrics: Send + Sync {
    fn write(&self, e: &mut prom::Exposition);
}

#[derive(Clone)]
struct AppState {
    store: StoreHandle,
    server: Arc<ServerStats>,
    more: Option<Arc<dyn MoreMetrics>>,
}

/// The endpoints, behind `auth` (health stays public); `more` adds families to `/metrics`
/// (the exporters' counters).
pub fn router(
    store: StoreHandle,
    server: Arc<ServerStats>,
    more: Option<Arc<dyn MoreMetrics>>,
    auth: Arc<Auth>,
) -> Router {
    let node = store.node.node_name.clone();
    Router::new()
        .route("/stats/summary", get(stats_summary).post(stats_summary))
        .route("/metrics/resource", get(metrics_resource))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(healthz))
        .with_state(AppState {
            store,
            server,
            more,
        })
        .layer(axum::middleware::from_fn_with_state(
            (auth, kubelet_attributes(node)),
            auth::http_gate,
        ))
}

/// Paths anyone may read: health says nothing about tenants (kubelet's probes call it).
const PUBLIC_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// kubelet's mapping of its paths to the `nodes` subresources it authorizes: `/stats/*` is
/// `nodes/stats`, `/metrics` and `/metrics/*` are `nodes/metrics`, anything else
/// `nodes/proxy`; the verb from the method, the name this node's.
pub fn kubelet_attributes(node: String) -> AttributesOf {
    Arc::new(move |method: &axum::http::Method, path: &str| {
        if PUBLIC_PATHS.contains(&path) {
            return None;
        }
        let subresource = if path == "/stats" || path.starts_with("/stats/") {
            "stats"
        } else if path == "/metrics" || path.starts_with("/metrics/") {
            "metrics"
        } else {
            "proxy"
        };
        Some(vec![Attributes {
            verb: auth::verb(method),
            target: Target::Resource {
                group: "",
                resource: "nodes",
                subresource,
                name: node.clone(),
                namespace: String::new(),
            },
        }])
    })
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, prom::CONTENT_TYPE)], body).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

/// kubelet reads `only_cpu_and_memory` with Go's `ParseForm`: from the query string and, for a
/// form-encoded POST, from the body as well; the flag holds only when it appears once, as
/// exactly "true".
async fn stats_summary(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body: &[u8] = if form { &body } else { &[] };
    let values: Vec<String> = form_urlencoded::parse(body)
        .chain(form_urlencoded::parse(
            query.as_deref().unwrap_or("").as_bytes(),
        ))
        .filter(|(k, _)| k == "only_cpu_and_memory")
        .map(|(_, v)| v.into_owned())
        .collect();
    let only = summary_json::only_cpu_and_memory(values.iter().map(String::as_str));
    match app.store.latest() {
        Some(snapshot) => Json(summary_json::render(&snapshot, only)).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no sample taken yet; retry in a second\n".into(),
        ),
    }
}

async fn metrics_resource(State(app): State<AppState>) -> Response {
    text(resource::render(app.store.latest().as_deref()))
}

async fn metrics(State(app): State<AppState>) -> Response {
    text(own::render(
        app.store.latest().as_deref(),
        &app.server,
        app.more.as_deref(),
    ))
}

async fn healthz(State(app): State<AppState>) -> Response {
    let health = app.store.health();
    if health.is_serving() {
        "ok\n".into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, format!("{health}\n"))
    }
}
