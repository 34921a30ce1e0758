//! The refresher: one task owns the runtime connection and publishes a fresh [`NameTable`].
//!
//! It lists everything on start, then every `period`, and sooner when a summary meets a
//! container it cannot name (a cgroup that just appeared): at most once per [`MIN_GAP`] while
//! the runtime answers, and only on the periodic tick while it does not, so an unreachable
//! runtime is asked once per period, never in a loop. An id the runtime does not know (a
//! container started behind its back, or one listed a moment before it registered) asks at
//! most [`ON_DEMAND_TRIES`] times per period.
//!
//! The same connection asks for filesystem usage (image filesystem, writable layers) every
//! stats period, and tells which cgroup the runtime runs in (its socket's peer).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use tokio::{sync::Notify, task::JoinHandle, time::Instant};

use super::{
    endpoint::{self, Client, Connection, CriSetting},
    names::NameTable,
    proto::{ListContainersRequest, ListPodSandboxRequest, VersionRequest},
    stats::{self, RuntimeFs},
};
use crate::{
    hostfs::process,
    probes::{ProbeState, ProbeStatus},
};

/// Default pace of full re-lists; new containers are named sooner, on demand.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
/// Fastest on-demand refresh.
pub const MIN_GAP: Duration = Duration::from_secs(1);
/// On-demand refreshes one unknown container id may cause per period.
pub const ON_DEMAND_TRIES: u8 = 3;

const STATUS_NAME: &str = "cri";
const PROVIDES: &str = "pod_and_container_names";
const STATS_STATUS_NAME: &str = "cri_stats";
const STATS_PROVIDES: &str = "image_fs_and_container_rootfs";

/// Shared between the refresher (writer) and every summary build (readers).
pub struct CriNames {
    table: RwLock<Arc<NameTable>>,
    status: Mutex<ProbeStatus>,
    fs: RwLock<Arc<RuntimeFs>>,
    fs_status: Mutex<ProbeStatus>,
    /// The cgroup2 path the runtime's process runs in, once a connection says who it is.
    runtime_cgroup: RwLock<Option<String>>,
    /// Container ids asked about since the last periodic refresh.
    asked: Mutex<HashMap<String, Asked>>,
    wake: Notify,
}

impl CriNames {
    fn new(state: ProbeState) -> Self {
        Self {
            table: RwLock::new(Arc::default()),
            fs_status: Mutex::new(ProbeStatus {
                name: STATS_STATUS_NAME,
                provides: STATS_PROVIDES,
                state: state.clone(),
            }),
            status: Mutex::new(ProbeStatus {
                name: STATUS_NAME,
                provides: PROVIDES,
                state,
            }),
            fs: RwLock::new(Arc::default()),
            runtime_cgroup: RwLock::new(None),
            asked: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// No runtime is asked; pods keep their uids and containers their ids.
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self::new(ProbeState::Unsupported(
            "disabled (--cri-socket off): pods are named by uid, containers by id".into(),
        )))
    }

    /// The latest table (empty until the first successful list).
    pub fn table(&self) -> Arc<NameTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn status(&self) -> ProbeStatus {
        lock(&self.status).clone()
    }

