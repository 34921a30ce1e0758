//! 5,000 Watch streams that never read, from 50 connections, against a real `collector serve`
//! process over 1,000 changing cgroups: its memory stays under the DaemonSet's limit (read from
//! deploy/collector.yaml), the streams past the subscriber cap are refused with
//! RESOURCE_EXHAUSTED, and a well-behaved subscriber that was there first keeps its pace.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use collector::proto::{WatchRequest, collector_client::CollectorClient};
use tonic::{Code, transport::Channel};

const CGROUPS: usize = 1_000;
const CONNECTIONS: usize = 50;
const STREAMS_PER_CONNECTION: usize = 100;
/// How long the flood is held while memory and the good subscriber are watched.
const HOLD: Duration = Duration::from_secs(12);
const INTERVAL_MS: u32 = 1_000;

struct Collector(Child);

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The DaemonSet's memory limit, in bytes (e.g. "256Mi").
fn daemonset_memory_limit() -> u64 {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/collector.yaml"),
    )
    .unwrap();
    let limit = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap()["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
        .as_str()
        .unwrap()
        .to_owned();
    let mib: u64 = limit
        .strip_suffix("Mi")
        .expect("a limit in Mi")
        .parse()
        .unwrap();
    mib << 20
}

/// VmHWM (peak RSS) and VmRSS of `pid`, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
            * 1024
    };
    (kib("VmHWM:"), kib("VmRSS:"))
}

/// Rewrites every cgroup's cpu.stat twice a second so that every update carries them all.
fn spawn_churn(root: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut value = 1u64;
        while !stop.load(Ordering::Relaxed) {
            for i in 0..CGROUPS {
                common::set_usage_usec(&root.join(format!("c{i}")), value * 1000 + i as u64);
            }
            value += 1;
            std::thread::sleep(Duration::from_millis(500));
        }
    })
}

fn start_collector(root: &Path) -> (Collector, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args([
            "serve",
            "--no-ebpf",
            "--ignore-cgroup1",
            "--http-listen",
            "off",
        ])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--cgroup2-mount")
        .arg(root)
        .args(["--cri-socket", "off"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Collector(child), format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_stalled_streams_stay_under_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    common::set_usage_usec(&root, 1);
    for i in 0..CGROUPS {
        std::fs::create_dir(root.join(format!("c{i}"))).unwrap();
        common::set_usage_usec(&root.join(format!("c{i}")), 1);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let churn = spawn_churn(root.clone(), stop.clone());
    let (collector, endpoint) = start_collector(&root);
    let pid = collector.0.id();

    // The good subscriber connects first and reads everything, timing each update.
    let mut good = common::eventually(Duration::from_secs(20), "the collector up", || {
        let endpoint = endpoint.clone();
        async move {
            let mut client = CollectorClient::connect(endpoint).await.ok()?;
            let request = WatchRequest {
                interval_ms: Some(INTERVAL_MS),
                ..Default::default()
            };
            Some(client.watch(request).await.ok()?.into_inner())
        }
    })
    .await;
    let last_seen = Arc::new(AtomicU64::new(0));
    let seen = last_seen.clone();
    let good_task = tokio::spawn(async move {
        // The collector's pass count at each message: the flood must not cost it a pass.
        let mut passes = Vec::new();
        loop {
            match good.message().await {
                Ok(Some(msg)) => {
                    if let Some(stats) = msg.collector.filter(|_| !msg.more) {
                        passes.push(stats.passes);
                        seen.store(stats.passes, Ordering::Relaxed);
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    // Only the end of the test (the collector killed) may end it.
                    assert_ne!(status.code(), Code::ResourceExhausted, "{status}");
                    break;
                }
            }
        }
        passes
    });

    // The flood: 50 connections, 100 streams each, none ever read.
    let mut flood = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        for _ in 0..STREAMS_PER_CONNECTION {
            let mut client = CollectorClient::new(channel.clone());
            flood.push(tokio::spawn(async move {
                let request = WatchRequest {
                    interval_ms: Some(INTERVAL_MS),
                    ..Default::default()
                };
                // Held (never read) until the test ends, or refused.
                tokio::time::timeout(HOLD * 2, client.watch(request)).await
            }));
        }
    }
    let limit = daemonset_memory_limit();
    let started = Instant::now();
    let mut peak_rss = 0;
    while started.elapsed() < HOLD {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (_, rss) = memory(pid);
        peak_rss = peak_rss.max(rss);
        assert!(
            rss < limit,
            "collector RSS {} MiB over the DaemonSet limit {} MiB",
            rss >> 20,
            limit >> 20
        );
    }
    let (hwm, _) = memory(pid);
    assert!(
        hwm < limit,
        "peak RSS {} MiB over the DaemonSet limit {} MiB",
        hwm >> 20,
        limit >> 20
    );

    // Refused either by the subscriber cap (RESOURCE_EXHAUSTED) or, for streams a client opened
    // before it heard the server's SETTINGS, by the per-connection stream cap (REFUSED_STREAM).
    let (mut held, mut refused, mut refused_streams, mut pending) = (Vec::new(), 0, 0, 0);
    for call in flood {
        if !call.is_finished() {
            pending += 1;
            call.abort();
            continue;
        }
        match call.await.unwrap() {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(status)) if status.code() == Code::ResourceExhausted => {
                assert!(
                    status.message().contains("--max-watch-subscribers"),
                    "{status}"
                );
                refused += 1;
            }
            Ok(Err(status)) => {
                assert!(
                    format!("{status:?}").contains("REFUSED_STREAM"),
                    "{status:?}"
                );
                refused_streams += 1;
            }
            Err(_) => pending += 1,
        }
    }
    eprintln!(
        "{} streams held, {refused} refused (subscriber cap), {refused_streams} refused (stream \
         cap), {pending} still waiting for a stream slot; peak RSS {} MiB (limit {} MiB)",
        held.len(),
        peak_rss >> 20,
        limit >> 20
    );
    assert!(
        held.len() < collector::server::DEFAULT_MAX_WATCH_SUBSCRIBERS,
        "the good subscriber holds one of the slots"
    );
    assert!(
        refused + refused_streams > 4_000,
        "only {refused} + {refused_streams} refused"
    );

    // The good subscriber kept its stream through it all, kept receiving, and is not behind:
    // it gets the collector's latest pass. (Its wall-clock gaps follow the sampler's pace,
    // which a busy machine stretches for everyone alike; that is not what the flood may cost.)
    let final_passes = final_pass_count(&endpoint).await;
    let caught_up = Instant::now();
    while last_seen.load(Ordering::Relaxed) < final_passes {
        assert!(
            caught_up.elapsed() < Duration::from_secs(30),
            "the good subscriber never got pass {final_passes} (last {})",
            last_seen.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    drop(collector);
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    let passes = good_task.await.unwrap();
    eprintln!("good subscriber saw passes {passes:?}; the collector made {final_passes}");
    assert!(
        passes.len() as u64 >= HOLD.as_secs() / 2,
        "{} updates in {HOLD:?}",
        passes.len()
    );
    assert!(
        passes.windows(2).all(|w| w[0] < w[1]),
        "passes out of order: {passes:?}"
    );
}

/// The collector's pass count now, from a fresh GetSummary.
async fn final_pass_count(endpoint: &str) -> u64 {
    let mut client = CollectorClient::connect(endpoint.to_owned()).await.unwrap();
    let summary = client
        .get_summary(collector::proto::GetSummaryRequest::default())
        .await
        .unwrap()
        .into_inner();
    summary.collector.unwrap().passes
}
