//! Push versus scrape (run by `cargo xtask bench`).
//!
//! `export_bench CONTAINERS WINDOWS`: a fixture tree of CONTAINERS containers (10 per pod, the
//! files of a real container's cgroup), each container's CPU counter moving every second. A
//! `collector` process (no probes, a full cgroupfs read every pass) serves it in four modes:
//! idle (the baseline), scraped (`/metrics/resource` and `/metrics` fetched once a round),
//! pushing remote-write, and pushing OTLP/HTTP, each to a sink in this process that reads the
//! body and answers 204/200. The clock runs 10x: a pass, a push and a scrape every second
//! instead of every 10 s, the same work per round. CPU is the collector's own (/proc), in
//! WINDOWS windows of 5 s after a warm-up; prints one JSON line per mode with the CPU per round
//! above the baseline, and bytes and samples per round.

mod bench_util;

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bench_util::{Process, collector_binary, cpu_windows, free_port, spread};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One round: a pass, a push, a scrape (10 s in production, 1 s here).
const ROUND: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(5);
const WARM_UP: Duration = Duration::from_secs(4);
const CONTAINERS_PER_POD: usize = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let [containers, windows] = args[..] else {
        anyhow::bail!("usage: export_bench CONTAINERS WINDOWS");
    };
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("cgroup");
    let ids = write_tree(&root, containers as usize)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mover = {
        let (root, stop) = (root.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut usec = 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                usec += 7_919;
                for path in &ids {
                    let _ = std::fs::write(
                        root.join(path).join("cpu.stat"),
                        format!("usage_usec {usec}\nuser_usec {usec}\nsystem_usec 0\n"),
                    );
                }
                std::thread::sleep(ROUND);
            }
        })
    };
    let (sink, received) = sink().await?;

    // Idle, then scraped: one process.
    let (collector, http) = start(&root, &[])?;
    ready(http).await?;
    tokio::time::sleep(WARM_UP).await;
    let pid = collector.0.id();
    let idle = cpu_windows(pid, windows as u32, WINDOW).await;
    let base = median(&idle);
    println!(
        "{}",
        json!({"mode": "baseline", "containers": containers, "cpu_share": spread(&idle)})
    );
    let scraping = Arc::new(AtomicBool::new(true));
    let scraped = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let scraper = {
        let (scraping, scraped, samples) = (scraping.clone(), scraped.clone(), samples.clone());
        tokio::spawn(async move {
            while scraping.load(Ordering::Relaxed) {
                for path in ["/metrics/resource", "/metrics"] {
                    if let Ok(body) = get(http, path).await {
                        scraped.fetch_add(body.len() as u64, Ordering::Relaxed);
                        let n = body.lines().filter(|l| !l.starts_with('#')).count();
                        samples.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(ROUND).await;
            }
        })
    };
    tokio::time::sleep(ROUND * 2).await;
    let (bytes0, samples0) = (
        scraped.load(Ordering::Relaxed),
        samples.load(Ordering::Relaxed),
    );
    let shares = cpu_windows(pid, windows as u32, WINDOW).await;
    let rounds = (WINDOW * windows as u32).as_secs_f64() / ROUND.as_secs_f64();
    report(
        "scrape",
        containers,
        &shares,
        base,
        (scraped.load(Ordering::Relaxed) - bytes0) as f64 / rounds,
        (samples.load(Ordering::Relaxed) - samples0) as f64 / rounds,
    );
    scraping.store(false, Ordering::Relaxed);
    let _ = scraper.await;
    drop(collector);

    for (mode, flag, path) in [
        ("remote_write", "--remote-write-url", "/api/v1/write"),
        ("otlp_http", "--otlp-endpoint", "/v1/metrics"),
    ] {
        let url = format!("http://{sink}{path}");
        let mut extra = vec![flag.to_owned(), url];
        if mode == "otlp_http" {
            extra.extend(["--otlp-protocol".to_owned(), "http/protobuf".to_owned()]);
        }
        let (collector, http) = start(&root, &extra)?;
        ready(http).await?;
        tokio::time::sleep(WARM_UP).await;
        let before = pushed(http).await;
        let received0 = received.load(Ordering::Relaxed);
        let shares = cpu_windows(collector.0.id(), windows as u32, WINDOW).await;
        let after = pushed(http).await;
        // What the collector counted as accepted, against what the sink read.
        let bytes = (after.1 - before.1) / rounds;
        let sink_bytes = (received.load(Ordering::Relaxed) - received0) as f64 / rounds;
        anyhow::ensure!(
            bytes > 0.0 && (sink_bytes - bytes).abs() <= bytes * 0.5,
            "{mode}: collector counted {bytes} B/round, the sink read {sink_bytes}"
        );
        report(
            mode,
            containers,
            &shares,
            base,
            bytes,
            (after.0 - before.0) / rounds,
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = mover.join();
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    bench_util::percentile(&v, 0.5)
}

fn report(mode: &str, containers: u64, shares: &[f64], base: f64, bytes: f64, samples: f64) {
    // CPU share above the idle collector's, as ms per round.
    let ms: Vec<f64> = shares
        .iter()
        .map(|s| (s - base) * ROUND.as_secs_f64() * 1000.0)
        .collect();
    println!(
        "{}",
        json!({
            "mode": mode,
            "containers": containers,
            "cpu_share": spread(shares),
            "ms_per_round": spread(&ms),
            "bytes_per_round": bytes,
            "samples_per_round": samples,
            "bytes_per_sample": if samples > 0.0 { bytes / samples } else { f64::NAN },
        })
    );
}

/// `pod<uid>/<id>` directories with a real container's files; returns their paths.
fn write_tree(root: &Path, containers: usize) -> anyhow::Result<Vec<String>> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "testdata/v2-cgroupfs-driver/cgroup/kubepods/burstable/pod11111111-2222-3333-4444-555555555555",
    );
    let container =
        fixture.join("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee");
    let copy_files = |from: &Path, to: &Path| -> anyhow::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name()))?;
            }
        }
        Ok(())
    };
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/v2-cgroupfs-driver/cgroup");
    copy_files(&top, root)?;
    let mut paths = Vec::new();
    for pod in 0..containers.div_ceil(CONTAINERS_PER_POD) {
        let pod_path = format!("kubepods/burstable/pod{pod:08x}-0000-4000-8000-000000000000");
        copy_files(&fixture, &root.join(&pod_path))?;
        for c in 0..CONTAINERS_PER_POD.min(containers - pod * CONTAINERS_PER_POD) {
            let path = format!("{pod_path}/{:064x}", pod * CONTAINERS_PER_POD + c + 1);
            copy_files(&container, &root.join(&path))?;
            paths.push(path);
        }
    }
    Ok(paths)
}

