//! The command line: `serve` (the default), `top` and `aggregate`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use collector::{
    aggregate, app,
    cri::CriSetting,
    percentiles,
    server::chunk,
    top::{SortBy, View},
};

use crate::{
    export_args::ExportArgs, logging::LogFormat, security_args::*, summary_args::SummaryArgs,
};

#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Log lines on stderr: `text` (colour only on a terminal) or `json` (one object per line,
    /// for log pipelines). Every event is one line. `RUST_LOG` sets the level (default info).
    #[arg(long, global = true, env = crate::logging::LOG_FORMAT_ENV, value_enum,
          default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the collector (the default).
    Serve(Box<ServeArgs>),
    /// Tables like `kubectl top` (nodes, pods, cgroups) from a collector or an aggregator.
    Top(TopArgs),
    /// Subscribe to many collectors and serve the cluster view (gRPC and metrics.k8s.io JSON).
    Aggregate(Box<AggregateArgs>),
}

#[derive(Args, Clone)]
pub struct AggregateArgs {
    /// Collectors to subscribe to: host:port, comma-separated.
    #[arg(long, env = "AGGREGATOR_COLLECTORS", value_delimiter = ',')]
    pub collectors: Vec<String>,
    /// DNS names (name:port) resolved to every address they have, e.g. a headless Service.
    #[arg(long, env = "AGGREGATOR_DISCOVER", value_delimiter = ',')]
    pub discover: Vec<String>,
    /// How often --discover names are resolved again, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub resolve_every_s: u64,
    /// Watch interval asked of each collector, in ms (metrics-server's resolution).
    #[arg(long, env = "AGGREGATOR_INTERVAL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub interval_ms: u64,
    /// A node silent for this long is marked stale (and left out of metrics.k8s.io), in ms.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub stale_after_ms: u64,
    /// A node silent for this long is forgotten, in ms.
    #[arg(long, default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub forget_after_ms: u64,
    /// Reconnect backoff: first delay and cap, in ms (each delay is jittered).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..))]
    pub backoff_min_ms: u64,
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub backoff_max_ms: u64,
    /// gRPC listen address of the cluster API.
    #[arg(long, env = "AGGREGATOR_LISTEN", default_value = aggregate::DEFAULT_GRPC_LISTEN)]
    pub listen: SocketAddr,
    /// metrics.k8s.io JSON listen address ("off" to disable).
    #[arg(long, env = "AGGREGATOR_HTTP_LISTEN", default_value = aggregate::DEFAULT_HTTP_LISTEN)]
    pub http_listen: String,
    #[command(flatten)]
    pub server_tls: ServerTlsArgs,
    #[command(flatten)]
    pub client_tls: ClientTlsArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// CA of the API server's front-proxy client certificate: as an APIService backend,
    /// requests with it are authenticated by their X-Remote-User/-Group/-Extra-* headers
    /// (kube-apiserver's --requestheader-client-ca-file).
    #[arg(
        long,
        env = "AGGREGATOR_REQUESTHEADER_CLIENT_CA_FILE",
        requires = "tls_cert"
    )]
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// Common names the front-proxy certificate may have (empty: any from its CA).
    #[arg(
        long,
        env = "AGGREGATOR_REQUESTHEADER_ALLOWED_NAMES",
        value_delimiter = ','
    )]
    pub requestheader_allowed_names: Vec<String>,
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// gRPC listen address. Loopback by default.
    #[arg(long, env = "COLLECTOR_LISTEN", default_value = app::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Do not load eBPF probes (cgroupfs only).
    #[arg(long, env = "COLLECTOR_NO_EBPF")]
    pub no_ebpf: bool,
    /// Turn the kernel's bpf_stats on while the collector runs: per-program run counts and time
    /// in /metrics and GetSummary, at the price of two clock reads added to every run of every
    /// BPF program on the node (and CAP_SYS_ADMIN). Off by default.
    #[arg(long, env = "COLLECTOR_BPF_STATS")]
    pub bpf_stats: bool,
    /// Capacity of the per-cgroup eBPF maps. Their kernel memory is about
    /// 40 bytes × this × possible CPUs (logged at start-up).
    #[arg(long, env = "COLLECTOR_MAX_CGROUPS", default_value_t = collector_common::DEFAULT_MAX_CGROUPS,
          value_parser = clap::value_parser!(u32).range(64..=(1 << 20)))]
    pub max_cgroups: u32,
    /// cgroup2 mount to read (default: found in /proc/self/mountinfo).
    #[arg(long, env = "COLLECTOR_CGROUP2_MOUNT")]
    pub cgroup2_mount: Option<PathBuf>,
    /// Sampling period in ms when no subscriber asks for faster updates.
    #[arg(long, env = "COLLECTOR_SAMPLE_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub sample_interval_ms: u64,
    /// How often every cgroupfs file is read while the eBPF CPU probe is active (passes in
    /// between read only the probes). 0 = every pass. Without the probe, every pass is full.
    #[arg(long, env = "COLLECTOR_CGROUPFS_INTERVAL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub cgroupfs_interval_ms: u64,
    /// How old a cgroupfs reading a cgroup may keep on a full pass when the probes saw it idle
    /// (no CPU time, faults or run-queue arrivals) since that reading; each record says when
    /// it was read. At most the cgroupfs interval (or 0) reads every cgroup on every full pass.
    #[arg(long, env = "COLLECTOR_CGROUPFS_IDLE_MAX_AGE_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub cgroupfs_idle_max_age_ms: u64,
    /// The Kubernetes node name reported to aggregators (in a DaemonSet: spec.nodeName via the
    /// downward API). Default: the hostname.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Watch messages larger than this are split into chunks.
    #[arg(long, env = "COLLECTOR_MAX_MESSAGE_BYTES", default_value_t = chunk::DEFAULT_MAX_MESSAGE_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16_384..=(64 << 20)))]
    pub max_message_bytes: usize,
    /// Read every controller from the cgroup2 mount, ignoring cgroup v1 hierarchies (for a
    /// --cgroup2-mount tree that is not the host's).
    #[arg(long, env = "COLLECTOR_IGNORE_CGROUP1")]
    pub ignore_cgroup1: bool,
    /// HTTP listen address of /stats/summary, /metrics/resource and /metrics (plaintext;
    /// "off" to disable).
    #[arg(long, env = "COLLECTOR_HTTP_LISTEN", default_value = collector::http::DEFAULT_LISTEN)]
    pub http_listen: String,
    /// Container runtime (CRI) socket that names pods and containers: "auto" (containerd,
    /// then CRI-O, then cri-dockerd at their default paths), "off", or a path / unix:// URL.
    #[arg(long, env = "COLLECTOR_CRI_SOCKET", default_value = "auto")]
    pub cri_socket: CriSetting,
    /// Seconds between full CRI re-lists; new containers are named sooner, on demand.
    #[arg(long, env = "COLLECTOR_CRI_REFRESH_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub cri_refresh_secs: u64,
    /// Window of the pod and container CPU / working-set percentiles (p50 … p99, max): 10m by
    /// default, 1h for longer peaks; 1m ..= 24h.
    #[arg(long, env = "COLLECTOR_PERCENTILE_WINDOW", default_value = "10m",
          value_parser = percentiles::parse_window)]
    pub percentile_window: Duration,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub export: ExportArgs,
    #[command(flatten)]
    pub summary: SummaryArgs,
}

#[derive(Args)]
pub struct TopArgs {
    /// What to list.
    #[arg(value_enum, default_value_t = View::Cgroups)]
    pub view: View,
    /// Collector or aggregator to read (host:port or URL); the kind is detected.
    #[arg(long, env = "COLLECTOR_ENDPOINT", default_value = "127.0.0.1:50051")]
    pub endpoint: String,
    /// Refresh interval in ms (100..=60000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub interval_ms: u64,
    /// Rows to show.
    #[arg(long, default_value_t = 25)]
    pub rows: usize,
    /// Sort by.
    #[arg(long, value_enum, default_value_t = SortBy::Cpu)]
    pub sort_by: SortBy,
    /// Only pods (and their cgroups) of this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// cgroups view: only cgroups at or below this path.
    #[arg(long)]
    pub cgroup_prefix: Option<String>,
    /// Print one table (once rates are present) and exit.
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}
