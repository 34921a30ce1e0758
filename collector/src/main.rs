//! `collector`: the node agent (`serve`, the default), the cluster aggregator (`aggregate`) and
//! their client (`top`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use collector::{
    aggregate::{self, AggregateConfig, cluster::Freshness, discovery::Targets},
    app::{self, ServeConfig},
    cri::CriSetting,
    export::{
        config::{
            self as export_config, Destination, ExportConfig, Protocol, parse_header,
            parse_otel_headers, parse_otlp_protocol,
        },
        remote_write::Histograms,
    },
    net::{
        self,
        auth::{AuthSettings, AuthorizationMode, FrontProxy},
        client::ClientTls,
        kube::KubeApiConfig,
        tls::ServerTlsFiles,
    },
    percentiles,
    probes::ProbeConfig,
    server::{self, chunk},
    top::{self, SortBy, TopConfig, View},
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector (the default).
    Serve(Box<ServeArgs>),
    /// Tables like `kubectl top` (nodes, pods, cgroups) from a collector or an aggregator.
    Top(TopArgs),
    /// Subscribe to many collectors and serve the cluster view (gRPC and metrics.k8s.io JSON).
    Aggregate(Box<AggregateArgs>),
}

#[derive(Args, Clone)]
struct ServerTlsArgs {
    /// PEM certificate chain: serve gRPC and HTTP over TLS. Reloaded when the file changes.
    #[arg(long, env = "COLLECTOR_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "COLLECTOR_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: client certificates signed by it authenticate their caller (user = CN,
    /// groups = O); with it, every call but health needs an authenticated caller.
    #[arg(long, env = "COLLECTOR_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Serve on a non-loopback address without TLS or without authenticating callers
    /// (refused otherwise). Logs a warning.
    #[arg(long, env = "COLLECTOR_ALLOW_INSECURE_LISTEN")]
    allow_insecure_listen: bool,
}

impl ServerTlsArgs {
    fn files(&self, front_proxy_ca: Option<PathBuf>) -> Option<ServerTlsFiles> {
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
struct AuthArgs {
    /// Authenticate bearer tokens with a TokenReview to the Kubernetes API.
    #[arg(long, env = "COLLECTOR_AUTHENTICATION_TOKEN_WEBHOOK")]
    authentication_token_webhook: bool,
    /// How authenticated callers are authorized: AlwaysAllow, or Webhook (a
    /// SubjectAccessReview of nodes/stats and nodes/metrics, as kubelet does; metrics.k8s.io
    /// resources on the aggregator).
    #[arg(long, env = "COLLECTOR_AUTHORIZATION_MODE", value_enum, default_value_t = AuthorizationMode::AlwaysAllow)]
    authorization_mode: AuthorizationMode,
    /// Kubernetes API server for the reviews (default: in-cluster, from
    /// KUBERNETES_SERVICE_HOST/PORT).
    #[arg(long, env = "COLLECTOR_KUBE_API_SERVER")]
    kube_api_server: Option<String>,
    /// CA of the API server (default: the service account's ca.crt).
    #[arg(long, env = "COLLECTOR_KUBE_API_CA")]
    kube_api_ca: Option<PathBuf>,
    /// Token for the API server, re-read on every review (default: the service account's).
    #[arg(long, env = "COLLECTOR_KUBE_API_TOKEN_FILE")]
    kube_api_token_file: Option<PathBuf>,
}

impl AuthArgs {
    fn settings(&self, front_proxy: Option<FrontProxy>) -> AuthSettings {
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
struct LimitArgs {
    /// Open connections per listener; more are closed as soon as they are accepted.
    #[arg(long, env = "COLLECTOR_MAX_CONNECTIONS", default_value_t = net::accept::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    max_connections: usize,
    /// Concurrent gRPC calls (HTTP/2 streams) per connection.
    #[arg(long, env = "COLLECTOR_MAX_STREAMS_PER_CONNECTION",
          default_value_t = server::DEFAULT_MAX_STREAMS_PER_CONNECTION,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_streams_per_connection: u32,
    /// Watch subscribers at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "COLLECTOR_MAX_WATCH_SUBSCRIBERS",
          default_value_t = server::DEFAULT_MAX_WATCH_SUBSCRIBERS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    max_watch_subscribers: usize,
    /// The shortest Watch interval a caller off this host may ask for, in ms (loopback callers:
    /// 100).
    #[arg(long, env = "COLLECTOR_MIN_WATCH_INTERVAL_MS",
          default_value_t = server::DEFAULT_MIN_REMOTE_INTERVAL.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    min_watch_interval_ms: u64,
}

impl LimitArgs {
    fn limits(&self) -> server::Limits {
        server::Limits {
            max_connections: self.max_connections,
            max_streams_per_connection: self.max_streams_per_connection,
            max_watch_subscribers: self.max_watch_subscribers,
            min_remote_interval: Duration::from_millis(self.min_watch_interval_ms),
        }
    }
}

#[derive(Args, Clone)]
struct ClientTlsArgs {
    /// CA of the server's certificate: connect over TLS.
    #[arg(long = "tls-ca", env = "COLLECTOR_CLIENT_TLS_CA")]
    ca: Option<PathBuf>,
    /// Client certificate, for servers that require mutual TLS.
    #[arg(
        long = "tls-client-cert",
        env = "COLLECTOR_CLIENT_TLS_CERT",
        requires = "key"
    )]
    cert: Option<PathBuf>,
    #[arg(
        long = "tls-client-key",
        env = "COLLECTOR_CLIENT_TLS_KEY",
        requires = "cert"
    )]
    key: Option<PathBuf>,
    /// Name the server certificate must carry (default: the endpoint's host).
    #[arg(long = "tls-server-name", env = "COLLECTOR_CLIENT_TLS_SERVER_NAME")]
    domain: Option<String>,
}

