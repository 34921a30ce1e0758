//! Authentication and authorization on every listener, against a stand-in of the Kubernetes
//! API's review endpoints (common::kube_api): the collector refuses unauthenticated callers
//! (UNAUTHENTICATED / 401) and unauthorized ones (PERMISSION_DENIED / 403) on gRPC and HTTP
//! and serves the authorized ones, whether they come with a client certificate or a bearer
//! token; health stays public. The aggregator, fed over mutual TLS, serves metrics.k8s.io
//! over HTTPS to a real `kubectl` with client certificates and to the API server's front proxy
//! (its certificate plus X-Remote-User), as an APIService backend must.

mod common;

use std::{path::Path, process::Command, sync::Arc, time::Duration};

use collector::{
    aggregate::{self, AggregateConfig, cluster::Freshness, discovery::Targets},
    app::{self, ServeConfig},
    net::{
        auth::{AuthSettings, AuthorizationMode, FrontProxy},
        client::{self, ClientTls},
        tls::ServerTlsFiles,
    },
    proto::{
        GetSummaryRequest, ListNodeMetricsRequest, WatchRequest,
        aggregator_client::AggregatorClient, collector_client::CollectorClient,
    },
};
use common::{
    certs::{ClientCert, ca, client_cert, leaf, write},
    https::https_get,
    kube_api::{self, FakeApi, Policy},
};
use rcgen::ExtendedKeyUsagePurpose;
use tonic::{Code, Request, metadata::MetadataValue};

const NODE: &str = "node-a";
const READER: &str = "system:serviceaccount:monitoring:prometheus";
const AGGREGATOR: &str = "collector-aggregator";
const ALICE: &str = "alice";

/// RBAC as a cluster would have it: Prometheus and the aggregator may read this node's stats
/// and metrics; alice may read metrics.k8s.io; nobody else anything.
fn policy() -> Policy {
    Arc::new(|user, _groups, spec| {
        let r = &spec["resourceAttributes"];
        let node_read = r["resource"] == "nodes"
            && r["group"] == ""
            && (r["subresource"] == "stats" || r["subresource"] == "metrics")
            && r["name"] == NODE
            && r["verb"] == "get";
        let metrics_api = r["group"] == "metrics.k8s.io"
            && ["get", "list", "watch"].contains(&r["verb"].as_str().unwrap_or_default());
        match user {
            READER | AGGREGATOR => node_read,
            ALICE => metrics_api,
            _ => false,
        }
    })
}

struct Pki {
    server_ca: std::path::PathBuf,
    server: ServerTlsFiles,
    client_ca: common::certs::Ca,
}

fn pki(dir: &Path) -> Pki {
    let server_ca = ca("server ca");
    let client_ca = ca("client ca");
    let (cert, key) = leaf(
        &server_ca,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    Pki {
        server_ca: write(dir, "server-ca.crt", &server_ca.pem),
        server: ServerTlsFiles {
            cert: write(dir, "server.crt", &cert),
            key: write(dir, "server.key", &key),
            client_ca: Some(write(dir, "client-ca.crt", &client_ca.pem)),
            front_proxy_ca: None,
        },
        client_ca,
    }
}

async fn start_api(dir: &Path) -> FakeApi {
    kube_api::start(
        dir,
        &[
            ("reader-token", READER, &["system:serviceaccounts"]),
            ("stranger-token", "system:serviceaccount:default:nosy", &[]),
        ],
        policy(),
    )
    .await
}

fn tls_as(pki: &Pki, cert: Option<&ClientCert>) -> ClientTls {
    ClientTls {
        ca: Some(pki.server_ca.clone()),
        cert: cert.map(|c| c.cert.clone()),
        key: cert.map(|c| c.key.clone()),
        domain: Some("localhost".into()),
    }
}

fn with_token<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(msg);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
        );
    }
    request
}

