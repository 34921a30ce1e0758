//! A stand-in for the Kubernetes API's two review endpoints (TokenReview and
//! SubjectAccessReview, authentication.k8s.io/v1 and authorization.k8s.io/v1, with the real
//! request and response shapes) over TLS, for the delegated-auth tests: this machine has no
//! kube-apiserver. It checks the caller's own bearer token like the API server would, knows a
//! fixed set of tokens, and allows what `policy` says; it counts the reviews it answers.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use axum::{Json, Router, extract::State, http::HeaderMap, routing::post};
use collector::net::{
    accept,
    kube::KubeApiConfig,
    tls::{Protocol, ServerTlsFiles, TlsReloader},
};
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::{Value, json};

use super::certs::{ca, leaf, write};

/// The token the collector or aggregator presents to the API.
pub const API_TOKEN: &str = "service-account-token";

/// Who may do what: (user, groups, the review's spec) -> allowed.
pub type Policy = Arc<dyn Fn(&str, &[String], &Value) -> bool + Send + Sync>;

#[derive(Clone)]
struct FakeState {
    /// Bearer token -> (user, groups) of tokens the API knows.
    tokens: Arc<HashMap<String, (String, Vec<String>)>>,
    policy: Policy,
    token_reviews: Arc<Mutex<HashMap<String, usize>>>,
    access_reviews: Arc<Mutex<usize>>,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    pub config: KubeApiConfig,
    state: FakeState,
}

impl FakeApi {
    /// TokenReviews answered for `token`.
    pub fn token_reviews(&self, token: &str) -> usize {
        *self
            .state
            .token_reviews
            .lock()
            .unwrap()
            .get(token)
            .unwrap_or(&0)
    }

    pub fn access_reviews(&self) -> usize {
        *self.state.access_reviews.lock().unwrap()
    }
}

/// Starts the fake API on loopback; its certificate files live in `dir`.
pub async fn start(dir: &Path, tokens: &[(&str, &str, &[&str])], policy: Policy) -> FakeApi {
    let api_ca = ca("fake kube-apiserver ca");
    let (cert, key) = leaf(
        &api_ca,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let files = ServerTlsFiles {
        cert: write(dir, "api.crt", &cert),
        key: write(dir, "api.key", &key),
        client_ca: None,
        front_proxy_ca: None,
    };
    let ca_file = write(dir, "api-ca.crt", &api_ca.pem);
    let token_file = write(dir, "api-token", API_TOKEN);
    let state = FakeState {
        tokens: Arc::new(
            tokens
                .iter()
                .map(|(t, u, g)| {
                    (
                        t.to_string(),
                        (u.to_string(), g.iter().map(|s| s.to_string()).collect()),
                    )
                })
                .collect(),
        ),
        policy,
        token_reviews: Arc::default(),
        access_reviews: Arc::default(),
    };
    let app = Router::new()
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            post(access_review),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = TlsReloader::load_for(files, Protocol::Http1).unwrap();
    let incoming = accept::incoming(listener, Some(tls), 64, Arc::default()).unwrap();
    tokio::spawn(async move {
        axum::serve(
            incoming,
            app.into_make_service_with_connect_info::<accept::Peer>(),
        )
        .await
    });
    FakeApi {
        addr,
        config: KubeApiConfig {
            server: Some(format!("https://127.0.0.1:{}", addr.port())),
            ca: Some(ca_file),
            token_file: Some(token_file),
        },
        state,
    }
}

fn caller_ok(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {API_TOKEN}"))
}

async fn token_review(
    State(state): State<FakeState>,
    headers: HeaderMap,
    Json(review): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    if !caller_ok(&headers) {
        return (axum::http::StatusCode::UNAUTHORIZED, Json(json!({})));
    }
    assert_eq!(review["kind"], "TokenReview");
    assert_eq!(review["apiVersion"], "authentication.k8s.io/v1");
    let token = review["spec"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    *state
        .token_reviews
        .lock()
        .unwrap()
        .entry(token.clone())
        .or_default() += 1;
    let status = match state.tokens.get(&token) {
        Some((user, groups)) => json!({
            "authenticated": true,
            "user": {"username": user, "groups": groups},
        }),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    let mut answer = review.clone();
    answer["status"] = status;
    (axum::http::StatusCode::CREATED, Json(answer))
}

async fn access_review(
    State(state): State<FakeState>,
    headers: HeaderMap,
    Json(review): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    if !caller_ok(&headers) {
        return (axum::http::StatusCode::UNAUTHORIZED, Json(json!({})));
    }
    assert_eq!(review["kind"], "SubjectAccessReview");
    assert_eq!(review["apiVersion"], "authorization.k8s.io/v1");
    *state.access_reviews.lock().unwrap() += 1;
    let spec = &review["spec"];
    let user = spec["user"].as_str().unwrap_or_default();
    let groups: Vec<String> = spec["groups"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let allowed = (state.policy)(user, &groups, spec);
    let mut answer = review.clone();
    answer["status"] =
        json!({"allowed": allowed, "reason": if allowed { "RBAC: allowed" } else { "" }});
    (axum::http::StatusCode::CREATED, Json(answer))
}
