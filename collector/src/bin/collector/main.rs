//! `collector`: the node agent (`serve`, the default), the cluster aggregator (`aggregate`) and
//! their client (`top`).

mod args;
mod export_args;
mod logging;
mod security_args;
mod summary_args;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser as _;
use collector::{
    aggregate::{self, AggregateConfig, cluster::Freshness, discovery::Targets},
    app::{self, ServeConfig},
    net::auth::FrontProxy,
    probes::ProbeConfig,
    top::{self, TopConfig},
};

use crate::args::{AggregateArgs, Cli, Command, ServeArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the runtime starts its threads (see the function).
    if matches!(cli.command, None | Some(Command::Serve(_))) {
        app::one_malloc_arena();
    }
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Through the log, so that the last word is one line in the chosen format.
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
        cri_stats_interval: collector::cri::stats::DEFAULT_STATS_PERIOD,
        kubelet_root_dir: args.summary.kubelet_root_dir(),
        pod_logs_dir: args.summary.pod_logs_dir(),
        volume_stats_interval: args.summary.volume_stats_interval(),
        system_cgroups: args.summary.system_cgroups(),
        stale_after: None,
        limits: args.limits.limits(),
        auth: args.auth.settings(None),
        export: args.export.config()?,
    };
    // Connections, the cgroup walk and the probes all take descriptors: never let the
    // runtime's soft limit (1,024 on some) turn load into failed passes.
    raise_fd_limit();
    let shutdown = shutdown_signal();
    let running = app::start(config).await?;
    tracing::info!(
        grpc = %running.addr,
        http = %running.http_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        "collector listening (gRPC with reflection; HTTP /metrics/resource, /stats/summary, \
         /metrics); watch it with `collector top --endpoint {}`",
        running.addr
    );
    running.run_until(shutdown).await
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
    let shutdown = shutdown_signal();
    let running = aggregate::start(config).await?;
    tracing::info!(
        grpc = %running.grpc_addr,
        http = %running.http_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        "aggregator listening (collector.v1.Aggregator over gRPC, metrics.k8s.io over HTTP)"
    );
    running.run_until(shutdown).await
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

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when the
/// future is first polled: call it before announcing anything, so that a SIGTERM right after the
/// "listening" line (a runtime stopping the container at once) is a clean shutdown, not a kill.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    }
}
