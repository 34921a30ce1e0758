//! `collector aggregate`: subscribes to many collectors and serves the cluster view, like
//! metrics-server but fed by push (Watch streams) instead of scraping.
//!
//! Data flow: [`discovery`] keeps one [`feed`] per collector address; each feed reduces its
//! stream into a [`node_state::NodeState`] and publishes it into the [`cluster::Cluster`], which
//! the gRPC [`api`] and the metrics.k8s.io [`http`] endpoints read.

pub mod api;
pub mod cluster;
pub mod discovery;
pub mod feed;
pub mod http;
pub mod node_state;
pub mod pods;
pub mod points;
pub mod quantity;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::{
    net::{
        accept::{self, ConnectionStats},
        auth::{Auth, AuthLayer, AuthSettings},
        client::ClientTls,
        listen::{bind, check_listen_policy},
        tls::{Protocol, ServerTlsFiles, load_tls},
    },
    proto::aggregator_server::AggregatorServer,
    server,
};
use cluster::{Cluster, Freshness};
use discovery::Targets;
use feed::FeedOptions;

pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:50052";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, Clone)]
pub struct AggregateConfig {
    pub targets: Targets,
    /// Watch interval asked of every collector (metrics-server's resolution).
    pub interval: Duration,
    pub freshness: Freshness,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// TLS towards the collectors.
    pub client_tls: ClientTls,
    pub grpc_listen: SocketAddr,
    /// metrics.k8s.io JSON; `None` serves gRPC only.
    pub http_listen: Option<SocketAddr>,
    /// TLS of the aggregator's own gRPC API.
    pub server_tls: Option<ServerTlsFiles>,
    pub allow_insecure_listen: bool,
    /// Caps on connections, streams and cluster Watch subscribers.
    pub limits: server::Limits,
    /// Who may call (client certificates from `server_tls.client_ca` and the front proxy's
    /// from `server_tls.front_proxy_ca` always authenticate).
    pub auth: AuthSettings,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self {
            targets: Targets {
                resolve_every: Duration::from_secs(30),
                ..Targets::default()
            },
            interval: Duration::from_secs(10),
            freshness: Freshness {
                stale_after: Duration::from_secs(30),
                forget_after: Duration::from_secs(300),
            },
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            client_tls: ClientTls::default(),
            grpc_listen: DEFAULT_GRPC_LISTEN.parse().expect("valid default"),
            http_listen: Some(DEFAULT_HTTP_LISTEN.parse().expect("valid default")),
            server_tls: None,
            allow_insecure_listen: false,
            limits: server::Limits::default(),
            auth: AuthSettings::default(),
        }
    }
}

/// An aggregator serving in the background.
pub struct RunningAggregator {
    pub grpc_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub cluster: Arc<Cluster>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: Vec<oneshot::Sender<()>>,
    servers: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl RunningAggregator {
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for task in &self.tasks {
            task.abort();
        }
        for tx in self.shutdown.drain(..) {
            let _ = tx.send(());
        }
        for server in self.servers.drain(..) {
            match tokio::time::timeout(Duration::from_secs(5), server).await {
                Ok(result) => result??,
                Err(_) => tracing::warn!("aggregator server still busy after 5 s; leaving it"),
            }
        }
        Ok(())
    }

    /// Waits until a server fails or `signal` completes.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let failed = {
            let first_to_end = futures::future::select_all(self.servers.iter_mut());
            tokio::select! {
                (result, index, _) = first_to_end => Some((result, index)),
                _ = signal => None,
            }
        };
        match failed {
            None => self.stop().await,
            Some((result, index)) => {
                self.servers.remove(index);
                self.stop().await?;
                result?
            }
        }
    }
}

pub async fn start(config: AggregateConfig) -> anyhow::Result<RunningAggregator> {
    anyhow::ensure!(
        !config.targets.static_addresses.is_empty() || !config.targets.dns_names.is_empty(),
        "no collectors to aggregate: pass --collectors host:port,... and/or --discover name:port"
    );
    let auth = Auth::new(&AuthSettings {
        client_ca: config.server_tls.as_ref().and_then(|t| t.client_ca.clone()),
        front_proxy: config.auth.front_proxy.clone(),
        ..config.auth.clone()
    })
    .context("authentication")?;
    let tls = config.server_tls.is_some();
    check_listen_policy(
        config.grpc_listen,
        tls,
        auth.enabled(),
        config.allow_insecure_listen,
    )?;
    if let Some(http) = config.http_listen {
        check_listen_policy(http, tls, auth.enabled(), config.allow_insecure_listen)
            .context("--http-listen")?;
    }
    let tls = load_tls(config.server_tls.as_ref(), Protocol::Grpc)?;
    let http_tls = load_tls(config.server_tls.as_ref(), Protocol::Http1)?;
    let grpc_listener = bind(config.grpc_listen).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_listener = match config.http_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let max_connections = config.limits.max_connections;
    let grpc_incoming = accept::incoming(
        grpc_listener,
        tls,
        max_connections,
        Arc::new(ConnectionStats::default()),
    )?;
    let http_incoming = http_listener
        .map(|l| {
            accept::incoming(
                l,
                http_tls,
                max_connections,
                Arc::new(ConnectionStats::default()),
            )
        })
        .transpose()?;

    let cluster = Arc::new(Cluster::new(config.freshness));
    let feed_options = FeedOptions {
        interval: config.interval,
        tls: config.client_tls.clone(),
        backoff_min: config.backoff_min,
        backoff_max: config.backoff_max,
    };
    let tasks = vec![
        tokio::spawn(discovery::run(
            config.targets.clone(),
            cluster.clone(),
            feed_options,
        )),
        tokio::spawn(cluster::janitor(cluster.clone())),
    ];

    let mut shutdown = Vec::new();
    let mut servers = Vec::new();
    let (tx, rx) = oneshot::channel();
    shutdown.push(tx);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AggregatorServer<api::AggregatorService>>()
        .await;
    let router = server::with_reflection(
        server::grpc_server(
            &config.limits,
            AuthLayer::new(auth.clone(), api::aggregator_attributes()),
        )
        .add_service(health)
        .add_service(AggregatorServer::new(api::AggregatorService::new(
            cluster.clone(),
            &config.limits,
        ))),
        server::AGGREGATOR_SERVICE,
    );
    servers.push(tokio::spawn(async move {
        server::serve_router(router, grpc_incoming, async {
            let _ = rx.await;
        })
        .await
        .context("aggregator gRPC server")
    }));
    if let Some(incoming) = http_incoming {
        let (tx, rx) = oneshot::channel();
        shutdown.push(tx);
        let app = http::router(cluster.clone(), auth.clone());
        servers.push(tokio::spawn(async move {
            axum::serve(
                incoming,
                app.into_make_service_with_connect_info::<accept::Peer>(),
            )
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .context("aggregator HTTP server")
        }));
    }
    tracing::info!(%grpc_addr, ?http_addr, "serving collector.v1.Aggregator");
    Ok(RunningAggregator {
        grpc_addr,
        http_addr,
        cluster,
        tasks,
        shutdown,
        servers,
    })
}
