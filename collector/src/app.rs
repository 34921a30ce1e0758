//! Assembling a running collector: mounts, probes, sampler, store, gRPC server.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::{
    cgroupfs::CgroupMounts,
    cri::{self, CriSetting},
    host_scan::{self, ScanConfig, Scanner},
    http,
    net::{
        listen::{bind, check_listen_policy},
        tls::{ServerTlsFiles, load_tls},
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
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            probes: ProbeConfig::default(),
            cgroup2_mount: None,
            base_period: server::DEFAULT_INTERVAL,
            cgroupfs_interval: sampler::DEFAULT_CGROUPFS_INTERVAL,
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
    store_task: JoinHandle<()>,
    cri_task: Option<JoinHandle<()>>,
    scanner: Option<Scanner>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    http: Option<(oneshot::Sender<()>, JoinHandle<std::io::Result<()>>)>,
}

impl Running {
    /// Stops sampling, ends every Watch stream, and waits (boundedly) for the server to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // Ending the store closes every subscription, so streams finish and the graceful
        // shutdown below does not wait on clients that never hang up.
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

    /// Waits until the server ends on its own (an error) or `signal` completes.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            result = &mut self.server => { result??; Ok(()) }
            _ = signal => self.stop().await,
        }
    }
}

pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    check_listen_policy(
        config.listen,
        config.tls.is_some(),
        config.allow_insecure_listen,
    )?;
    let tls = load_tls(config.tls.as_ref())?;
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
        check_listen_policy(http, false, config.allow_insecure_listen)
            .context("the HTTP endpoints are plaintext (--http-listen)")?;
    }
    // Bind before loading probes: a taken port should fail fast, not after BPF setup.
    let listener = bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let http_listener = match config.http_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;

    let probe_config = config.probes.clone();
    let mut probes = tokio::task::spawn_blocking(move || {
        let probes = Probes::load(&probe_config);
        release_freed_memory();
        probes
    })
    .await?;
    report_probes(&probes);
    if let Some(logger) = probes.logger.take() {
        tokio::spawn(pump_ebpf_logs(logger));
    }

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
        .with_names(names.clone());
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
    let (store, store_task) = store::spawn(sampler, node, extras, config.base_period);
    let (tx, rx) = oneshot::channel();
    let server_stats = Arc::new(ServerStats::default());
    let service = CollectorService::new(
        store.clone(),
        server_stats.clone(),
        config.max_message_bytes,
    );
    let server = tokio::spawn(server::serve(listener, service, tls, async {
        let _ = rx.await;
    }));
    let http = http_listener.map(|listener| {
        let (tx, rx) = oneshot::channel::<()>();
        let app = http::router(store.clone(), server_stats.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
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
        store_task,
        cri_task,
        scanner,
        shutdown: Some(tx),
        server,
    })
}

/// One line per probe, and one clear warning when eBPF is off altogether.
fn report_probes(probes: &Probes) {
    let active = probes.statuses.iter().filter(|s| s.is_active()).count();
    if active == 0 {
        let why: Vec<String> = probes.statuses.iter().map(ToString::to_string).collect();
        tracing::warn!(
            "eBPF probes unavailable, running in cgroupfs-only mode: {}",
            why.join("; ")
        );
        return;
    }
    for status in &probes.statuses {
        if status.is_active() {
            tracing::info!("probe {status}");
        } else {
            tracing::warn!("probe {status}");
        }
    }
}

async fn pump_ebpf_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns the ring buffer's fd and lives inside the AsyncFd, so the fd stays
    // open for as long as it is registered.
    let mut fd = match unsafe { tokio::io::unix::AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("cannot poll aya-log ring buffer: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
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