    /// The latest filesystem usage from the runtime (empty until the first answer, and again
    /// after a failed one: never stale numbers).
    pub fn runtime_fs(&self) -> Arc<RuntimeFs> {
        self.fs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn fs_status(&self) -> ProbeStatus {
        lock(&self.fs_status).clone()
    }

    /// Which cgroup the runtime runs in (kubelet's "runtime" system container).
    pub fn runtime_cgroup(&self) -> Option<String> {
        self.runtime_cgroup
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks for a refresh for containers the table cannot name (bounded per id, see the
    /// module comment).
    pub fn request<'a>(&self, unknown: impl IntoIterator<Item = &'a str>) {
        let mut asked = lock(&self.asked);
        let mut wake = false;
        for id in unknown {
            let entry = asked.entry(id.to_owned()).or_default();
            if !entry.waiting && entry.refreshes < ON_DEMAND_TRIES {
                entry.waiting = true;
                wake = true;
            }
        }
        if wake {
            self.wake.notify_one();
        }
    }

    /// A refresh is starting: it answers every waiting id; a periodic one starts over.
    fn refresh_started(&self, periodic: bool) {
        let mut asked = lock(&self.asked);
        if periodic {
            asked.clear();
        }
        for entry in asked.values_mut() {
            entry.waiting = false;
            entry.refreshes = entry.refreshes.saturating_add(1);
        }
    }

    fn set_state(&self, state: ProbeState) {
        let mut status = lock(&self.status);
        if status.state != state {
            match &state {
                ProbeState::Active { note } => tracing::info!(
                    "CRI names: {}",
                    note.as_deref().unwrap_or("runtime answering")
                ),
                ProbeState::Unsupported(why) | ProbeState::Failed(why) => {
                    tracing::warn!("CRI names unavailable: {why}")
                }
            }
            status.state = state;
        }
    }

    fn publish(&self, table: NameTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }

    fn publish_fs(&self, fs: RuntimeFs, state: ProbeState) {
        *self.fs.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fs);
        let mut status = lock(&self.fs_status);
        if status.state != state {
            if let ProbeState::Unsupported(why) | ProbeState::Failed(why) = &state {
                tracing::warn!("CRI filesystem stats unavailable: {why}");
            }
            status.state = state;
        }
    }
}

#[derive(Debug, Default)]
struct Asked {
    /// Refreshes that ran since the id was first asked about.
    refreshes: u8,
    /// Asked, and no refresh has started since.
    waiting: bool,
}

/// Starts the refresher; `CriSetting::Off` starts nothing. Names are re-listed every `period`,
/// filesystem usage asked for every `stats_period`.
pub fn spawn(
    setting: CriSetting,
    period: Duration,
    stats_period: Duration,
) -> (Arc<CriNames>, Option<JoinHandle<()>>) {
    if setting == CriSetting::Off {
        return (CriNames::disabled(), None);
    }
    let names = Arc::new(CriNames::new(ProbeState::Unsupported(
        "not listed yet".into(),
    )));
    let task = tokio::spawn(refresh_loop(names.clone(), setting, period, stats_period));
    (names, Some(task))
}

/// A runtime that answered: its clients, socket and self-description (asked once).
struct Connected {
    conn: Connection,
    socket: PathBuf,
    version: String,
}

async fn refresh_loop(
    names: Arc<CriNames>,
    setting: CriSetting,
    period: Duration,
    stats_period: Duration,
) {
    // Some while the runtime answers: a failed list drops the connection.
    let mut runtime: Option<Connected> = None;
    let mut next_periodic = Instant::now();
    let mut next_stats = Instant::now();
    let mut last_attempt: Option<Instant> = None;
    loop {
        let periodic = tokio::select! {
            _ = tokio::time::sleep_until(next_periodic) => true,
            _ = names.wake.notified() => false,
            _ = tokio::time::sleep_until(next_stats) => {
                // Until a connection exists, look again soon rather than a period later.
                next_stats = Instant::now() + if runtime.is_some() { stats_period } else { MIN_GAP };
                if let Some(c) = runtime.as_mut() {
                    refresh_stats(&names, c).await;
                }
                continue;
            }
        };
        if !periodic {
            // On demand: only while the runtime answers, and not faster than MIN_GAP.
            if runtime.is_none() {
                continue;
            }
            if let Some(at) = last_attempt
                && at.elapsed() < MIN_GAP
            {
                tokio::time::sleep_until(at + MIN_GAP).await;
            }
        } else {
            next_periodic = Instant::now() + period;
        }
        last_attempt = Some(Instant::now());
        names.refresh_started(periodic);
        let connected = match runtime.take() {
            Some(c) => c,
            None => match find_runtime(&setting).await {
                Ok(c) => {
                    let cgroup = c
                        .conn
                        .peer_pid
                        .and_then(|pid| process::cgroup2_path(Path::new("/proc"), pid).ok())
                        .flatten();
                    *names
                        .runtime_cgroup
                        .write()
                        .unwrap_or_else(|e| e.into_inner()) = cgroup;
                    c
                }
                Err(state) => {
                    names.set_state(state.clone());
                    names.publish_fs(RuntimeFs::default(), state);
                    continue;
                }
            },
        };
        runtime = refresh(&names, connected).await;
    }
}

/// Asks for filesystem usage; a failure empties the table rather than leaving old numbers.
async fn refresh_stats(names: &CriNames, c: &mut Connected) {
    match stats::fetch(&mut c.conn).await {
        Ok(fs) => names.publish_fs(
            fs,
            ProbeState::Active {
                note: Some(format!("{} at {}", c.version, c.socket.display())),
            },
        ),
        Err(status) => {
            let why = format!(
                "{} did not answer ImageFsInfo/ListContainerStats ({}: {})",
                c.socket.display(),
                status.code(),
                status.message()
            );
            let state = if status.code() == tonic::Code::Unimplemented {
                ProbeState::Unsupported(why)
            } else {
                ProbeState::Failed(why)
            };
            names.publish_fs(RuntimeFs::default(), state);
        }
    }
}

/// Lists and publishes; the connection back while the runtime answers.
async fn refresh(names: &CriNames, mut c: Connected) -> Option<Connected> {
    match list(&mut c.conn.runtime).await {
        Ok(table) => {
            names.publish(table);
            names.set_state(ProbeState::Active {
                note: Some(format!("{} at {}", c.version, c.socket.display())),
            });
            Some(c)
        }
        Err(status) => {
            // Keep the last table: names of containers that still run are still right.
            names.set_state(ProbeState::Failed(format!(
                "{} stopped answering ({}: {}); new pods are named by uid and containers by \
                 id until it does",
                c.socket.display(),
                status.code(),
                status.message()
            )));
            None
        }
    }
}

/// The first candidate socket that exists and accepts a connection.
async fn find_runtime(setting: &CriSetting) -> Result<Connected, ProbeState> {
    let candidates = setting.candidates();
    let mut failures = Vec::new();
    for socket in &candidates {
        if !socket.exists() {
            continue;
        }
        match endpoint::connect_both(socket).await {
            Ok(mut conn) => {
                let version = version(&mut conn.runtime).await;
                return Ok(Connected {
                    conn,
                    socket: socket.clone(),
                    version,
                });
            }
            Err(e) => failures.push(format!("{}: {}", socket.display(), error_chain(&e))),
        }
    }
    let fallback = "pods are named by uid, containers by id";
    Err(if failures.is_empty() {
        ProbeState::Unsupported(format!(
            "no CRI socket at {} ({fallback}; set --cri-socket)",
            join_paths(&candidates)
        ))
    } else {
        ProbeState::Failed(format!(
            "cannot connect: {} ({fallback})",
            failures.join("; ")
        ))
    })
}

async fn list(client: &mut Client) -> Result<NameTable, tonic::Status> {
    let sandboxes = client
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items;
    let containers = client
        .list_containers(ListContainersRequest::default())
        .await?
        .into_inner()
        .containers;
    Ok(NameTable::from_runtime(&sandboxes, &containers))
}

/// "containerd 1.6.20 (CRI v1)", or what failed to say it.
async fn version(client: &mut Client) -> String {
    match client.version(VersionRequest::default()).await {
        Ok(v) => {
            let v = v.into_inner();
            format!(
                "{} {} (CRI {})",
                v.runtime_name, v.runtime_version, v.runtime_api_version
            )
        }
        Err(e) => format!("a runtime that does not say its version ({})", e.code()),
    }
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_is_reported_and_names_fall_back() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let (names, task) = spawn(
            CriSetting::Socket(socket.clone()),
            Duration::from_secs(60),
            stats::DEFAULT_STATS_PERIOD,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while names.status().state == ProbeState::Unsupported("not listed yet".into()) {
            assert!(Instant::now() < deadline, "no status after 5 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ProbeState::Unsupported(why) = names.status().state else {
            panic!("{}", names.status());
        };
        assert!(why.contains(&socket.display().to_string()), "{why}");
        assert!(why.contains("named by uid"), "{why}");
        assert_eq!(names.table().pod_count(), 0);
        task.unwrap().abort();
    }

    #[tokio::test]
    async fn a_socket_nobody_serves_is_a_failure_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("dead.sock");
        // Bound then dropped: the file exists, connections are refused.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let (names, task) = spawn(
            CriSetting::Socket(socket),
            Duration::from_secs(60),
            stats::DEFAULT_STATS_PERIOD,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let ProbeState::Failed(why) = names.status().state {
                assert!(why.contains("cannot connect"), "{why}");
                break;
            }
            assert!(Instant::now() < deadline, "still {}", names.status());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.unwrap().abort();
    }

    #[test]
    fn an_unknown_id_asks_a_bounded_number_of_times_per_period() {
        let names = CriNames::new(ProbeState::Unsupported("test".into()));
        let wakes = |names: &CriNames| {
            // notify_one stores one permit; count whether one is pending.
            let pending = names.wake.notified();
            futures::pin_mut!(pending);
            pending.enable()
        };
        names.request(["a"]);
        assert!(wakes(&names), "a new id wakes the refresher");
        names.request(["a"]);
        assert!(!wakes(&names), "no second wake before a refresh starts");
        for _ in 0..ON_DEMAND_TRIES - 1 {
            names.refresh_started(false);
            names.request(["a"]);
            assert!(wakes(&names), "still unknown after a refresh: ask again");
        }
        names.refresh_started(false);
        names.request(["a"]);
        assert!(!wakes(&names), "gave up until the next periodic refresh");
        names.refresh_started(true);
        names.request(["a"]);
        assert!(wakes(&names), "a periodic refresh starts over");
    }

    #[test]
    fn disabled_says_so() {
        let names = CriNames::disabled();
        assert!(names.status().to_string().contains("--cri-socket off"));
        names.request(["abc"]);
        assert!(names.table().container("abc").is_none());
    }
}
