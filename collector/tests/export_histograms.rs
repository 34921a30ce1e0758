//! Native histograms over remote-write into a real Prometheus (Debian trixie's 2.53 with
//! `--enable-feature=native-histograms`): with the run-queue probes on, the node's histogram
//! arrives bucket for bucket as the kernel counted it, at the same pass the Watch stream
//! reports. Needs root and BPF (the probes); skips without them, fails so under
//! `COLLECTOR_REQUIRE_BPF=1`.

mod common;

use std::{collections::BTreeMap, time::Duration};

use collector::{
    app::{self, ServeConfig},
    export::{
        config::{Destination, ExportConfig, Protocol},
        remote_write::Histograms,
    },
    probes::ProbeConfig,
    proto::{WatchRequest, collector_client::CollectorClient},
};
use common::{engines, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_run_queue_histograms_arrive_bucket_for_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let Some(prometheus) = engines::prometheus(dir.path()).await else {
        return;
    };
    let url = format!("http://{}/api/v1/write", prometheus.addr);
    let running = app::start(ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        probes: ProbeConfig {
            run_stats: false,
            ..ProbeConfig::default()
        },
        base_period: Duration::from_secs(1),
        export: ExportConfig {
            destinations: vec![Destination::new(Protocol::RemoteWrite, &url).unwrap()],
            interval: Duration::from_secs(1),
            histograms: Histograms::Native,
            ..ExportConfig::default()
        },
        ..ServeConfig::default()
    })
    .await
    .unwrap();
    let active = running
        .store
        .first_or_latest(Duration::from_secs(10))
        .await
        .is_some_and(|s| {
            s.probes
                .iter()
                // Run-queue waits come from the sched family's sched_switch program.
                .any(|p| p.name == "sched_switch" && p.is_active())
        });
    if !active {
        let why = "the run-queue probes are not active (needs root and BPF)";
        assert!(
            std::env::var("COLLECTOR_REQUIRE_BPF").as_deref() != Ok("1"),
            "{why}; COLLECTOR_REQUIRE_BPF=1 forbids skipping"
        );
        eprintln!("SKIP: {why}");
        running.stop().await.unwrap();
        return;
    }
    // The root cgroup's kernel buckets at each pass, as the Watch stream reports them.
    let mut client = CollectorClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap();
    let mut stream = client
        .watch(WatchRequest {
            interval_ms: Some(1000),
            include_histograms: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut kernel: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    // Six passes, however long a loaded machine takes to make them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while kernel.len() < 6 && tokio::time::Instant::now() < deadline {
        let Ok(Ok(Some(msg))) =
            tokio::time::timeout(Duration::from_secs(5), stream.message()).await
        else {
            break;
        };
        if let Some(root) = msg.cgroups.iter().find(|c| c.path == "/")
            && let Some(r) = &root.runq_latency
            && !r.bucket_waits.is_empty()
        {
            kernel.insert(
                (msg.timestamp_unix_nano / 1_000_000) as i64,
                r.bucket_waits.clone(),
            );
        }
    }
    drop(stream);
    let last = *kernel.last_key_value().expect("root run-queue buckets").0;
    let query = "node_runqueue_wait_nanoseconds[5m]";
    let stored = eventually(
        Duration::from_secs(30),
        "the histograms in Prometheus",
        || {
            let prometheus = &prometheus;
            async move {
                let result = engines::prom_query(prometheus, query).await;
                let histograms = result.first()?["histograms"].as_array()?.clone();
                // The per-pass series go out once per export interval, each stamped with its
                // pass, so a given pass may never be sent: wait until the exporter is past the
                // last pass the stream showed, then compare the passes both saw.
                let past_last = histograms
                    .iter()
                    .any(|h| (h[0].as_f64().unwrap() * 1000.0).round() as i64 >= last);
                past_last.then_some(histograms)
            }
        },
    )
    .await;
    let mut matched = 0;
    for h in &stored {
        let ts = (h[0].as_f64().unwrap() * 1000.0).round() as i64;
        let Some(buckets) = kernel.get(&ts) else {
            continue;
        };
        matched += 1;
        let total: u64 = buckets.iter().sum();
        assert_eq!(h[1]["count"], total.to_string(), "count at {ts}");
        // [boundary rule, lower, upper, count] per populated bucket: (2^k, 2^(k+1)] ns holds
        // the kernel's bucket k.
        let mut seen = vec![0u64; buckets.len()];
        for b in h[1]["buckets"].as_array().unwrap() {
            let upper: f64 = b[2].as_str().unwrap().parse().unwrap();
            let k = upper.log2().round() as usize - 1;
            assert_eq!(upper, 2f64.powi(k as i32 + 1), "a power-of-two edge");
            seen[k] = b[3].as_str().unwrap().parse::<f64>().unwrap() as u64;
        }
        assert_eq!(&seen, buckets, "buckets at {ts}");
    }
    assert!(matched >= 3, "only {matched} passes seen by both");
    running.stop().await.unwrap();
}
