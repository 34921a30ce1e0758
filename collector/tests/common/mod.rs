//! Helpers shared by the loopback API tests: fixture cgroup2 trees in temp dirs whose CPU
//! counters the test moves, and collectors serving them in cgroupfs-only mode.

#![allow(dead_code)]

pub mod certs;
pub mod https;
pub mod kube_api;

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

pub mod engines;
pub mod receivers;

use collector::{
    aggregate::{self, AggregateConfig, RunningAggregator, cluster::Freshness, discovery::Targets},
    app::{self, Running, ServeConfig},
    probes::ProbeConfig,
    proto::{
        ListNodeMetricsRequest, ListNodeMetricsResponse, NodeMetrics, WatchRequest, WatchResponse,
        aggregator_client::AggregatorClient, collector_client::CollectorClient,
    },
};

pub fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of the v2 cgroupfs-driver fixture (pods with containers, memory files) in `dir`.
pub fn node_tree(dir: &Path) -> PathBuf {
    let root = dir.join("cgroup");
    copy_tree(&testdata("v2-cgroupfs-driver/cgroup"), &root);
    root
}

/// Every directory of the tree that has a cpu.stat, root included.
pub fn cpu_stat_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if dir.join("cpu.stat").exists() {
            out.push(dir.clone());
        }
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out
}

/// Writes a cgroup's usage_usec atomically (rename), as a reader may be reading it.
pub fn set_usage_usec(dir: &Path, usec: u64) {
    let tmp = dir.join(".cpu.stat.tmp");
    fs::write(
        &tmp,
        format!("usage_usec {usec}\nuser_usec {usec}\nsystem_usec 0\n"),
    )
    .unwrap();
    fs::rename(tmp, dir.join("cpu.stat")).unwrap();
}

/// Moves every cpu.stat of the trees forward with wall time: containers at 0.5 core, everything
/// else at 1. Each step adds the time that really passed (not a fixed step per nap), so a
/// loaded machine that wakes this thread late does not slow the clock down.
///
/// The collectors stamp each reading with the time they read it, so a counter written late
/// shows as a rate: a thread starved for 300 ms and then adding the 300 ms at once reads as
/// three cores in a 100 ms window. The clock therefore runs as a real-time thread (it sleeps
/// almost all the time, and the ordinary threads of a loaded machine cannot delay it) and ticks
/// every 10 ms, so a window of the collectors' 100 ms pace holds 10 ± 1 ticks.
pub fn spawn_clock(trees: Vec<PathBuf>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        run_as_realtime_thread();
        let dirs: Vec<(PathBuf, f64)> = trees
            .iter()
            .flat_map(|t| cpu_stat_dirs(t))
            .map(|d| {
                let container = d.file_name().unwrap().len() == 64;
                (d, if container { 0.5 } else { 1.0 })
            })
            .collect();
        let mut usage: BTreeMap<PathBuf, u64> = dirs.iter().map(|(d, _)| (d.clone(), 0)).collect();
        let mut last = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = std::time::Instant::now();
            let elapsed_us = (now - last).as_micros() as f64;
            last = now;
            for (dir, cores) in &dirs {
                let u = usage.get_mut(dir).unwrap();
                // A reset requested by the test: the file says less than we last wrote.
                let on_disk = std::fs::read_to_string(dir.join("cpu.stat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .unwrap_or(*u);
                if on_disk < *u {
                    *u = on_disk;
                }
                *u += (elapsed_us * cores) as u64;
                set_usage_usec(dir, *u);
            }
            std::thread::sleep(CLOCK_TICK);
        }
    })
}

const CLOCK_TICK: Duration = Duration::from_millis(10);

/// SCHED_FIFO at the lowest real-time priority for the calling thread (the tests run as root).
fn run_as_realtime_thread() {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    assert_eq!(
        rc,
        0,
        "the fixture clock needs SCHED_FIFO (root or CAP_SYS_NICE): {}",
        std::io::Error::last_os_error()
    );
}

/// A collector without probes over the cgroup2 tree at `mount`, on a free loopback port,
/// sampling every 100 ms.
pub fn cgroupfs_only(mount: &Path) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        probes: ProbeConfig {
            disabled: true,
            ..ProbeConfig::default()
        },
        cgroup2_mount: Some(mount.to_path_buf()),
        base_period: Duration::from_millis(100),
        ..ServeConfig::default()
    }
}

/// A fixture node: every controller read from the tree, under `node_name`.
pub async fn start_collector(root: &Path, node_name: &str, listen: SocketAddr) -> Running {
    app::start(collector_config(root, node_name, listen))
        .await
        .unwrap()
}

/// What [`start_collector`] starts.
pub fn collector_config(root: &Path, node_name: &str, listen: SocketAddr) -> ServeConfig {
    ServeConfig {
        listen,
        ignore_cgroup1: true,
        node_name: Some(node_name.into()),
        ..cgroupfs_only(root)
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.1 GET on loopback: status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// [`http_get`] for a server that may not be up yet.
pub async fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response");
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_owned()))
}

/// Starts a collector with `config` and subscribes to Watch at `interval_ms`.
#[allow(dead_code)] // not every test binary watches
pub async fn start_watching(
    config: ServeConfig,
    interval_ms: u32,
) -> (Running, tonic::Streaming<WatchResponse>) {
    let running = app::start(config).await.unwrap();
    let mut client = CollectorClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap();
    let stream = client
        .watch(WatchRequest {
            interval_ms: Some(interval_ms),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (running, stream)
}

/// An aggregator over `collectors` on free loopback ports, asking every 200 ms.
pub async fn start_aggregator_with(
    collectors: &[SocketAddr],
    freshness: Freshness,
) -> RunningAggregator {
    aggregate::start(AggregateConfig {
        targets: Targets {
            static_addresses: collectors.iter().map(|a| a.to_string()).collect(),
            dns_names: Vec::new(),
            resolve_every: Duration::from_secs(30),
        },
        interval: Duration::from_millis(200),
        freshness,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..AggregateConfig::default()
    })
    .await
    .unwrap()
}
pub async fn node_list(
    mut client: AggregatorClient<tonic::transport::Channel>,
) -> ListNodeMetricsResponse {
    client
        .list_node_metrics(ListNodeMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
}
/// Polls the node list until `node` is there and `check` holds for it.
pub async fn until_node(
    client: &AggregatorClient<tonic::transport::Channel>,
    node: &str,
    limit: Duration,
    what: &str,
    check: fn(&NodeMetrics) -> bool,
) {
    eventually(limit, what, || {
        let client = client.clone();
        async move {
            let list = node_list(client).await;
            list.nodes
                .iter()
                .any(|n| n.name == node && check(n))
                .then_some(())
        }
    })
    .await;
}
