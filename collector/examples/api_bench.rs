//! Streaming and aggregation cost, measured on separate processes (run by `cargo xtask bench`).
//!
//! `api_bench stream CGROUPS SECONDS SUBSCRIBERS...`: a `collector` process serves a fixture
//! tree of CGROUPS cgroups whose counters all move every 500 ms (every update carries every
//! cgroup); for each subscriber count, that many Watch streams at 1 s for SECONDS; prints one
//! JSON line per count with the collector's CPU (% of a core, and per subscriber above the
//! collector alone), the publish-to-receive latency (from each message's `sent_unix_nano`, set
//! when the collector queued it) and the sample-to-receive latency (from its sample time).
//!
//! `api_bench aggregate SECONDS INTERVAL_MS NODES...`: a simulator plays NODES collectors (110
//! pods each, every pod changing every interval) into one `collector aggregate` process, one
//! loopback address per node (127.0.x.y); prints per node count the aggregator's CPU and RSS.

mod bench_util;

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bench_util::{
    Process, collector_binary, cpu_windows, free_port, percentile, rss_bytes, spread,
};
use collector::proto::{
    self, ListNodeMetricsRequest, WatchRequest,
    aggregator_client::AggregatorClient,
    collector_client::CollectorClient,
    collector_server::{Collector, CollectorServer},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// CPU is measured in this many consecutive windows of the run, for a median with spread.
const WINDOWS: u32 = 3;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nums =
        |from: usize| -> Vec<u64> { args[from..].iter().map(|a| a.parse().unwrap()).collect() };
    match args.first().map(String::as_str) {
        Some("stream") => stream(nums(1)[0] as usize, nums(2)[0], &nums(3)).await,
        Some("aggregate") => aggregate(nums(1)[0], nums(2)[0], &nums(3)).await,
        _ => anyhow::bail!(
            "usage: api_bench stream CGROUPS SECONDS SUBSCRIBERS... | aggregate SECONDS INTERVAL_MS NODES..."
        ),
    }
}

// ---- streaming -------------------------------------------------------------------------------

fn write_tree(root: &Path, cgroups: usize, usage: u64) {
    for i in 0..cgroups {
        let dir = root.join(format!("c{i}"));
        let _ = std::fs::create_dir_all(&dir);
        std::fs::write(dir.join("cpu.stat"), format!("usage_usec {usage}\n")).unwrap();
    }
}