/// GetSummary and Watch as this caller: Ok, or the code they were refused with (both alike).
async fn grpc_as(addr: &str, tls: &ClientTls, token: Option<&str>) -> Result<(), Code> {
    let channel = client::connect(addr, tls).await.unwrap();
    let mut client = CollectorClient::new(channel);
    let summary = client
        .get_summary(with_token(GetSummaryRequest::default(), token))
        .await
        .map(|_| ())
        .map_err(|s| s.code());
    let watch = client
        .watch(with_token(WatchRequest::default(), token))
        .await
        .map(|_| ())
        .map_err(|s| s.code());
    assert_eq!(summary, watch, "GetSummary and Watch decide alike");
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_refuses_unauthenticated_and_unauthorized_callers_on_every_listener() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let api = start_api(dir.path()).await;
    let tree = common::node_tree(dir.path());
    let running = app::start(ServeConfig {
        tls: Some(pki.server.clone()),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        node_name: Some(NODE.into()),
        ignore_cgroup1: true,
        auth: AuthSettings {
            token_webhook: true,
            authorization: AuthorizationMode::Webhook,
            kube: api.config.clone(),
            ..AuthSettings::default()
        },
        ..common::cgroupfs_only(&tree)
    })
    .await
    .unwrap();
    let grpc = running.addr.to_string();
    let http = running.http_addr.unwrap();
    let aggregator = client_cert(dir.path(), &pki.client_ca, AGGREGATOR, &[]);
    let intruder = client_cert(dir.path(), &pki.client_ca, "intruder", &["system:masters"]);
    let anonymous = tls_as(&pki, None);

    // Health is public on both listeners (kubelet's probes carry no credentials).
    common::eventually(Duration::from_secs(10), "healthy", || {
        let ca = pki.server_ca.clone();
        async move {
            let (code, _) = https_get(http, &ca, None, &[], "/healthz").await.ok()?;
            (code == 200).then_some(())
        }
    })
    .await;
    let channel = client::connect(&grpc, &anonymous).await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");

    // gRPC: nobody, a bad token, an authenticated stranger, a certificate RBAC does not allow.
    assert_eq!(
        grpc_as(&grpc, &anonymous, None).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        grpc_as(&grpc, &anonymous, Some("forged")).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        grpc_as(&grpc, &anonymous, Some("stranger-token")).await,
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        grpc_as(&grpc, &tls_as(&pki, Some(&intruder)), None).await,
        Err(Code::PermissionDenied)
    );
    // ... and the callers RBAC allows.
    assert_eq!(
        grpc_as(&grpc, &anonymous, Some("reader-token")).await,
        Ok(())
    );
    assert_eq!(
        grpc_as(&grpc, &tls_as(&pki, Some(&aggregator)), None).await,
        Ok(())
    );
    // Reflection describes the API: it needs the same access.
    let channel = client::connect(&grpc, &anonymous).await.unwrap();
    let reflection = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([
            tonic_reflection::pb::v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                        String::new(),
                    ),
                ),
            },
        ]))
        .await;
    assert_eq!(
        reflection.err().map(|s| s.code()),
        Some(Code::Unauthenticated)
    );

    // HTTP: the same callers, the same answers, on kubelet's three endpoints.
    for path in ["/stats/summary", "/metrics/resource", "/metrics"] {
        let get = |client: Option<&ClientCert>, token: Option<&str>| {
            let header = token.map(|t| format!("Bearer {t}"));
            let ca = pki.server_ca.clone();
            let client = client.cloned();
            async move {
                let headers: Vec<(&str, &str)> = header
                    .as_deref()
                    .map(|h| vec![("Authorization", h)])
                    .unwrap_or_default();
                https_get(http, &ca, client.as_ref(), &headers, path)
                    .await
                    .unwrap()
                    .0
            }
        };
        assert_eq!(get(None, None).await, 401, "{path}");
        assert_eq!(get(None, Some("forged")).await, 401, "{path}");
        assert_eq!(get(None, Some("stranger-token")).await, 403, "{path}");
        assert_eq!(get(Some(&intruder), None).await, 403, "{path}");
        assert_eq!(get(None, Some("reader-token")).await, 200, "{path}");
        assert_eq!(get(Some(&aggregator), None).await, 200, "{path}");
    }
    // Token reviews are cached: one per token however many calls it made.
    assert_eq!(api.token_reviews("reader-token"), 1);
    assert_eq!(api.token_reviews("stranger-token"), 1);
    running.stop().await.unwrap();
}

