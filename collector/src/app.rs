//! Assembling a running collector: mounts, probes, sampler, store, gRPC server.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::{
    cgroupfs::CgroupMounts,
    cri::{self, CriSetting},
    export::{ExportMetrics, Exporter, config::ExportConfig},
    host_scan::{self, ScanConfig, Scanner},
    http,
    net::{
        accept,
        auth::{Auth, AuthLayer, AuthSettings},
        listen::{bind, check_listen_policy},
        tls::{Protocol, ServerTlsFiles, load_tls},
    },
    node::NodeInfo,
    percentiles::{self, UsageWindows},
    probes::{ProbeConfig, Probes},
    sampler::{self, Sampler},
    server::{self, CollectorService, ServerStats, chunk},
    store::{self, StoreHandle, SystemCgroups},
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub probes: ProbeConfig,
    /// Overrides discovery from /proc/self/mountinfo.
    pub cgroup2_mount: Option<PathBuf>,
    /// Sampling pace when no subscriber asks for faster updates.
    pub base_period: Duration,
    /// Pace of full cgroupfs reads while the eBPF CPU probe is active.
    pub cgroupfs_interval: Duration,
    /// How old a reading a cgroup the probes saw idle may keep on a full pass.
    pub cgroupfs_idle_max_age: Duration,
    /// Serve over TLS (mutual TLS with a client CA).
    pub tls: Option<ServerTlsFiles>,
    /// Allow plaintext on a non-loopback address.
    pub allow_insecure_listen: bool,
    /// The Kubernetes node name; the hostname when unset.
    pub node_name: Option<String>,
    /// Watch messages above this are split into chunks.
    pub max_message_bytes: usize,
    /// Read every controller from the cgroup2 mount, ignoring v1 hierarchies (for a cgroup2
    /// tree that is not the host's, such as a test fixture on a hybrid host).
    pub ignore_cgroup1: bool,
    /// Address of the HTTP endpoints (kubelet's /stats/summary and /metrics/resource,
    /// Prometheus /metrics); `None` turns them off. Plaintext.
    pub http_listen: Option<SocketAddr>,
    /// Where to ask for pod and container names (CRI). Off by default in the library so tests
    /// never see the host's runtime; the CLI defaults to `auto`.
    pub cri: CriSetting,
    /// Pace of full CRI re-lists (new containers are named sooner, on demand).
    pub cri_refresh: Duration,
    /// Span of the pod and container usage percentiles.
    pub percentile_window: Duration,
    /// Pace of the runtime's filesystem usage (image fs, writable layers).
    pub cri_stats_interval: Duration,
    /// kubelet's root dir: its filesystem is the node fs, and pods/<uid>/ holds volumes and
    /// etc-hosts. Off by default in the library (tests never see the host's); the CLI defaults
    /// to /var/lib/kubelet.
    pub kubelet_root_dir: Option<PathBuf>,
    /// kubelet's pod logs dir (the CLI's default /var/log/pods).
    pub pod_logs_dir: Option<PathBuf>,
    /// Pace of the du walks of volumes, logs and etc-hosts.
    pub volume_stats_interval: Duration,
    /// Where kubelet's system containers are, when given.
    pub system_cgroups: SystemCgroups,
    /// Health turns NOT_SERVING when the newest sample is older than this; `None` derives it
    /// from `base_period` ([`store::stale_after`]).
    pub stale_after: Option<Duration>,
    /// Caps on connections, streams and Watch subscribers, and the interval policy.
    pub limits: server::Limits,
    /// Who may call (client certificates from `tls.client_ca` always authenticate).
    pub auth: AuthSettings,
    /// Remote-write and OTLP destinations to push to (none: no exporter).
    pub export: ExportConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            probes: ProbeConfig::default(),
            cgroup2_mount: None,
            base_period: server::DEFAULT_INTERVAL,
            cgroupfs_interval: sampler::DEFAULT_CGROUPFS_INTERVAL,
            cgroupfs_idle_max_age: sampler::DEFAULT_IDLE_MAX_AGE,
            tls: None,
            allow_insecure_listen: false,
            node_name: None,
            max_message_bytes: chunk::DEFAULT_MAX_MESSAGE_BYTES,
            ignore_cgroup1: false,
            http_listen: None,
            cri: CriSetting::Off,
            cri_refresh: cri::resolver::DEFAULT_REFRESH,
            percentile_window: percentiles::DEFAULT_WINDOW,
            cri_stats_interval: cri::stats::DEFAULT_STATS_PERIOD,
            kubelet_root_dir: None,
            pod_logs_dir: None,
            volume_stats_interval: host_scan::DEFAULT_PERIOD,
            system_cgroups: SystemCgroups::default(),
            stale_after: None,
            limits: server::Limits::default(),
            auth: AuthSettings::default(),
            export: ExportConfig::default(),
        }
    }
}

