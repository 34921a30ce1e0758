//! The soak's processes: the collector and the aggregator as daemons, their figures from
//! /proc and /metrics, the kill -9 and restart, and Prometheus as the remote-write receiver.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use collector::{
    proto::{
        GetSummaryRequest, ListNodeMetricsRequest, aggregator_client::AggregatorClient,
        collector_client::CollectorClient,
    },
    unix_time::unix_nanos,
};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::{
    churn::{SoakTree, usage_ns},
    watcher::Watch,
};

/// How long a (re)started collector or the aggregator's recovery may take.
const START_LIMIT: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A child process killed on drop, its stderr appended to a log file.
pub struct Daemon(Child);

impl Daemon {
    pub fn start(binary: &Path, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let log = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM first: the collector detaches its probes and the exporter flushes.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }
}

/// A collector client once GetSummary answers.
pub async fn connect(port: u16) -> anyhow::Result<CollectorClient<Channel>> {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Ok(mut c) = CollectorClient::connect(format!("http://127.0.0.1:{port}")).await
            && c.get_summary(GetSummaryRequest::default()).await.is_ok()
        {
            return Ok(c);
        }
        anyhow::ensure!(Instant::now() < deadline, "the collector never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: soak\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

/// The sum of a family's samples in a Prometheus text exposition.
pub fn metric(exposition: &str, family: &str) -> Option<f64> {
    let values: Vec<f64> = exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The collector's resident memory and descriptors, and its CPU per pass over a minute (clock
/// ticks of 10 ms are too coarse for one 10-second reading).
pub struct ProcessFigures {
    pid: u32,
    /// (CPU clock ticks, passes) at the newest reading and at the start of the minute.
    latest: Option<(u64, f64)>,
    minute_start: Option<(u64, f64)>,
}

pub struct Taken {
    pub rss_kib: u64,
    pub fds: usize,
}

impl ProcessFigures {
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            latest: None,
            minute_start: None,
        }
    }

    pub fn take(&mut self, passes: Option<f64>) -> Taken {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let fds = fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, |d| d.count());
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // After the command's closing parenthesis: utime and stime are fields 14 and 15
        // (exited threads included).
        let ticks: u64 = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        if let Some(passes) = passes {
            self.latest = Some((ticks, passes));
            self.minute_start.get_or_insert((ticks, passes));
        }
        Taken { rss_kib, fds }
    }

    /// (CPU ms per pass, passes) since the previous call (or the first reading), and a new
    /// minute starts.
    pub fn end_minute(&mut self) -> (Option<f64>, f64) {
        let (Some((t1, p1)), Some((t0, p0))) = (self.latest, self.minute_start) else {
            return (None, 0.0);
        };
        self.minute_start = Some((t1, p1));
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let passes = p1 - p0;
        let per_pass = (passes > 0.0).then(|| (t1 - t0) as f64 * 1000.0 / hz / passes);
        (per_pass, passes)
    }
}