/// The kubectl to test with: COLLECTOR_KUBECTL (cargo xtask test sets it to Debian's
/// kubernetes-client, fetched into its cache), else the first on PATH.
fn kubectl() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("COLLECTOR_KUBECTL") {
        return path.into();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("kubectl"))
                .find(|p| p.is_file())
        })
        .expect(
            "kubectl not found: cargo xtask test fetches Debian's kubernetes-client and sets \
             COLLECTOR_KUBECTL",
        )
}

fn kubeconfig(
    dir: &Path,
    name: &str,
    server: &str,
    ca: &Path,
    user: Option<&ClientCert>,
) -> std::path::PathBuf {
    let (users, context_user) = match user {
        Some(c) => (
            format!(
                "users:\n- name: caller\n  user:\n    client-certificate: {}\n    client-key: {}\n",
                c.cert.display(),
                c.key.display()
            ),
            "    user: caller\n",
        ),
        // kubectl prompts for a password when a user has no credentials at all; a token the
        // server does not accept is "no valid credentials" without the prompt.
        None => (
            "users:\n- name: caller\n  user:\n    token: not-a-valid-token\n".to_owned(),
            "    user: caller\n",
        ),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: metrics\n  cluster:\n    server: \
         {server}\n    certificate-authority: {}\n{users}contexts:\n- name: metrics\n  \
         context:\n    cluster: metrics\n{context_user}current-context: metrics\n",
        ca.display()
    );
    write(dir, name, &text)
}