async fn stream(cgroups: usize, seconds: u64, counts: &[u64]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    std::fs::write(root.join("cpu.stat"), "usage_usec 1\n")?;
    write_tree(&root, cgroups, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let mover = {
        let (root, stop) = (root.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut usage = 2;
            while !stop.load(Ordering::Relaxed) {
                write_tree(&root, cgroups, usage);
                usage += 1000;
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let port = free_port();
    let child = Command::new(collector_binary())
        .args([
            "serve",
            "--no-ebpf",
            "--ignore-cgroup1",
            "--http-listen",
            "off",
            // The bench measures fan-out past the default subscriber cap.
            "--max-watch-subscribers",
            "1000",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--cgroup2-mount")
        .arg(&root)
        .stderr(Stdio::null())
        .spawn()?;
    let collector = Process(child);
    let pid = collector.0.id();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..100 {
        if CollectorClient::connect(endpoint.clone()).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(ready, "collector did not start on {endpoint}");

    // The collector's CPU with no subscriber: what each subscriber adds is measured above it.
    let mut alone = None;
    for &count in counts {
        let latencies = Arc::new(std::sync::Mutex::new(Vec::<(f64, f64)>::new()));
        let measuring = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..count {
            let mut client = CollectorClient::connect(endpoint.clone())
                .await?
                .max_decoding_message_size(64 << 20);
            let mut s = client
                .watch(WatchRequest {
                    interval_ms: Some(1000),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let (latencies, measuring) = (latencies.clone(), measuring.clone());
            tasks.push(tokio::spawn(async move {
                while let Ok(Some(msg)) = s.message().await {
                    let now = now_ns();
                    let ms = |since: u64| now.saturating_sub(since) as f64 / 1e6;
                    if measuring.load(Ordering::Relaxed) && !msg.snapshot && !msg.more {
                        let sent = ms(msg.sent_unix_nano);
                        let sampled = ms(msg.timestamp_unix_nano);
                        latencies.lock().unwrap().push((sent, sampled));
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        measuring.store(true, Ordering::Relaxed);
        let each = Duration::from_secs_f64(seconds as f64 / f64::from(WINDOWS));
        let cpu: Vec<f64> = cpu_windows(pid, WINDOWS, each).await;
        measuring.store(false, Ordering::Relaxed);
        let pairs = latencies.lock().unwrap().clone();
        let sorted = |pick: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = pairs.iter().map(pick).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (lat, age) = (sorted(|p| p.0), sorted(|p| p.1));
        let percent: Vec<f64> = cpu.iter().map(|c| c * 100.0).collect();
        let median = percentile(
            &{
                let mut p = percent.clone();
                p.sort_by(f64::total_cmp);
                p
            },
            0.5,
        );
        if count == 0 {
            alone = Some(median);
        }
        let per_subscriber = alone
            .filter(|_| count > 0)
            .map(|a| (median - a) / count as f64);
        println!(
            "{}",
            serde_json::json!({
                "kind": "stream", "cgroups": cgroups, "subscribers": count, "seconds": seconds,
                "collector_cpu_percent": spread(&percent),
                "cpu_percent_per_subscriber": per_subscriber,
                "messages": lat.len(),
                "latency_p50_ms": percentile(&lat, 0.5), "latency_p99_ms": percentile(&lat, 0.99),
                "latency_max_ms": lat.last().copied().unwrap_or(f64::NAN),
                "sample_age_p50_ms": percentile(&age, 0.5),
                "sample_age_p99_ms": percentile(&age, 0.99),
                "collector_rss_bytes": rss_bytes(pid),
            })
        );
        for t in tasks {
            t.abort();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = mover.join();
    Ok(())
}

// ---- aggregation -----------------------------------------------------------------------------

const PODS_PER_NODE: usize = 110;

/// Pods per simulated node: 110 (kubelet's default maximum) unless `API_BENCH_PODS` says
/// otherwise (to tell what a node costs from what its pods cost).
fn pods_per_node() -> usize {
    std::env::var("API_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PODS_PER_NODE)
}

/// A collector stand-in: each connection is the node named after the address it dialled.
struct Simulator {
    interval: Duration,
}

fn sim_message(node: &str, tick: u64, snapshot: bool, sequence: u64) -> proto::WatchResponse {
    let t = now_ns();
    let cpu = |scale: u64| {
        Some(proto::CpuStats {
            time_unix_nano: t,
            usage_core_nano_seconds: Some(tick * scale * 1_000_000_000),
            usage_nano_cores: Some(scale * 100_000_000),
            ..Default::default()
        })
    };
    let memory = Some(proto::MemoryStats {
        time_unix_nano: t,
        working_set_bytes: Some(64 << 20),
        usage_bytes: Some(80 << 20),
        ..Default::default()
    });
    let pods = (0..pods_per_node())
        .map(|i| {
            let uid = format!("{node}-0000-0000-0000-{i:012}");
            proto::PodStats {
                pod_ref: Some(proto::PodReference {
                    name: format!("pod-{i}"),
                    namespace: format!("ns-{}", i % 10),
                    uid: uid.clone(),
                }),
                start_time_unix_nano: 1,
                cpu: cpu(1),
                memory,
                containers: vec![proto::ContainerStats {
                    name: "app".into(),
                    start_time_unix_nano: 1,
                    cpu: cpu(1),
                    memory,
                    container_id: format!("{i:064}"),
                    ..Default::default()
                }],
                cgroup_path: format!("/kubepods/pod{uid}"),
                ..Default::default()
            }
        })
        .collect();
    proto::WatchResponse {
        sequence,
        snapshot,
        timestamp_unix_nano: t,
        node: snapshot.then(|| proto::NodeInfo {
            node_name: node.to_owned(),
            online_cpus: 8,
            ..Default::default()
        }),
        node_stats: Some(proto::NodeStats {
            node_name: node.to_owned(),
            cpu: cpu(4),
            memory,
            ..Default::default()
        }),
        pods,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Collector for Simulator {
    async fn get_summary(
        &self,
        _: Request<proto::GetSummaryRequest>,
    ) -> Result<Response<proto::Summary>, Status> {
        Err(Status::unimplemented("simulator"))
    }

    type WatchStream = ReceiverStream<Result<proto::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let node = request
            .local_addr()
            .map_or_else(|| "sim-unknown".to_owned(), |a| format!("sim-{}", a.ip()));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let interval = self.interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            for sequence in 0u64.. {
                tick.tick().await;
                let msg = sim_message(&node, sequence + 1, sequence == 0, sequence);
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn sim_address(i: u64, port: u16) -> SocketAddr {
    // 127.0.0.1 is the aggregator's own; nodes use 127.1.x.y.
    let (hi, lo) = ((i / 250) as u8, (i % 250 + 1) as u8);
    SocketAddr::from(([127, 1, hi, lo], port))
}

async fn aggregate(seconds: u64, interval_ms: u64, counts: &[u64]) -> anyhow::Result<()> {
    let interval = Duration::from_millis(interval_ms);
    // Every 127.x.y.z is local on Linux; a wildcard bind accepts them all.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let sim_port = listener.local_addr()?.port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CollectorServer::new(Simulator { interval }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    for &nodes in counts {
        let addresses: Vec<String> = (0..nodes)
            .map(|i| sim_address(i, sim_port).to_string())
            .collect();
        let port = free_port();
        let child = Command::new(collector_binary())
            .args(["aggregate", "--http-listen", "off", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--interval-ms")
            .arg(interval_ms.to_string())
            .args(["--stale-after-ms", "600000", "--forget-after-ms", "600000"])
            .env("AGGREGATOR_COLLECTORS", addresses.join(","))
            .stderr(Stdio::null())
            .spawn()?;
        let aggregator = Process(child);
        let pid = aggregator.0.id();
        let endpoint = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let mut client = loop {
            if let Ok(c) = AggregatorClient::connect(endpoint.clone()).await {
                break c.max_decoding_message_size(1 << 30);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "aggregator did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Wait for every node to have its second point (a rate), then measure steady state.
        loop {
            let list = client
                .list_node_metrics(ListNodeMetricsRequest {})
                .await?
                .into_inner();
            let with_rate = list
                .nodes
                .iter()
                .filter(|n| n.cpu_nano_cores.is_some())
                .count();
            if with_rate as u64 == nodes {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < interval * 3 + Duration::from_secs(120),
                "only {with_rate} of {nodes} nodes have rates"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let warmup = started.elapsed();
        // Whole intervals, so every window holds the same number of updates per node.
        let windows = (seconds / interval.as_secs().max(1)).clamp(1, u64::from(WINDOWS)) as u32;
        let cpu = cpu_windows(pid, windows, interval).await;
        let rss = rss_bytes(pid);
        let per = |scale: f64| -> Vec<f64> { cpu.iter().map(|c| c * scale).collect() };
        println!(
            "{}",
            serde_json::json!({
                "kind": "aggregate", "nodes": nodes, "pods_per_node": pods_per_node(),
                "interval_ms": interval_ms, "seconds": seconds,
                "warmup_seconds": warmup.as_secs_f64(),
                "aggregator_cpu_percent": spread(&per(100.0)),
                "millicores_per_node": spread(&per(1000.0 / nodes as f64)),
                "rss_bytes": rss, "rss_mib_per_node": rss as f64 / nodes as f64 / (1 << 20) as f64,
            })
        );
    }
    Ok(())
}