/// How long in-flight calls get to finish when stopping.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A collector serving in the background.
pub struct Running {
    pub addr: SocketAddr,
    /// Where the HTTP endpoints listen, when on.
    pub http_addr: Option<SocketAddr>,
    pub store: StoreHandle,
    pub server_stats: Arc<ServerStats>,
    scanner: Option<Scanner>,
    /// The exporters' delivery counters (also on `/metrics`), readable after `stop`.
    pub export_metrics: Option<Arc<ExportMetrics>>,
    store_task: tokio::task::AbortHandle,
    cri_task: Option<tokio::task::AbortHandle>,
    /// Watches the store and CRI tasks; `core_ended` hears when one ends on its own.
    supervisor: JoinHandle<()>,
    core_ended: Option<oneshot::Receiver<String>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    http: Option<(oneshot::Sender<()>, JoinHandle<std::io::Result<()>>)>,
    exporter: Option<Exporter>,
}

impl Running {
    /// Stops sampling, ends every Watch stream, and waits (boundedly) for the server to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // First push what the last snapshot added and drain the queues (bounded by the
        // exporter's grace), while the store still publishes.
        if let Some(exporter) = self.exporter.take() {
            exporter.stop().await;
        }
        // Ending the store closes every subscription, so streams finish and the graceful
        // shutdown below does not wait on clients that never hang up.
        self.supervisor.abort();
        self.store_task.abort();
        if let Some(cri) = &self.cri_task {
            cri.abort();
        }
        // Ends after its current walk; nothing waits on it.
        drop(self.scanner.take());
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some((tx, server)) = self.http.take() {
            let _ = tx.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
                Ok(result) => result?.context("HTTP server")?,
                Err(_) => tracing::warn!("HTTP connections still open after {SHUTDOWN_GRACE:?}"),
            }
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server).await {
            Ok(result) => result??,
            Err(_) => {
                tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
                self.server.abort();
            }
        }
        Ok(())
    }

    /// Waits until `signal` completes, or fails when a server or a core task ends on its own:
    /// a collector whose store task died would serve its last snapshot forever, so the process
    /// exits and Kubernetes restarts it.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let core_ended = self.core_ended.take();
        let core = async move {
            match core_ended {
                Some(rx) => rx.await.unwrap_or_else(|_| "a core task".to_owned()),
                None => std::future::pending().await,
            }
        };
        let http = async {
            match self.http.as_mut() {
                Some((_, task)) => task.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut self.server => {
                result??;
                anyhow::bail!("the gRPC server stopped on its own")
            }
            result = http => {
                result??;
                anyhow::bail!("the HTTP server stopped on its own")
            }
            what = core => anyhow::bail!("{what} ended; exiting so that the collector is restarted"),
            _ = signal => self.stop().await,
        }
    }
}

pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    let started = std::time::SystemTime::now();
    let auth_settings = AuthSettings {
        client_ca: config.tls.as_ref().and_then(|t| t.client_ca.clone()),
        ..config.auth.clone()
    };
    let auth = Auth::new(&auth_settings).context("authentication")?;
    check_listen_policy(
        config.listen,
        config.tls.is_some(),
        auth.enabled(),
        config.allow_insecure_listen,
    )?;
    let tls = load_tls(config.tls.as_ref(), Protocol::Grpc)?;
    let http_tls = load_tls(config.tls.as_ref(), Protocol::Http1)?;
    let mut mounts = CgroupMounts::discover().context("reading /proc/self/mountinfo")?;
    if config.ignore_cgroup1 {
        mounts.v1.clear();
    }
    let mount = config
        .cgroup2_mount
        .clone()
        .or_else(|| mounts.v2.clone())
        .context(
            "no cgroup2 mount in /proc/self/mountinfo (cgroup v1-only hosts are not supported \
             yet); mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) or pass \
             --cgroup2-mount",
        )?;
    let node = NodeInfo::discover(mounts.clone(), config.node_name.clone());
    if let Some(http) = config.http_listen {
        check_listen_policy(
            http,
            config.tls.is_some(),
            auth.enabled(),
            config.allow_insecure_listen,
        )
        .context("--http-listen")?;
    }
    // Bind before loading probes: a taken port should fail fast, not after BPF setup.
    let listener = bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let http_listener = match config.http_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let server_stats = Arc::new(ServerStats::default());
    let max_connections = config.limits.max_connections;
    let incoming = accept::incoming(
        listener,
        tls,
        max_connections,
        server_stats.grpc_connections.clone(),
    )?;
    let http_incoming = http_listener
        .map(|l| {
            accept::incoming(
                l,
                http_tls,
                max_connections,
                server_stats.http_connections.clone(),
            )
        })
        .transpose()?;

    let mut probe_config = config.probes.clone();
    probe_config
        .cgroup2_root
        .get_or_insert_with(|| mount.clone());
    let probes = tokio::task::spawn_blocking(move || {
        let probes = Probes::load(&probe_config);
        release_freed_memory();
        probes
    })
    .await?;
    // The probes' counters count from here (the start time of the exported eBPF sums).
    let probes_since = std::time::SystemTime::now();
    report_probes(&probes);
    let any_active = probes.statuses().iter().any(|s| s.is_active());
    let _ = server_stats.epoch.set(server::Epoch {
        start_unix_nano: crate::unix_time::unix_nanos(started),
        ebpf_since_unix_nano: any_active.then(|| crate::unix_time::unix_nanos(probes_since)),
    });

    // A node without kubelet (a laptop running `cargo xtask run`) has neither directory.
    let present = |dir: &Option<PathBuf>, flag: &str| {
        dir.clone().filter(|d| {
            let exists = d.is_dir();
            if !exists {
                tracing::info!(
                    "{flag} {}: no such directory; its stats are off",
                    d.display()
                );
            }
            exists
        })
    };
    let kubelet_root_dir = present(&config.kubelet_root_dir, "--kubelet-root-dir");
    let pod_logs_dir = present(&config.pod_logs_dir, "--pod-logs-dir");
    let (names, cri_task) = cri::resolver::spawn(
        config.cri.clone(),
        config.cri_refresh,
        config.cri_stats_interval,
    );
    let sampler = Sampler::new(mount.clone(), &mounts, probes)
        .with_cgroupfs_interval(config.cgroupfs_interval)
        .with_kubelet_root(kubelet_root_dir.clone())
        .with_names(names.clone())
        .with_idle_max_age(config.cgroupfs_idle_max_age);
    let (disk, scanner) = host_scan::spawn(ScanConfig {
        kubelet_root: kubelet_root_dir,
        pod_logs: pod_logs_dir,
        find_kubelet: config.system_cgroups.kubelet.is_none(),
        period: config.volume_stats_interval,
        ..ScanConfig::default()
    });
    let extras = store::Extras {
        names,
        windows: UsageWindows::new(config.percentile_window),
        disk,
        system: config.system_cgroups.clone(),
    };
    let stale_after = config
        .stale_after
        .unwrap_or_else(|| store::stale_after(config.base_period));
    let (store, store_task) = store::spawn(sampler, node, extras, config.base_period, stale_after);
    let store_abort = store_task.abort_handle();
    let cri_abort = cri_task.as_ref().map(JoinHandle::abort_handle);
    let (core_tx, core_rx) = oneshot::channel();
    let supervisor = tokio::spawn(supervise(store_task, cri_task, core_tx));
    let exporter = if config.export.destinations.is_empty() {
        None
    } else {
        let node = store.node.node_name.clone();
        let started = Exporter::start(config.export.clone(), &store, node, probes_since);
        Some(started.inspect_err(|_| {
            supervisor.abort();
            store_abort.abort();
        })?)
    };
    let (tx, rx) = oneshot::channel();
    let service = CollectorService::new(
        store.clone(),
        server_stats.clone(),
        config.max_message_bytes,
        config.limits,
    );
    let grpc_auth = AuthLayer::new(
        auth.clone(),
        server::collector_attributes(store.node.node_name.clone()),
    );
    let server = tokio::spawn(server::serve(incoming, service, grpc_auth, async {
        let _ = rx.await;
    }));
    let more = exporter
        .as_ref()
        .map(|e| e.metrics.clone() as Arc<dyn http::MoreMetrics>);
    let http = http_incoming.map(|incoming| {
        let (tx, rx) = oneshot::channel::<()>();
        let app = http::router(store.clone(), server_stats.clone(), more, auth.clone());
        let task = tokio::spawn(async move {
            axum::serve(
                incoming,
                app.into_make_service_with_connect_info::<accept::Peer>(),
            )
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
        });
        (tx, task)
    });
    tracing::info!(%addr, ?http_addr, cgroup2 = %mount.display(), "serving collector.v1.Collector");
    Ok(Running {
        addr,
        http_addr,
        http,
        store,
        server_stats,
        scanner,
        store_task: store_abort,
        cri_task: cri_abort,
        supervisor,
        core_ended: Some(core_rx),
        shutdown: Some(tx),
        server,
        export_metrics: exporter.as_ref().map(|e| e.metrics.clone()),
        exporter,
    })
}