impl ClientTlsArgs {
    fn config(&self) -> ClientTls {
        ClientTls {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            domain: self.domain.clone(),
        }
    }
}

#[derive(Args, Clone)]
struct AggregateArgs {
    /// Collectors to subscribe to: host:port, comma-separated.
    #[arg(long, env = "AGGREGATOR_COLLECTORS", value_delimiter = ',')]
    collectors: Vec<String>,
    /// DNS names (name:port) resolved to every address they have, e.g. a headless Service.
    #[arg(long, env = "AGGREGATOR_DISCOVER", value_delimiter = ',')]
    discover: Vec<String>,
    /// How often --discover names are resolved again, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    resolve_every_s: u64,
    /// Watch interval asked of each collector, in ms (metrics-server's resolution).
    #[arg(long, env = "AGGREGATOR_INTERVAL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    interval_ms: u64,
    /// A node silent for this long is marked stale (and left out of metrics.k8s.io), in ms.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    stale_after_ms: u64,
    /// A node silent for this long is forgotten, in ms.
    #[arg(long, default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(100..))]
    forget_after_ms: u64,
    /// Reconnect backoff: first delay and cap, in ms (each delay is jittered).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..))]
    backoff_min_ms: u64,
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(10..))]
    backoff_max_ms: u64,
    /// gRPC listen address of the cluster API.
    #[arg(long, env = "AGGREGATOR_LISTEN", default_value = aggregate::DEFAULT_GRPC_LISTEN)]
    listen: SocketAddr,
    /// metrics.k8s.io JSON listen address ("off" to disable).
    #[arg(long, env = "AGGREGATOR_HTTP_LISTEN", default_value = aggregate::DEFAULT_HTTP_LISTEN)]
    http_listen: String,
    #[command(flatten)]
    server_tls: ServerTlsArgs,
    #[command(flatten)]
    client_tls: ClientTlsArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    auth: AuthArgs,
    /// CA of the API server's front-proxy client certificate: as an APIService backend,
    /// requests with it are authenticated by their X-Remote-User/-Group/-Extra-* headers
    /// (kube-apiserver's --requestheader-client-ca-file).
    #[arg(
        long,
        env = "AGGREGATOR_REQUESTHEADER_CLIENT_CA_FILE",
        requires = "tls_cert"
    )]
    requestheader_client_ca_file: Option<PathBuf>,
    /// Common names the front-proxy certificate may have (empty: any from its CA).
    #[arg(
        long,
        env = "AGGREGATOR_REQUESTHEADER_ALLOWED_NAMES",
        value_delimiter = ','
    )]
    requestheader_allowed_names: Vec<String>,
}

