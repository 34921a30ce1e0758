//! The slow scans of the host, on their own thread and pace so that a sampling pass never waits
//! for them: the du walks kubelet makes of pod volumes, pod and container logs and etc-hosts,
//! and where the kubelet process runs (its cgroup, for the "kubelet" system container). Each
//! round is bounded (entries per walk, a duty cycle) and publishes a table the Summary reads.

pub mod logs;
pub mod volumes;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        mpsc::{self, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use logs::PodLogs;
use volumes::{Measured, Volume};

use crate::{
    hostfs::{du::Budget, process},
    probes::{ProbeState, ProbeStatus},
};

/// kubelet's `--volume-stats-agg-period` default: how often volumes are measured.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(60);
/// Share of one core the walks may use; a round that needs more takes longer instead.
pub const DUTY_CYCLE: f64 = 0.05;
/// Entries one du walk may visit; a volume beyond it is reported unmeasured (logged), never
/// under-counted.
pub const MAX_ENTRIES_PER_WALK: u64 = 1_000_000;

const STATUS_NAME: &str = "disk_usage";
const PROVIDES: &str = "volumes_logs_ephemeral_storage";
const KUBELET_COMM: &str = "kubelet";
const KUBELET_ONLY: &str =
    "off (no --kubelet-root-dir or --pod-logs-dir): no volumes, logs or ephemeral storage";

/// Where to look; each part off when `None`.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// kubelet's root dir (`--root-dir`, /var/lib/kubelet): pods/<uid>/volumes and etc-hosts.
    pub kubelet_root: Option<PathBuf>,
    /// kubelet's pod logs dir (/var/log/pods).
    pub pod_logs: Option<PathBuf>,
    /// Look for the kubelet process (its cgroup and start time).
    pub find_kubelet: bool,
    pub proc_root: PathBuf,
    pub period: Duration,
    pub duty_cycle: f64,
    pub max_entries: u64,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            kubelet_root: None,
            pod_logs: None,
            find_kubelet: true,
            proc_root: PathBuf::from("/proc"),
            period: DEFAULT_PERIOD,
            duty_cycle: DUTY_CYCLE,
            max_entries: MAX_ENTRIES_PER_WALK,
        }
    }
}

/// A pod's disk usage outside its containers' writable layers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodDisk {
    /// Sorted by plugin, then name.
    pub volumes: Vec<Volume>,
    pub etc_hosts: Option<Measured>,
    pub logs: PodLogs,
}

/// The kubelet process, as kubelet itself reports its system container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletProcess {
    pub pid: u32,
    pub cgroup: String,
    pub start_unix_nano: Option<u64>,
}

/// How the last round went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RoundFigures {
    pub rounds: u64,
    /// Wall time of the last round, pauses of the duty cycle included.
    pub last_round_seconds: f64,
    /// Of which walking (not pausing).
    pub last_walk_seconds: f64,
    pub last_entries: u64,
    /// Paths that could not be measured, over every round.
    pub errors: u64,
}

/// What the last round found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskTable {
    pub pods: HashMap<String, PodDisk>,
    pub kubelet: Option<KubeletProcess>,
    pub figures: RoundFigures,
}

/// The scanner's shared state: its latest table and status.
pub struct DiskScan {
    table: RwLock<Arc<DiskTable>>,
    status: Mutex<ProbeStatus>,
}

impl DiskScan {
    fn new(state: ProbeState) -> Self {
        Self {
            table: RwLock::new(Arc::default()),
            status: Mutex::new(ProbeStatus {
                name: STATUS_NAME,
                provides: PROVIDES,
                state,
            }),
        }
    }

    /// Nothing is scanned: no volumes, logs or ephemeral storage.
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self::new(ProbeState::Unsupported(
            "off (no --kubelet-root-dir or --pod-logs-dir)".into(),
        )))
    }

    pub fn table(&self) -> Arc<DiskTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn status(&self) -> ProbeStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The running scanner; dropping it (or [`Scanner::stop`]) ends the thread after its current
/// walk.
pub struct Scanner {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Scanner {
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.stop.take();
    }
}