/// Waits for the store task or the CRI names task to end (neither does while the collector
/// runs) and says which did and how.
async fn supervise(
    store: JoinHandle<()>,
    cri: Option<JoinHandle<()>>,
    ended: oneshot::Sender<String>,
) {
    let describe = |what: &str, result: Result<(), tokio::task::JoinError>| match result {
        Ok(()) => format!("{what} returned"),
        Err(e) if e.is_panic() => format!("{what} panicked"),
        Err(_) => format!("{what} was cancelled"),
    };
    let what = match cri {
        Some(cri) => tokio::select! {
            r = store => describe("the store task", r),
            r = cri => describe("the CRI names task", r),
        },
        None => describe("the store task", store.await),
    };
    tracing::error!("{what}");
    let _ = ended.send(what);
}

/// One line per probe, one clear warning when eBPF is off altogether, and the kernel memory of
/// the maps: now, and what the same configuration costs on the biggest nodes (per-CPU maps grow
/// with the possible CPU count).
fn report_probes(probes: &Probes) {
    let statuses = probes.statuses();
    let active = statuses.iter().filter(|s| s.is_active()).count();
    if active == 0 {
        let why: Vec<String> = statuses.iter().map(ToString::to_string).collect();
        tracing::warn!(
            "eBPF probes unavailable, running in cgroupfs-only mode: {}",
            why.join("; ")
        );
        return;
    }
    for status in &statuses {
        if status.is_active() {
            tracing::info!("probe {status}");
        } else {
            tracing::warn!("probe {status}");
        }
    }
    let maps = probes.map_memory();
    let now: u64 = maps.iter().filter_map(|m| m.kernel_bytes).sum();
    let cpus = aya::util::nr_cpus().unwrap_or(0);
    let at = |n| maps.iter().map(|m| m.projected_bytes(n)).sum::<u64>() as f64 / f64::from(1 << 20);
    tracing::info!(
        possible_cpus = cpus,
        "eBPF maps: {:.1} MiB of kernel memory now; {:.1} MiB at 64 possible CPUs, {:.1} MiB at 128",
        now as f64 / f64::from(1 << 20),
        at(64),
        at(128),
    );
}

/// Makes every thread allocate from glibc's main arena. By default each thread that allocates
/// gets an arena of its own (up to 8 per core), and the tokio workers, the sampler's blocking
/// thread and the disk scanner each kept their own fragments: [`release_freed_memory`] trims
/// them, but the freed start-up memory (BTF) left in one arena and the live data in another
/// stayed resident. Measured with `collect_bench daemon 1000` (steady RSS, 1,000 cgroups):
/// 59.1 MiB with the default arenas, 53.9 with two, 38.9 with one, at the same CPU (1.6–1.8 %
/// of a core): the daemon's threads seldom allocate at once, so one arena's lock costs nothing
/// measurable. Call it before any thread starts (the aggregator, busy on every core, keeps the
/// default).
pub fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: sets an allocator tunable; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands the heap freed by probe loading (the kernel's parsed BTF and the object file, tens of
/// MB at peak) back to the kernel: glibc keeps freed memory in its arenas otherwise, and it would
/// stay in our RSS for the life of the process.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_core_task_that_ends_is_reported() {
        let store = tokio::spawn(async { panic!("a bug in the store") });
        let (tx, rx) = oneshot::channel();
        supervise(store, None, tx).await;
        assert_eq!(rx.await.unwrap(), "the store task panicked");

        let store = tokio::spawn(std::future::pending::<()>());
        let cri = tokio::spawn(async {});
        let (tx, rx) = oneshot::channel();
        supervise(store, Some(cri), tx).await;
        assert_eq!(rx.await.unwrap(), "the CRI names task returned");
    }
}
