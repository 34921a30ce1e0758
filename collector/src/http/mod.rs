//! The collector's HTTP endpoints, for what speaks kubelet or Prometheus rather than gRPC:
//! - `/stats/summary[?only_cpu_and_memory=true]` (GET or POST): kubelet's Summary API JSON;
//! - `/metrics/resource`: kubelet's resource metrics, which metrics-server scrapes;
//! - `/metrics`: the collector's own metrics and the eBPF extras;
//! - `/healthz`: 200 once the first sample is in, 503 before.
//!
//! Every handler reads the latest snapshot the store published; none waits for a pass.

mod own;
pub mod prom;
mod resource;
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

use crate::{server::ServerStats, store::StoreHandle};

/// Plaintext HTTP default: loopback, next to the gRPC port's family.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50080";

#[derive(Clone)]
struct AppState {
    store: StoreHandle,
    server: Arc<ServerStats>,
}

pub fn router(store: StoreHandle, server: Arc<ServerStats>) -> Router {
    Router::new()
        .route("/stats/summary", get(stats_summary).post(stats_summary))
        .route("/metrics/resource", get(metrics_resource))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(AppState { store, server })
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
    text(own::render(app.store.latest().as_deref(), &app.server))
}

async fn healthz(State(app): State<AppState>) -> Response {
    match app.store.latest() {
        Some(_) => "ok\n".into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "no sample yet\n".into()),
    }
}