/// Starts the scanner thread (first round at once); with nothing to scan, starts nothing.
pub fn spawn(config: ScanConfig) -> (Arc<DiskScan>, Option<Scanner>) {
    if config.kubelet_root.is_none() && config.pod_logs.is_none() && !config.find_kubelet {
        return (DiskScan::disabled(), None);
    }
    let initial = if config.kubelet_root.is_none() && config.pod_logs.is_none() {
        ProbeState::Unsupported(KUBELET_ONLY.into())
    } else {
        ProbeState::Unsupported("first round not finished".into())
    };
    let scan = Arc::new(DiskScan::new(initial));
    let (stop, stopped) = mpsc::channel();
    let shared = scan.clone();
    let thread = std::thread::Builder::new()
        .name("disk-scan".into())
        .spawn(move || {
            let mut figures = RoundFigures::default();
            loop {
                let started = Instant::now();
                let (table, state) = round(&config, &mut figures);
                *shared.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
                *shared.status.lock().unwrap_or_else(|e| e.into_inner()) = ProbeStatus {
                    name: STATUS_NAME,
                    provides: PROVIDES,
                    state,
                };
                let rest = config.period.saturating_sub(started.elapsed());
                match stopped.recv_timeout(rest) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        });
    match thread {
        Ok(thread) => (
            scan,
            Some(Scanner {
                stop: Some(stop),
                thread: Some(thread),
            }),
        ),
        Err(e) => {
            tracing::warn!("cannot start the disk-usage thread: {e}");
            (
                Arc::new(DiskScan::new(ProbeState::Failed(format!(
                    "cannot start its thread: {e}"
                )))),
                None,
            )
        }
    }
}

/// One round over everything configured.
fn round(config: &ScanConfig, figures: &mut RoundFigures) -> (DiskTable, ProbeState) {
    let started = Instant::now();
    let mut budget = Budget::new(config.max_entries, config.duty_cycle);
    let mut errors = Vec::new();
    let mut pods: BTreeMap<String, PodDisk> = BTreeMap::new();
    if let Some(root) = &config.kubelet_root {
        for (uid, dir) in volumes::sorted_dirs(&root.join("pods"), &mut errors) {
            let disk = pods.entry(uid).or_default();
            disk.volumes = volumes::pod_volumes(&dir, &mut budget, &mut errors);
            match volumes::etc_hosts(&dir, &mut budget) {
                Ok(m) => disk.etc_hosts = m,
                Err(e) => errors.push(e.into()),
            }
        }
    }
    if let Some(root) = &config.pod_logs {
        for (uid, logs) in logs::all_pods(root, &mut budget, &mut errors) {
            pods.entry(uid).or_default().logs = logs;
        }
    }
    let kubelet = config
        .find_kubelet
        .then(|| find_kubelet(&config.proc_root))
        .flatten();
    for e in &errors {
        tracing::debug!("disk usage: {e}");
    }
    figures.rounds += 1;
    figures.errors += errors.len() as u64;
    figures.last_round_seconds = started.elapsed().as_secs_f64();
    figures.last_walk_seconds = (started.elapsed().saturating_sub(budget.paused)).as_secs_f64();
    figures.last_entries = budget.entries;
    let what = [
        config.kubelet_root.as_deref().map(|p| p.join("pods")),
        config.pod_logs.clone(),
    ];
    let what: Vec<String> = what
        .iter()
        .flatten()
        .map(|p| p.display().to_string())
        .collect();
    let state = match errors.first() {
        _ if what.is_empty() => ProbeState::Unsupported(KUBELET_ONLY.into()),
        Some(first) => ProbeState::Failed(format!(
            "{} paths unmeasured in the last round, e.g. {first}",
            errors.len()
        )),
        None => ProbeState::Active {
            note: Some(format!(
                "{}: {} pods, {} entries in {:.3} s of walking",
                what.join(" and "),
                pods.len(),
                budget.entries,
                figures.last_walk_seconds
            )),
        },
    };
    let table = DiskTable {
        pods: pods.into_iter().collect(),
        kubelet,
        figures: *figures,
    };
    (table, state)
}

/// The lowest-pid process named `kubelet`, its cgroup and start time.
fn find_kubelet(proc_root: &Path) -> Option<KubeletProcess> {
    let pid = *process::pids_named(proc_root, KUBELET_COMM).ok()?.first()?;
    let cgroup = process::cgroup2_path(proc_root, pid).ok()??;
    let boot = procfs::boot_time_secs().ok()? * 1_000_000_000;
    Some(KubeletProcess {
        pid,
        cgroup,
        start_unix_nano: process::start_time_unix_nano(proc_root, pid, boot),
    })
}