#[derive(Args, Clone)]
struct ExportArgs {
    /// Prometheus remote-write 1.0 receiver to push to, a full URL with any path (Prometheus
    /// and VictoriaMetrics /api/v1/write, Mimir and Cortex /api/v1/push, Thanos
    /// /api/v1/receive). Repeatable.
    #[arg(long, env = "COLLECTOR_REMOTE_WRITE_URL", value_delimiter = ',')]
    remote_write_url: Vec<String>,
    /// Extra header of every remote-write request, NAME=VALUE (X-Scope-OrgID=tenant,
    /// THANOS-TENANT=…). Repeatable.
    #[arg(long, value_parser = parse_header)]
    remote_write_header: Vec<(String, String)>,
    /// File with a bearer token for remote-write, re-read before each request (a Secret).
    #[arg(long, env = "COLLECTOR_REMOTE_WRITE_BEARER_TOKEN_FILE")]
    remote_write_bearer_token_file: Option<PathBuf>,
    /// Send run-queue histograms as native histograms (schema 0, in ns: the kernel's exact
    /// buckets) instead of classic _bucket series. The receiver must accept them.
    #[arg(long, env = "COLLECTOR_REMOTE_WRITE_NATIVE_HISTOGRAMS")]
    remote_write_native_histograms: bool,
    /// OTLP metrics receiver: http://host:4317 for gRPC, http://host:4318/v1/metrics for
    /// HTTP. Repeatable. Default: OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/metrics for HTTP).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        value_delimiter = ','
    )]
    otlp_endpoint: Vec<String>,
    /// OTLP transport: grpc or http/protobuf. Default: OTEL_EXPORTER_OTLP_PROTOCOL, else
    /// http/protobuf (the OpenTelemetry default).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")]
    otlp_protocol: Option<String>,
    /// Extra header (gRPC metadata) of every OTLP request, NAME=VALUE. Repeatable; added to
    /// OTEL_EXPORTER_OTLP_METRICS_HEADERS / OTEL_EXPORTER_OTLP_HEADERS.
    #[arg(long, value_parser = parse_header)]
    otlp_header: Vec<(String, String)>,
    /// File with a bearer token for OTLP, re-read before each request.
    #[arg(long, env = "COLLECTOR_OTLP_BEARER_TOKEN_FILE")]
    otlp_bearer_token_file: Option<PathBuf>,
    /// Push every this many ms; also the pace of the eBPF series (cgroupfs readings are each
    /// sent once, whatever their pace).
    #[arg(long, env = "COLLECTOR_EXPORT_INTERVAL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    export_interval_ms: u64,
    /// Bound of each destination's queue of encoded requests, in bytes; when full the oldest
    /// request is dropped (and counted on /metrics).
    #[arg(long, env = "COLLECTOR_EXPORT_QUEUE_BYTES", default_value_t = export_config::DEFAULT_QUEUE_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(65_536..=(1 << 30)))]
    export_queue_bytes: usize,
    /// CA of the receivers' certificates (default for https://: the system's roots).
    #[arg(long, env = "COLLECTOR_EXPORT_TLS_CA")]
    export_tls_ca: Option<PathBuf>,
    /// Client certificate for receivers that require mutual TLS.
    #[arg(
        long,
        env = "COLLECTOR_EXPORT_TLS_CLIENT_CERT",
        requires = "export_tls_client_key"
    )]
    export_tls_client_cert: Option<PathBuf>,
    #[arg(
        long,
        env = "COLLECTOR_EXPORT_TLS_CLIENT_KEY",
        requires = "export_tls_client_cert"
    )]
    export_tls_client_key: Option<PathBuf>,
    /// Name the receivers' certificates must carry (default: the URL's host).
    #[arg(long, env = "COLLECTOR_EXPORT_TLS_SERVER_NAME")]
    export_tls_server_name: Option<String>,
}