/// Kills the collector with SIGKILL, starts it again on the same ports, and measures the
/// recovery: the Watch subscriber's new snapshot and epoch, the aggregator's fresh node, the
/// cgroupfs counters continuing and the eBPF ones starting over.
pub async fn restart(
    collector: &mut Daemon,
    binary: &Path,
    args: &[String],
    grpc: u16,
    watch: &Watch,
    aggregator_port: u16,
    tree: &SoakTree,
) -> anyhow::Result<Value> {
    let busy = tree.busy_path(0);
    let mut client = connect(grpc).await?;
    let before = busy_record(&mut client, &busy).await?;
    let reconnects = watch.figures().reconnects;
    let log = PathBuf::from(format!("/proc/{}/fd/2", collector.pid()));
    let log = fs::read_link(&log).unwrap_or_default();
    collector.kill9();
    let killed = Instant::now();
    let killed_at = unix_nanos(SystemTime::now());
    *collector = Daemon::start(binary, args, &log)?;
    let mut client = connect(grpc).await?;
    let answering_after = killed.elapsed();
    let after = busy_record(&mut client, &busy).await?;
    // The subscriber saw the new process (a new epoch) in a snapshot.
    let deadline = Instant::now() + START_LIMIT;
    while watch.figures().reconnects == reconnects {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the Watch subscriber never resumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let watch_after = killed.elapsed();
    // The aggregator lists the node fresh, with a rate from the new collector's readings.
    let mut aggregator =
        AggregatorClient::connect(format!("http://127.0.0.1:{aggregator_port}")).await?;
    let aggregator_after = loop {
        let nodes = aggregator
            .list_node_metrics(ListNodeMetricsRequest::default())
            .await?
            .into_inner()
            .nodes;
        if nodes
            .iter()
            .any(|n| !n.stale && n.cpu_nano_cores.is_some() && n.timestamp_unix_nano > killed_at)
        {
            break killed.elapsed();
        }
        anyhow::ensure!(
            killed.elapsed() < START_LIMIT,
            "the aggregator never listed the node again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    Ok(json!({
        "answering_after_s": answering_after.as_secs_f64(),
        "watch_resumed_after_s": watch_after.as_secs_f64(),
        "aggregator_fresh_after_s": aggregator_after.as_secs_f64(),
        "epoch_before": before.epoch,
        "epoch_after": after.epoch,
        "busy_cgroupfs_before_ns": before.cgroupfs,
        "busy_cgroupfs_after_ns": after.cgroupfs,
        "busy_kernel_after_ns": usage_ns(&tree.mount.join(busy.trim_start_matches('/')).join("cpu.stat")),
        "busy_ebpf_before_ns": before.ebpf,
        "busy_ebpf_after_ns": after.ebpf,
    }))
}

struct BusyRecord {
    epoch: u64,
    cgroupfs: u64,
    ebpf: u64,
}

async fn busy_record(
    client: &mut CollectorClient<Channel>,
    path: &str,
) -> anyhow::Result<BusyRecord> {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let s = client
            .get_summary(GetSummaryRequest::default())
            .await?
            .into_inner();
        let epoch = s.collector.as_ref().map_or(0, |c| c.start_time_unix_nano);
        if let Some(c) = s.cgroups.iter().find(|c| c.path == path)
            && let (Some(fs), Some(e)) = (
                c.cgroupfs_cpu
                    .as_ref()
                    .and_then(|f| f.usage_core_nano_seconds),
                c.ebpf_cpu.as_ref(),
            )
        {
            return Ok(BusyRecord {
                epoch,
                cgroupfs: fs,
                ebpf: e.on_cpu_nano_seconds,
            });
        }
        anyhow::ensure!(Instant::now() < deadline, "no record of {path}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prometheus with its remote-write receiver on a free port, its data in a temp dir.
pub struct Receiver {
    pub addr: String,
    _daemon: Daemon,
    _dir: tempfile::TempDir,
}

pub fn start_prometheus(binary: &Path) -> anyhow::Result<Receiver> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("prometheus.yml");
    fs::write(&config, "global:\n  scrape_interval: 1m\n")?;
    let addr = format!("127.0.0.1:{}", free_port());
    let daemon = Daemon::start(
        binary,
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={addr}"),
            "--web.enable-remote-write-receiver".into(),
        ],
        &dir.path().join("prometheus.log"),
    )?;
    Ok(Receiver {
        addr,
        _daemon: daemon,
        _dir: dir,
    })
}

/// How many points of `node_cpu_usage_seconds_total` Prometheus holds over the soak.
pub async fn prometheus_points(receiver: &Receiver, minutes: u64) -> anyhow::Result<f64> {
    let port: u16 = receiver
        .addr
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .parse()?;
    let query = format!(
        "/api/v1/query?query=count_over_time(node_cpu_usage_seconds_total%5B{}m%5D)",
        minutes + 1
    );
    let body = http_get(port, &query).await?;
    let json = body.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: Value = serde_json::from_str(json.trim()).context("Prometheus answer")?;
    Ok(v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0))
}
