//! Push versus scrape (run by `cargo xtask bench`).
//!
//! `export_bench CONTAINERS WINDOWS`: a fixture tree of CONTAINERS containers (10 per pod, the
//! files of a real container's cgroup), each container's CPU counter moving every second. A
//! `collector` process (no probes, a full cgroupfs read every pass) serves it in four modes:
//! idle (the baseline), scraped (`/metrics/resource` and `/metrics` fetched once a round),
//! pushing remote-write, and pushing OTLP/HTTP, each to a sink in this process that reads the
//! body and answers 200. The clock runs 10x: a pass, a push and a scrape every second instead
//! of every 10 s, the same work per round. Each mode is a fresh process, the modes in rotation
//! REPEATS times; CPU is the collector's own (/proc) over one 10 s window after a warm-up.
//! Prints one JSON line per mode with the CPU per round above the idle collector's median, and
//! bytes and samples per round. Then the same paths in this process on real snapshots of the
//! fixture, timed on one thread (render both scrape endpoints; track and encode a push), which
//! the machine's noise does not blur.

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
const WINDOW: Duration = Duration::from_secs(10);
const WARM_UP: Duration = Duration::from_secs(4);
const CONTAINERS_PER_POD: usize = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let [containers, repeats] = args[..] else {
        anyhow::bail!("usage: export_bench CONTAINERS REPEATS");
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
    // Modes in rotation, a fresh process each time, so drifting load on the machine spreads
    // evenly over them.
    let mut measured: Vec<Measured> = MODES.iter().map(|_| Measured::default()).collect();
    for _ in 0..repeats {
        for (mode, m) in MODES.iter().zip(&mut measured) {
            measure(mode, &root, sink, &received, m).await?;
        }
    }
    precise(&root, containers).await?;
    let base = median(&measured[0].shares);
    for (mode, m) in MODES.iter().zip(&measured) {
        let rounds = m.rounds.max(1.0);
        report(
            mode.name,
            containers,
            &m.shares,
            base,
            m.bytes / rounds,
            m.samples / rounds,
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = mover.join();
    Ok(())
}

/// CPU time of the calling thread, ns precision.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The same comparison without the process around it: real snapshots of the fixture from the
/// library's store, then on one thread, per round, what a scrape renders (both endpoints)
/// against what a push does (track the new points, encode). Thread CPU time, no noise from
/// the sampler or the machine; prints one JSON line per path.
async fn precise(root: &Path, containers: u64) -> anyhow::Result<()> {
    use collector::{
        app::{self, ServeConfig},
        export::{otlp, remote_write, series::Tracker},
        http::{own, resource},
        probes::ProbeConfig,
        server::ServerStats,
    };
    let running = app::start(ServeConfig {
        listen: "127.0.0.1:0".parse()?,
        probes: ProbeConfig {
            disabled: true,
            ..ProbeConfig::default()
        },
        cgroup2_mount: Some(root.to_path_buf()),
        ignore_cgroup1: true,
        base_period: Duration::from_millis(300),
        ..ServeConfig::default()
    })
    .await?;
    let mut rx = running.store.snapshots();
    let mut snapshots = Vec::new();
    while snapshots.len() < 8 {
        rx.changed().await?;
        if let Some(s) = rx.borrow_and_update().clone() {
            snapshots.push(s);
        }
    }
    running.stop().await?;
    let server = ServerStats::default();
    let attached = std::time::SystemTime::now();
    let rounds = snapshots.len() * 4;
    let time = |work: &mut dyn FnMut(usize) -> (usize, usize)| {
        let (mut bytes, mut samples) = (0, 0);
        let start = thread_cpu();
        for i in 0..rounds {
            let (b, s) = work(i);
            bytes += b;
            samples += s;
        }
        let ms = (thread_cpu() - start).as_secs_f64() * 1000.0 / rounds as f64;
        (
            ms,
            bytes as f64 / rounds as f64,
            samples as f64 / rounds as f64,
        )
    };
    let scrape = time(&mut |i| {
        let s = &snapshots[i % snapshots.len()];
        let a = resource::render(Some(s));
        let b = own::render(Some(s), &server, None);
        let samples = [&a, &b]
            .iter()
            .map(|t| t.lines().filter(|l| !l.starts_with('#')).count())
            .sum();
        (a.len() + b.len(), samples)
    });
    // A tracker per pass over the snapshots: each round sends every series once, as in steady
    // state.
    let mut tracker = Tracker::new(ROUND, attached);
    let rw = time(&mut |i| {
        if i % snapshots.len() == 0 {
            tracker = Tracker::new(ROUND, attached);
        }
        tracker.observe(&snapshots[i % snapshots.len()]);
        let batch = tracker.take();
        let encoded = remote_write::encode(&batch, "node", remote_write::Histograms::Classic);
        (
            encoded.iter().map(|e| e.body.len()).sum(),
            encoded.iter().map(|e| e.samples).sum(),
        )
    });
    let otlp = time(&mut |i| {
        if i % snapshots.len() == 0 {
            tracker = Tracker::new(ROUND, attached);
        }
        tracker.observe(&snapshots[i % snapshots.len()]);
        let batch = tracker.take();
        let encoded = otlp::encode(&batch, "node");
        (
            encoded.iter().map(|e| e.body.len()).sum(),
            encoded.iter().map(|e| e.points).sum(),
        )
    });
    for (path, (ms, bytes, samples)) in [
        ("scrape_render", scrape),
        ("remote_write_encode", rw),
        ("otlp_encode", otlp),
    ] {
        println!(
            "{}",
            json!({
                "mode": path, "containers": containers, "thread_ms_per_round": ms,
                "bytes_per_round": bytes, "samples_per_round": samples,
                "bytes_per_sample": bytes / samples,
            })
        );
    }
    Ok(())
}

/// One way of serving the data.
struct Mode {
    name: &'static str,
    /// Extra `collector serve` arguments (`{sink}` is the sink's address).
    args: &'static [&'static str],
    scrape: bool,
}

const MODES: [Mode; 4] = [
    Mode {
        name: "baseline",
        args: &[],
        scrape: false,
    },
    Mode {
        name: "scrape",
        args: &[],
        scrape: true,
    },
    Mode {
        name: "remote_write",
        args: &["--remote-write-url", "http://{sink}/api/v1/write"],
        scrape: false,
    },
    Mode {
        name: "otlp_http",
        args: &[
            "--otlp-endpoint",
            "http://{sink}/v1/metrics",
            "--otlp-protocol",
            "http/protobuf",
        ],
        scrape: false,
    },
];

/// What the windows of one mode saw, summed over its repeats.
#[derive(Default)]
struct Measured {
    shares: Vec<f64>,
    bytes: f64,
    samples: f64,
    rounds: f64,
}

/// One process in `mode`: warm up, then one window of its CPU share and what it sent.
async fn measure(
    mode: &Mode,
    root: &Path,
    sink: SocketAddr,
    received: &AtomicU64,
    m: &mut Measured,
) -> anyhow::Result<()> {
    let args: Vec<String> = mode
        .args
        .iter()
        .map(|a| a.replace("{sink}", &sink.to_string()))
        .collect();
    let (collector, http) = start(root, &args)?;
    ready(http).await?;
    let scraping = Arc::new(AtomicBool::new(mode.scrape));
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
    tokio::time::sleep(WARM_UP).await;
    let before = pushed(http).await;
    let (scraped0, samples0) = (
        scraped.load(Ordering::Relaxed),
        samples.load(Ordering::Relaxed),
    );
    let received0 = received.load(Ordering::Relaxed);
    m.shares
        .extend(cpu_windows(collector.0.id(), 1, WINDOW).await);
    m.rounds += WINDOW.as_secs_f64() / ROUND.as_secs_f64();
    if mode.scrape {
        m.bytes += (scraped.load(Ordering::Relaxed) - scraped0) as f64;
        m.samples += (samples.load(Ordering::Relaxed) - samples0) as f64;
    } else if !mode.args.is_empty() {
        let after = pushed(http).await;
        // What the collector counted as accepted, against what the sink read.
        let (bytes, sink_bytes) = (
            after.1 - before.1,
            (received.load(Ordering::Relaxed) - received0) as f64,
        );
        anyhow::ensure!(
            bytes > 0.0 && (sink_bytes - bytes).abs() <= bytes * 0.5,
            "{}: the collector counted {bytes} B, the sink read {sink_bytes}",
            mode.name
        );
        m.bytes += bytes;
        m.samples += after.0 - before.0;
    }
    scraping.store(false, Ordering::Relaxed);
    let _ = scraper.await;
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    bench_util::percentile(&v, 0.5)
}

fn report(mode: &str, containers: u64, shares: &[f64], base: f64, bytes: f64, samples: f64) {
    if mode == "baseline" {
        println!(
            "{}",
            json!({"mode": mode, "containers": containers, "cpu_share": spread(shares)})
        );
        return;
    }
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