impl ExportArgs {
    /// The destinations with the OpenTelemetry environment's fallbacks applied.
    fn config(&self) -> anyhow::Result<ExportConfig> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut destinations = Vec::new();
        for url in &self.remote_write_url {
            destinations.push(
                Destination::new(Protocol::RemoteWrite, url)?
                    .with_headers(&self.remote_write_header)?
                    .with_bearer_token_file(self.remote_write_bearer_token_file.clone()),
            );
        }
        let protocol = match self
            .otlp_protocol
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(p) => parse_otlp_protocol(&p)?,
            None => Protocol::OtlpHttp,
        };
        let mut otlp_urls = self.otlp_endpoint.clone();
        if otlp_urls.is_empty()
            && let Some(url) = export_config::otlp_url(
                protocol,
                None,
                env("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
            )
        {
            otlp_urls.push(url);
        }
        let mut otlp_headers = match env("OTEL_EXPORTER_OTLP_METRICS_HEADERS")
            .or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS"))
        {
            Some(h) => parse_otel_headers(&h)?,
            None => Vec::new(),
        };
        otlp_headers.extend(self.otlp_header.iter().cloned());
        for url in &otlp_urls {
            destinations.push(
                Destination::new(protocol, url)?
                    .with_headers(&otlp_headers)?
                    .with_bearer_token_file(self.otlp_bearer_token_file.clone()),
            );
        }
        Ok(ExportConfig {
            destinations,
            interval: Duration::from_millis(self.export_interval_ms),
            queue_bytes: self.export_queue_bytes,
            tls: ClientTls {
                ca: self.export_tls_ca.clone(),
                cert: self.export_tls_client_cert.clone(),
                key: self.export_tls_client_key.clone(),
                domain: self.export_tls_server_name.clone(),
            },
            histograms: if self.remote_write_native_histograms {
                Histograms::Native
            } else {
                Histograms::Classic
            },
            ..ExportConfig::default()
        })
    }
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// gRPC listen address. Loopback by default.
    #[arg(long, env = "COLLECTOR_LISTEN", default_value = app::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Do not load eBPF probes (cgroupfs only).
    #[arg(long, env = "COLLECTOR_NO_EBPF")]
    no_ebpf: bool,
    /// Turn the kernel's bpf_stats on while the collector runs: per-program run counts and time
    /// in /metrics and GetSummary, at the price of two clock reads added to every run of every
    /// BPF program on the node (and CAP_SYS_ADMIN). Off by default.
    #[arg(long, env = "COLLECTOR_BPF_STATS")]
    bpf_stats: bool,
    /// Capacity of the per-cgroup eBPF maps. Their kernel memory is about
    /// 40 bytes × this × possible CPUs (logged at start-up).
    #[arg(long, env = "COLLECTOR_MAX_CGROUPS", default_value_t = collector_common::DEFAULT_MAX_CGROUPS,
          value_parser = clap::value_parser!(u32).range(64..=(1 << 20)))]
    max_cgroups: u32,
    /// cgroup2 mount to read (default: found in /proc/self/mountinfo).
    #[arg(long, env = "COLLECTOR_CGROUP2_MOUNT")]
    cgroup2_mount: Option<PathBuf>,
    /// Sampling period in ms when no subscriber asks for faster updates.
    #[arg(long, env = "COLLECTOR_SAMPLE_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    sample_interval_ms: u64,
    /// How often every cgroupfs file is read while the eBPF CPU probe is active (passes in
    /// between read only the probes). 0 = every pass. Without the probe, every pass is full.
    #[arg(long, env = "COLLECTOR_CGROUPFS_INTERVAL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    cgroupfs_interval_ms: u64,
    /// The Kubernetes node name reported to aggregators (in a DaemonSet: spec.nodeName via the
    /// downward API). Default: the hostname.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Watch messages larger than this are split into chunks.
    #[arg(long, env = "COLLECTOR_MAX_MESSAGE_BYTES", default_value_t = chunk::DEFAULT_MAX_MESSAGE_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16_384..=(64 << 20)))]
    max_message_bytes: usize,
    /// Read every controller from the cgroup2 mount, ignoring cgroup v1 hierarchies (for a
    /// --cgroup2-mount tree that is not the host's).
    #[arg(long, env = "COLLECTOR_IGNORE_CGROUP1")]
    ignore_cgroup1: bool,
    /// HTTP listen address of /stats/summary, /metrics/resource and /metrics (plaintext;
    /// "off" to disable).
    #[arg(long, env = "COLLECTOR_HTTP_LISTEN", default_value = collector::http::DEFAULT_LISTEN)]
    http_listen: String,
    /// Container runtime (CRI) socket that names pods and containers: "auto" (containerd,
    /// then CRI-O, then cri-dockerd at their default paths), "off", or a path / unix:// URL.
    #[arg(long, env = "COLLECTOR_CRI_SOCKET", default_value = "auto")]
    cri_socket: CriSetting,
    /// Seconds between full CRI re-lists; new containers are named sooner, on demand.
    #[arg(long, env = "COLLECTOR_CRI_REFRESH_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    cri_refresh_secs: u64,
    /// Window of the pod and container CPU / working-set percentiles (p50 … p99, max): 10m by
    /// default, 1h for longer peaks; 1m ..= 24h.
    #[arg(long, env = "COLLECTOR_PERCENTILE_WINDOW", default_value = "10m",
          value_parser = percentiles::parse_window)]
    percentile_window: Duration,
    #[command(flatten)]
    tls: ServerTlsArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    export: ExportArgs,
}