fn start(root: &Path, extra: &[String]) -> anyhow::Result<(Process, SocketAddr)> {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let child = Command::new(collector_binary())
        .args([
            "serve",
            "--no-ebpf",
            "--ignore-cgroup1",
            "--cri-socket",
            "off",
        ])
        .args(["--listen", "127.0.0.1:0", "--sample-interval-ms", "1000"])
        .args(["--export-interval-ms", "1000"])
        .arg("--http-listen")
        .arg(http.to_string())
        .arg("--cgroup2-mount")
        .arg(root)
        .args(extra)
        .stderr(Stdio::null())
        .spawn()?;
    Ok((Process(child), http))
}

async fn ready(http: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..100 {
        if get(http, "/healthz").await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("collector did not answer on {http}")
}

/// Body of a 200 answer to a plain HTTP/1.0 GET.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    s.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed answer"))?;
    anyhow::ensure!(head.contains(" 200 "), "{path}: {head}");
    Ok(body.to_owned())
}

/// (samples, bytes) the collector counts as delivered, from its `/metrics`.
async fn pushed(http: SocketAddr) -> (f64, f64) {
    let body = get(http, "/metrics").await.unwrap_or_default();
    let sum = |name: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (
        sum("collector_export_samples_total"),
        sum("collector_export_bytes_total"),
    )
}

/// A receiver that reads each request's body and answers 200 with no content (what a
/// remote-write or OTLP/HTTP receiver says to a good request); counts the bytes it read.
async fn sink() -> anyhow::Result<(SocketAddr, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 65536];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 65536];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + length);
                    counter.fetch_add(length as u64, Ordering::Relaxed);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, received))
}