/// `kubectl get --raw PATH`: stdout when it succeeded, stderr otherwise.
fn kubectl_raw(config: &Path, path: &str) -> Result<serde_json::Value, String> {
    let out = Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(config)
        .args(["get", "--raw", path])
        .output()
        .expect("running kubectl");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("kubectl printed JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregator_serves_metrics_k8s_io_to_kubectl_and_the_front_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let api = start_api(dir.path()).await;
    let tree = common::node_tree(dir.path());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clock = common::spawn_clock(vec![tree.clone()], stop.clone());
    // The collector: mutual TLS, RBAC through the API; the aggregator's certificate names it.
    let collector = app::start(ServeConfig {
        tls: Some(pki.server.clone()),
        node_name: Some(NODE.into()),
        ignore_cgroup1: true,
        auth: AuthSettings {
            authorization: AuthorizationMode::Webhook,
            kube: api.config.clone(),
            ..AuthSettings::default()
        },
        ..common::cgroupfs_only(&tree)
    })
    .await
    .unwrap();
    let as_aggregator = client_cert(dir.path(), &pki.client_ca, AGGREGATOR, &[]);
    let front_proxy_ca = ca("front-proxy ca");
    let front_proxy = client_cert(dir.path(), &front_proxy_ca, "front-proxy-client", &[]);
    let wrong_proxy = client_cert(dir.path(), &front_proxy_ca, "not-the-proxy", &[]);
    let aggregator = aggregate::start(AggregateConfig {
        targets: Targets {
            static_addresses: vec![collector.addr.to_string()],
            dns_names: Vec::new(),
            resolve_every: Duration::from_secs(30),
        },
        interval: Duration::from_millis(200),
        freshness: Freshness {
            stale_after: Duration::from_secs(10),
            forget_after: Duration::from_secs(60),
        },
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        client_tls: tls_as(&pki, Some(&as_aggregator)),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        server_tls: Some(ServerTlsFiles {
            front_proxy_ca: Some(write(dir.path(), "front-proxy-ca.crt", &front_proxy_ca.pem)),
            ..pki.server.clone()
        }),
        auth: AuthSettings {
            front_proxy: Some(FrontProxy {
                ca: dir.path().join("front-proxy-ca.crt"),
                allowed_names: vec!["front-proxy-client".into()],
            }),
            authorization: AuthorizationMode::Webhook,
            kube: api.config.clone(),
            ..AuthSettings::default()
        },
        ..AggregateConfig::default()
    })
    .await
    .unwrap();
    let http = aggregator.http_addr.unwrap();
    let server = format!("https://127.0.0.1:{}", http.port());
    let alice = client_cert(dir.path(), &pki.client_ca, ALICE, &["team"]);
    let bob = client_cert(dir.path(), &pki.client_ca, "bob", &[]);
    let as_alice = kubeconfig(
        dir.path(),
        "alice.kubeconfig",
        &server,
        &pki.server_ca,
        Some(&alice),
    );

    // kubectl with alice's client certificate: the node (fed over mTLS) and its pods.
    let nodes = common::eventually(Duration::from_secs(30), "node-a through kubectl", || {
        let config = as_alice.clone();
        async move {
            let list = kubectl_raw(&config, "/apis/metrics.k8s.io/v1beta1/nodes").ok()?;
            (list["items"].as_array()?.len() == 1).then_some(list)
        }
    })
    .await;
    assert_eq!(nodes["kind"], "NodeMetricsList");
    assert_eq!(nodes["items"][0]["metadata"]["name"], NODE);
    let pods = common::eventually(Duration::from_secs(30), "pods through kubectl", || {
        let config = as_alice.clone();
        async move {
            let list = kubectl_raw(&config, "/apis/metrics.k8s.io/v1beta1/pods").ok()?;
            (!list["items"].as_array()?.is_empty()).then_some(list)
        }
    })
    .await;
    assert_eq!(pods["kind"], "PodMetricsList");
    assert!(pods["items"][0]["containers"][0]["usage"]["cpu"].is_string());

    // kubectl as bob (RBAC says no) and without valid credentials.
    let as_bob = kubeconfig(
        dir.path(),
        "bob.kubeconfig",
        &server,
        &pki.server_ca,
        Some(&bob),
    );
    let err = kubectl_raw(&as_bob, "/apis/metrics.k8s.io/v1beta1/nodes").unwrap_err();
    assert!(err.contains("Forbidden"), "{err}");
    let as_nobody = kubeconfig(
        dir.path(),
        "nobody.kubeconfig",
        &server,
        &pki.server_ca,
        None,
    );
    let err = kubectl_raw(&as_nobody, "/apis/metrics.k8s.io/v1beta1/pods").unwrap_err();
    assert!(
        err.contains("must be logged in") && err.contains("Unauthorized"),
        "{err}"
    );

    // The front proxy: its certificate, and the user in X-Remote-User.
    let nodes_path = "/apis/metrics.k8s.io/v1beta1/nodes";
    let get = |client: &ClientCert, headers: &'static [(&'static str, &'static str)]| {
        let ca = pki.server_ca.clone();
        let client = client.clone();
        async move {
            https_get(http, &ca, Some(&client), headers, nodes_path)
                .await
                .unwrap()
        }
    };
    let (code, body) = get(
        &front_proxy,
        &[("X-Remote-User", ALICE), ("X-Remote-Group", "team")],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(NODE), "{body}");
    assert_eq!(get(&front_proxy, &[("X-Remote-User", "bob")]).await.0, 403);
    assert_eq!(get(&front_proxy, &[]).await.0, 401, "no X-Remote-User");
    assert_eq!(
        get(&wrong_proxy, &[("X-Remote-User", ALICE)]).await.0,
        401,
        "a certificate of the front-proxy CA that is not an allowed name"
    );
    // The headers mean nothing from anyone else: bob cannot claim to be alice.
    assert_eq!(get(&bob, &[("X-Remote-User", ALICE)]).await.0, 403);
    // Health is public.
    assert_eq!(
        https_get(http, &pki.server_ca, None, &[], "/healthz")
            .await
            .unwrap()
            .0,
        200
    );

    // The aggregator's gRPC API: refused without credentials, served to alice.
    let mut anonymous = AggregatorClient::new(
        client::connect(&aggregator.grpc_addr.to_string(), &tls_as(&pki, None))
            .await
            .unwrap(),
    );
    let err = anonymous
        .list_node_metrics(ListNodeMetricsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut as_alice_grpc = AggregatorClient::new(
        client::connect(
            &aggregator.grpc_addr.to_string(),
            &tls_as(&pki, Some(&alice)),
        )
        .await
        .unwrap(),
    );
    let list = as_alice_grpc
        .list_node_metrics(ListNodeMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.nodes.len(), 1);
    assert!(list.collectors.iter().all(|c| c.connected), "{list:?}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    clock.join().unwrap();
    aggregator.stop().await.unwrap();
    collector.stop().await.unwrap();
}
