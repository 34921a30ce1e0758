//! `collector`: the node agent (`serve`, the default), the cluster aggregator (`aggregate`) and
//! their client (`top`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use collector::{
    aggregate::{self, AggregateConfig, cluster::Freshness, discovery::Targets},
    app::{self, ServeConfig},
    cri::CriSetting,
    net::{client::ClientTls, tls::ServerTlsFiles},
    percentiles,
    probes::ProbeConfig,
    server::chunk,
    store::SystemCgroups,
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
    Serve(ServeArgs),
    /// Tables like `kubectl top` (nodes, pods, cgroups) from a collector or an aggregator.
    Top(TopArgs),
    /// Subscribe to many collectors and serve the cluster view (gRPC and metrics.k8s.io JSON).
    Aggregate(AggregateArgs),
}

#[derive(Args, Clone)]
struct ServerTlsArgs {
    /// PEM certificate chain: serve gRPC over TLS. Reloaded when the file changes.
    #[arg(long, env = "COLLECTOR_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "COLLECTOR_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it (mutual TLS).
    #[arg(long, env = "COLLECTOR_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Serve plaintext on a non-loopback address (refused otherwise). Logs a warning.
    #[arg(long, env = "COLLECTOR_ALLOW_INSECURE_LISTEN")]
    allow_insecure_listen: bool,
}

impl ServerTlsArgs {
    fn files(&self) -> Option<ServerTlsFiles> {
        Some(ServerTlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
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
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// gRPC listen address. Loopback by default.
    #[arg(long, env = "COLLECTOR_LISTEN", default_value = app::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Do not load eBPF probes (cgroupfs only).
    #[arg(long, env = "COLLECTOR_NO_EBPF")]
    no_ebpf: bool,
    /// Forward log records from the eBPF programs (aya-log) into the collector's log.
    #[arg(long, env = "COLLECTOR_EBPF_LOG")]
    ebpf_log: bool,
    /// Leave the kernel's bpf_stats off: no per-program run counts and time, and no clock reads
    /// added to every BPF program's runs on the node.
    #[arg(long, env = "COLLECTOR_NO_BPF_STATS")]
    no_bpf_stats: bool,
    /// Capacity of the per-cgroup eBPF maps.
    #[arg(long, env = "COLLECTOR_MAX_CGROUPS", default_value_t = 16_384)]
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
    /// kubelet's root dir (kubelet's --root-dir): its filesystem is the node fs, and
    /// pods/<uid>/ holds volumes and etc-hosts. Mount it read-only in a DaemonSet ("off": none).
    #[arg(
        long,
        env = "COLLECTOR_KUBELET_ROOT_DIR",
        default_value = "/var/lib/kubelet"
    )]
    kubelet_root_dir: String,
    /// kubelet's pod logs dir, for container and pod log usage ("off": none).
    #[arg(long, env = "COLLECTOR_POD_LOGS_DIR", default_value = "/var/log/pods")]
    pod_logs_dir: String,
    /// Seconds between du walks of volumes, logs and etc-hosts (kubelet's
    /// --volume-stats-agg-period).
    #[arg(long, env = "COLLECTOR_VOLUME_STATS_INTERVAL_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    volume_stats_interval_secs: u64,
    /// The kubelet's cgroup (kubelet's --kubelet-cgroups); default: the kubelet process's.
    #[arg(long, env = "COLLECTOR_KUBELET_CGROUPS")]
    kubelet_cgroups: Option<String>,
    /// The runtime's cgroup (kubelet's --runtime-cgroups); default: the CRI socket peer's.
    #[arg(long, env = "COLLECTOR_RUNTIME_CGROUPS")]
    runtime_cgroups: Option<String>,
    /// The cgroup of the node's other daemons, kubelet's "misc" system container (kubelet's
    /// --system-cgroups); none by default.
    #[arg(long, env = "COLLECTOR_SYSTEM_CGROUPS")]
    system_cgroups: Option<String>,
    #[command(flatten)]
    tls: ServerTlsArgs,
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
        Some(Command::Aggregate(args)) => aggregate(args).await,
        Some(Command::Serve(args)) => serve(args).await,
        None => serve(cli.serve).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServeConfig {
        listen: args.listen,
        probes: ProbeConfig {
            disabled: args.no_ebpf,
            max_cgroups: args.max_cgroups,
            ebpf_log: args.ebpf_log,
            run_stats: !args.no_bpf_stats,
            ..ProbeConfig::default()
        },
        cgroup2_mount: args.cgroup2_mount,
        base_period: Duration::from_millis(args.sample_interval_ms),
        cgroupfs_interval: Duration::from_millis(args.cgroupfs_interval_ms),
        tls: args.tls.files(),
        allow_insecure_listen: args.tls.allow_insecure_listen,
        node_name: args.node_name,
        max_message_bytes: args.max_message_bytes,
        ignore_cgroup1: args.ignore_cgroup1,
        http_listen: optional_address(&args.http_listen)?,
        cri: args.cri_socket,
        cri_refresh: Duration::from_secs(args.cri_refresh_secs),
        percentile_window: args.percentile_window,
        cri_stats_interval: collector::cri::stats::DEFAULT_STATS_PERIOD,
        kubelet_root_dir: optional_dir(&args.kubelet_root_dir),
        pod_logs_dir: optional_dir(&args.pod_logs_dir),
        volume_stats_interval: Duration::from_secs(args.volume_stats_interval_secs),
        system_cgroups: SystemCgroups {
            kubelet: args.kubelet_cgroups,
            runtime: args.runtime_cgroups,
            misc: args.system_cgroups,
        },
    };
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

/// A directory flag: a path, or "off".
fn optional_dir(value: &str) -> Option<PathBuf> {
    (value != "off" && !value.is_empty()).then(|| PathBuf::from(value))
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
        server_tls: args.server_tls.files(),
        allow_insecure_listen: args.server_tls.allow_insecure_listen,
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

/// One connection per collector: raise the soft open-files limit to the hard one.
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
