//! `collector`: the node agent (`serve`, the default), the cluster aggregator (`aggregate`) and
//! their client (`top`).

mod args;
mod export_args;
mod security_args;

use std::{net::SocketAddr, time::Duration};

use clap::Parser as _;
use collector::{
    aggregate::{self, AggregateConfig, cluster::Freshness, discovery::Targets},
    app::{self, ServeConfig},
    net::auth::FrontProxy,
    probes::ProbeConfig,
    top::{self, TopConfig},
};
use tracing_subscriber::EnvFilter;

use crate::args::{AggregateArgs, Cli, Command, ServeArgs};

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
        cgroupfs_idle_max_age: Duration::from_millis(args.cgroupfs_idle_max_age_ms),
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
