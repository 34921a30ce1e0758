//! Flags shared by the servers (TLS, authentication, limits) and by the clients (TLS).

use std::{path::PathBuf, time::Duration};

use clap::Args;
use collector::{
    net::{
        self,
        auth::{AuthSettings, AuthorizationMode, FrontProxy},
        client::ClientTls,
        kube::KubeApiConfig,
        tls::ServerTlsFiles,
    },
    server,
};

#[derive(Args, Clone)]
pub struct ServerTlsArgs {
    /// PEM certificate chain: serve gRPC and HTTP over TLS. Reloaded when the file changes.
    #[arg(long, env = "COLLECTOR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "COLLECTOR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: client certificates signed by it authenticate their caller (user = CN,
    /// groups = O); with it, every call but health needs an authenticated caller.
    #[arg(long, env = "COLLECTOR_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve on a non-loopback address without TLS or without authenticating callers
    /// (refused otherwise). Logs a warning.
    #[arg(long, env = "COLLECTOR_ALLOW_INSECURE_LISTEN")]
    pub allow_insecure_listen: bool,
}

impl ServerTlsArgs {
    pub fn files(&self, front_proxy_ca: Option<PathBuf>) -> Option<ServerTlsFiles> {
        Some(ServerTlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
            front_proxy_ca,
        })
    }
}

/// Delegated authentication and authorization, with kubelet's flag names.
#[derive(Args, Clone)]
pub struct AuthArgs {
    /// Authenticate bearer tokens with a TokenReview to the Kubernetes API.
    #[arg(long, env = "COLLECTOR_AUTHENTICATION_TOKEN_WEBHOOK")]
    pub authentication_token_webhook: bool,
    /// How authenticated callers are authorized: AlwaysAllow, or Webhook (a
    /// SubjectAccessReview of nodes/stats and nodes/metrics, as kubelet does; metrics.k8s.io
    /// resources on the aggregator).
    #[arg(long, env = "COLLECTOR_AUTHORIZATION_MODE", value_enum, default_value_t = AuthorizationMode::AlwaysAllow)]
    pub authorization_mode: AuthorizationMode,
    /// Kubernetes API server for the reviews (default: in-cluster, from
    /// KUBERNETES_SERVICE_HOST/PORT).
    #[arg(long, env = "COLLECTOR_KUBE_API_SERVER")]
    pub kube_api_server: Option<String>,
    /// CA of the API server (default: the service account's ca.crt).
    #[arg(long, env = "COLLECTOR_KUBE_API_CA")]
    pub kube_api_ca: Option<PathBuf>,
    /// Token for the API server, re-read on every review (default: the service account's).
    #[arg(long, env = "COLLECTOR_KUBE_API_TOKEN_FILE")]
    pub kube_api_token_file: Option<PathBuf>,
}

impl AuthArgs {
    pub fn settings(&self, front_proxy: Option<FrontProxy>) -> AuthSettings {
        AuthSettings {
            client_ca: None,
            token_webhook: self.authentication_token_webhook,
            front_proxy,
            authorization: self.authorization_mode,
            kube: KubeApiConfig {
                server: self.kube_api_server.clone(),
                ca: self.kube_api_ca.clone(),
                token_file: self.kube_api_token_file.clone(),
            },
        }
    }
}

#[derive(Args, Clone)]
pub struct LimitArgs {
    /// Open connections per listener; more are closed as soon as they are accepted.
    #[arg(long, env = "COLLECTOR_MAX_CONNECTIONS", default_value_t = net::accept::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    pub max_connections: usize,
    /// Concurrent gRPC calls (HTTP/2 streams) per connection.
    #[arg(long, env = "COLLECTOR_MAX_STREAMS_PER_CONNECTION",
          default_value_t = server::DEFAULT_MAX_STREAMS_PER_CONNECTION,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_streams_per_connection: u32,
    /// Watch subscribers at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "COLLECTOR_MAX_WATCH_SUBSCRIBERS",
          default_value_t = server::DEFAULT_MAX_WATCH_SUBSCRIBERS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub max_watch_subscribers: usize,
    /// The shortest Watch interval a caller off this host may ask for, in ms (loopback callers:
    /// 100).
    #[arg(long, env = "COLLECTOR_MIN_WATCH_INTERVAL_MS",
          default_value_t = server::DEFAULT_MIN_REMOTE_INTERVAL.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub min_watch_interval_ms: u64,
}

impl LimitArgs {
    pub fn limits(&self) -> server::Limits {
        server::Limits {
            max_connections: self.max_connections,
            max_streams_per_connection: self.max_streams_per_connection,
            max_watch_subscribers: self.max_watch_subscribers,
            min_remote_interval: Duration::from_millis(self.min_watch_interval_ms),
        }
    }
}

#[derive(Args, Clone)]
pub struct ClientTlsArgs {
    /// CA of the server's certificate: connect over TLS.
    #[arg(long = "tls-ca", env = "COLLECTOR_CLIENT_TLS_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate, for servers that require mutual TLS.
    #[arg(
        long = "tls-client-cert",
        env = "COLLECTOR_CLIENT_TLS_CERT",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    #[arg(
        long = "tls-client-key",
        env = "COLLECTOR_CLIENT_TLS_KEY",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// Name the server certificate must carry (default: the endpoint's host).
    #[arg(long = "tls-server-name", env = "COLLECTOR_CLIENT_TLS_SERVER_NAME")]
    pub domain: Option<String>,
}

impl ClientTlsArgs {
    pub fn config(&self) -> ClientTls {
        ClientTls {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            domain: self.domain.clone(),
        }
    }
}
