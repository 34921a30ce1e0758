//! `collector`: the node agent (`serve`, the default) and its client (`top`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use collector::{
    app::{self, ServeConfig},
    probes::ProbeConfig,
    top::{self, TopConfig},
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
    /// Show the busiest cgroups of a running collector, refreshing.
    Top(TopArgs),
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
}

#[derive(Args)]
struct TopArgs {
    /// Collector to watch.
    #[arg(
        long,
        env = "COLLECTOR_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    endpoint: String,
    /// Refresh interval in ms (100..=60000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    interval_ms: u64,
    /// Rows to show.
    #[arg(long, default_value_t = 25)]
    rows: usize,
    /// Print one table (after the first update, so rates are present) and exit.
    #[arg(long)]
    once: bool,
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
                interval: Duration::from_millis(args.interval_ms),
                rows: args.rows,
                once: args.once,
            })
            .await
        }
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
            ..ProbeConfig::default()
        },
        cgroup2_mount: args.cgroup2_mount,
        base_period: Duration::from_millis(args.sample_interval_ms),
        cgroupfs_interval: Duration::from_millis(args.cgroupfs_interval_ms),
    };
    let running = app::start(config).await?;
    eprintln!(
        "collector listening on {addr} (gRPC, reflection on)\n  watch it:  collector top --endpoint http://{addr}\n  or:        grpcurl -plaintext {addr} collector.v1.Collector/GetSummary",
        addr = running.addr
    );
    running.run_until(shutdown_signal()).await
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