#[derive(Args)]
struct TopArgs {
    /// What to list.
    #[arg(value_enum, default_value_t = View::Cgroups)]
    view: View,
    /// Collector or aggregator to read (host:port or URL); the kind is detected.
    #[arg(long, env = "COLLECTOR_ENDPOINT", default_value = "127.0.0.1:50051")]
    endpoint: String,
    /// Refresh interval in ms (100..=60000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    interval_ms: u64,
    /// Rows to show.
    #[arg(long, default_value_t = 25)]
    rows: usize,
    /// Sort by.
    #[arg(long, value_enum, default_value_t = SortBy::Cpu)]
    sort_by: SortBy,
    /// Only pods (and their cgroups) of this namespace.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// cgroups view: only cgroups at or below this path.
    #[arg(long)]
    cgroup_prefix: Option<String>,
    /// Print one table (once rates are present) and exit.
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Top(args)) => {
            top::run(TopConfig {
                endpoint: args.endpoint,
                tls: args.tls.config(),
                view: args.view,
                interval: Duration::from_millis(args.interval_ms),
                rows: args.rows,
                sort: args.sort_by,
                namespace: args.namespace,
                cgroup_prefix: args.cgroup_prefix,
                once: args.once,
            })
            .await
        }
        Some(Command::Aggregate(args)) => aggregate(*args).await,
        Some(Command::Serve(args)) => serve(*args).await,
        None => serve(cli.serve).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServeConfig {
        listen: args.listen,
        probes: ProbeConfig {
            disabled: args.no_ebpf,
            max_cgroups: args.max_cgroups,
            run_stats: args.bpf_stats,
            ..ProbeConfig::default()
        },
        cgroup2_mount: args.cgroup2_mount,
        base_period: Duration::from_millis(args.sample_interval_ms),
        cgroupfs_interval: Duration::from_millis(args.cgroupfs_interval_ms),
        tls: args.tls.files(None),
        allow_insecure_listen: args.tls.allow_insecure_listen,
        node_name: args.node_name,
        max_message_bytes: args.max_message_bytes,
        ignore_cgroup1: args.ignore_cgroup1,
        http_listen: optional_address(&args.http_listen)?,
        cri: args.cri_socket,
        cri_refresh: Duration::from_secs(args.cri_refresh_secs),
        percentile_window: args.percentile_window,
        stale_after: None,
        limits: args.limits.limits(),
        auth: args.auth.settings(None),
        export: args.export.config()?,
    };
    // Connections, the cgroup walk and the probes all take descriptors: never let the
    // runtime's soft limit (1,024 on some) turn load into failed passes.
    raise_fd_limit();
    let running = app::start(config).await?;
    eprintln!(
        "collector listening on {addr} (gRPC, reflection on)\n  watch it:  collector top --endpoint http://{addr}\n  or:        grpcurl -plaintext {addr} collector.v1.Collector/GetSummary",
        addr = running.addr
    );
    if let Some(http) = running.http_addr {
        eprintln!(
            "  HTTP:      curl http://{http}/metrics/resource  (also /stats/summary, /metrics)"
        );
    }
    running.run_until(shutdown_signal()).await
}

/// `--http-listen`: an address, or "off".
fn optional_address(value: &str) -> anyhow::Result<Option<SocketAddr>> {
    match value {
        "off" | "" => Ok(None),
        addr => Ok(Some(addr.parse().map_err(|e| {
            anyhow::anyhow!("--http-listen {addr:?}: {e} (an address, or \"off\")")
        })?)),
    }
}

async fn aggregate(args: AggregateArgs) -> anyhow::Result<()> {
    let ms = Duration::from_millis;
    let http_listen = optional_address(&args.http_listen)?;
    anyhow::ensure!(
        args.forget_after_ms >= args.stale_after_ms,
        "--forget-after-ms must be at least --stale-after-ms"
    );
    let config = AggregateConfig {
        targets: Targets {
            static_addresses: args.collectors,
            dns_names: args.discover,
            resolve_every: Duration::from_secs(args.resolve_every_s),
        },
        interval: ms(args.interval_ms),
        freshness: Freshness {
            stale_after: ms(args.stale_after_ms),
            forget_after: ms(args.forget_after_ms),
        },
        backoff_min: ms(args.backoff_min_ms),
        backoff_max: ms(args.backoff_max_ms.max(args.backoff_min_ms)),
        client_tls: args.client_tls.config(),
        grpc_listen: args.listen,
        http_listen,
        server_tls: args
            .server_tls
            .files(args.requestheader_client_ca_file.clone()),
        allow_insecure_listen: args.server_tls.allow_insecure_listen,
        limits: args.limits.limits(),
        auth: args
            .auth
            .settings(args.requestheader_client_ca_file.map(|ca| FrontProxy {
                ca,
                allowed_names: args.requestheader_allowed_names,
            })),
    };
    raise_fd_limit();
    let running = aggregate::start(config).await?;
    eprintln!(
        "aggregator: gRPC on {} (collector.v1.Aggregator), metrics.k8s.io JSON on {}",
        running.grpc_addr,
        running.http_addr.map_or_else(
            || "(off)".to_owned(),
            |a| format!("http://{a}/apis/metrics.k8s.io/v1beta1/nodes")
        )
    );
    running.run_until(shutdown_signal()).await
}

/// Raise the soft open-files limit to the hard one (the aggregator holds one connection per
/// collector; the collector a descriptor per open cgroup directory and connection).
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!(
                    "cannot raise the open-files limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
