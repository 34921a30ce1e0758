//! The gRPC API over a real loopback connection, without root: the collector runs in
//! cgroupfs-only mode over a fixture tree.

mod common;

use std::{fs, path::Path, time::Duration};

use collector::{
    app::{self, Running, ServeConfig},
    proto::{WatchRequest, collector_client::CollectorClient, probe_status::State},
};
use tonic::{Code, transport::Channel};

fn fixture_tree(root: &Path) {
    fs::write(root.join("cpu.stat"), "usage_usec 1000\n").unwrap();
    fs::create_dir(root.join("svc")).unwrap();
    fs::write(
        root.join("svc/cpu.stat"),
        "usage_usec 400\nuser_usec 300\nsystem_usec 100\n",
    )
    .unwrap();
    // A garbled file: its fields are absent and counted, nothing else is affected.
    fs::create_dir(root.join("bad")).unwrap();
    fs::write(root.join("bad/cpu.stat"), "usage_usec 12x\n\u{0}garbage\n").unwrap();
}

async fn start(mount: &Path) -> (Running, CollectorClient<Channel>) {
    let running = app::start(common::cgroupfs_only(mount)).await.unwrap();
    let client = CollectorClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap();
    (running, client)
}

#[tokio::test]
async fn invalid_watch_intervals_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    fixture_tree(dir.path());
    let (running, mut client) = start(dir.path()).await;
    for ms in [0, 99, 60_001, u32::MAX] {
        let err = client
            .watch(WatchRequest {
                interval_ms: Some(ms),
                ..Default::default()
            })
            .await
            .expect_err("out-of-range interval accepted");
        assert_eq!(err.code(), Code::InvalidArgument, "{ms} ms: {err}");
        assert!(err.message().contains("interval_ms"), "{}", err.message());
    }
    // The bounds themselves are allowed.
    for ms in [100, 60_000] {
        client
            .watch(WatchRequest {
                interval_ms: Some(ms),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    running.stop().await.unwrap();
}

#[tokio::test]
async fn snapshot_then_updates_with_changes_only() {
    let dir = tempfile::tempdir().unwrap();
    fixture_tree(dir.path());
    let (running, mut client) = start(dir.path()).await;
    let mut stream = client
        .watch(WatchRequest {
            interval_ms: Some(100),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let snapshot = stream.message().await.unwrap().unwrap();
    assert!(snapshot.snapshot);
    assert_eq!(snapshot.sequence, 0);
    assert_eq!(snapshot.cgroups.len(), 3);
    let bad = snapshot.cgroups.iter().find(|c| c.path == "/bad").unwrap();
    assert_eq!(bad.cgroupfs_cpu.unwrap().usage_core_nano_seconds, None);
    let stats = snapshot.collector.unwrap();
    assert!(stats.passes >= 1 && stats.parse_errors >= 1, "{stats:?}");
    assert!(stats.watch_subscribers >= 1, "{stats:?}");
    let svc = snapshot.cgroups.iter().find(|c| c.path == "/svc").unwrap();
    let cpu = svc.cgroupfs_cpu.unwrap();
    assert_eq!(cpu.usage_core_nano_seconds, Some(400_000));
    assert_eq!(cpu.user_nano_seconds, Some(300_000));
    // cgroupfs-only: eBPF is absent (not zero, not copied from cgroupfs) and the probe says why.
    assert!(svc.ebpf_cpu.is_none());
    assert!(svc.ebpf_faults.is_none() && svc.runq_latency.is_none());
    assert_eq!(svc.ebpf_oom_kills, None);
    // Every program reports its status, each saying why it is not running; so do CRI names.
    let names: Vec<&str> = snapshot.probes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "sched_switch",
            "oom_mark_victim",
            "cgroup_mkdir",
            "cgroup_rmdir",
            "net_ingress",
            "net_egress",
            "cri",
            "cri_stats",
            "disk_usage"
        ]
    );
    for probe in &snapshot.probes {
        assert_eq!(probe.state(), State::Unsupported, "{probe:?}");
        let flag = match probe.name.as_str() {
            "cri" | "cri_stats" => "--cri-socket off",
            "disk_usage" => "--kubelet-root-dir",
            _ => "--no-ebpf",
        };
        assert!(probe.reason.contains(flag), "{probe:?}");
    }
    assert!(snapshot.node.is_some());

    // The fixture's counters move for /svc only; removing nothing else.
    fs::write(dir.path().join("svc/cpu.stat"), "usage_usec 50400\n").unwrap();
    // Wait for the update that carries the new value; rates are over consecutive messages.
    let mut previous_at = snapshot.timestamp_unix_nano;
    let (svc, at) = loop {
        let msg = stream.message().await.unwrap().unwrap();
        assert!(!msg.snapshot);
        let found = msg.cgroups.iter().find(|c| {
            c.path == "/svc" && c.cgroupfs_cpu.unwrap().usage_core_nano_seconds == Some(50_400_000)
        });
        if let Some(svc) = found {
            break (svc.clone(), msg.timestamp_unix_nano);
        }
        previous_at = msg.timestamp_unix_nano;
    };
    // 50 ms of CPU between two samples: the rate is 50 ms / Δt (wall and monotonic clocks agree
    // to well within 5 % over 100 ms).
    let expected = 50_000_000u128 * 1_000_000_000 / u128::from(at - previous_at);
    let cores = svc.cgroupfs_cpu.unwrap().usage_nano_cores.expect("rate");
    let diff = (i128::from(cores) - expected as i128).unsigned_abs() as f64 / expected as f64;
    assert!(diff < 0.05, "rate {cores} vs expected {expected}");

    // A removed cgroup is announced once.
    fs::remove_file(dir.path().join("svc/cpu.stat")).unwrap();
    fs::remove_dir(dir.path().join("svc")).unwrap();
    let removal = loop {
        let msg = stream.message().await.unwrap().unwrap();
        if !msg.removed_cgroup_ids.is_empty() {
            break msg;
        }
    };
    assert_eq!(removal.removed_cgroup_ids, vec![svc.cgroup_id]);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn get_summary_health_and_reflection() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let dir = tempfile::tempdir().unwrap();
    fixture_tree(dir.path());
    let (running, mut client) = start(dir.path()).await;
    let endpoint = format!("http://{}", running.addr);

    // The first sample may still be on its way.
    let summary = loop {
        match client
            .get_summary(collector::proto::GetSummaryRequest::default())
            .await
        {
            Ok(s) => break s.into_inner(),
            Err(e) if e.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(summary.cgroups.len(), 3);
    assert_eq!(summary.probes[0].name, "sched_switch");

    let channel = Channel::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "collector.v1.Collector".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status(), ServingStatus::Serving);
    // Each probe has its own health entry; with --no-ebpf none is serving.
    // Set once the first sample is published: give it a moment.
    let mut probe = None;
    for _ in 0..50 {
        let request = HealthCheckRequest {
            service: collector::server::probe_health_name("sched_switch"),
        };
        match health.check(request).await {
            Ok(r) => {
                probe = Some(r.into_inner().status());
                break;
            }
            Err(e) if e.code() == Code::NotFound => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(probe, Some(ServingStatus::NotServing));

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let mut names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    // Exactly what this server serves: grpcurl can describe and call health, and the
    // aggregator's API (in the same proto package) is not offered by a collector.
    assert_eq!(
        names,
        [
            "collector.v1.Collector",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection"
        ]
    );
    // Health's messages resolve through reflection too.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "grpc.health.v1.Health".into(),
        )),
    };
    let mut responses = ServerReflectionClient::new(
        Channel::from_shared(format!("http://{}", running.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
    .server_reflection_info(tokio_stream::iter([request]))
    .await
    .unwrap()
    .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    assert!(
        matches!(
            response.message_response,
            Some(MessageResponse::FileDescriptorResponse(_))
        ),
        "{:?}",
        response.message_response
    );
    running.stop().await.unwrap();
}

/// Rewrites every fixture cgroup's cpu.stat so the next pass changes all of them.
fn bump_all(root: &Path, cgroups: usize, value: u64) {
    for i in 0..cgroups {
        fs::write(
            root.join(format!("c{i}/cpu.stat")),
            format!("usage_usec {value}\n"),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_dropped_while_another_keeps_receiving() {
    // Enough cgroups that updates outgrow HTTP/2's flow-control window quickly, so a client
    // that stops reading really stops the server's sends and its buffer fills.
    const CGROUPS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    fixture_tree(dir.path());
    for i in 0..CGROUPS {
        fs::create_dir(dir.path().join(format!("c{i}"))).unwrap();
    }
    bump_all(dir.path(), CGROUPS, 1);
    let (running, _) = start(dir.path()).await;
    let endpoint = format!("http://{}", running.addr);
    // Separate connections: a stalled stream must not eat the live one's connection window.
    let watch = |endpoint: String| async move {
        CollectorClient::connect(endpoint)
            .await
            .unwrap()
            .watch(WatchRequest {
                interval_ms: Some(100),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    };
    let mut live = watch(endpoint.clone()).await;
    // The stalled client advertises small HTTP/2 windows so backpressure reaches the server soon.
    let channel = Channel::from_shared(endpoint)
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut stalled = CollectorClient::new(channel)
        .watch(WatchRequest {
            interval_ms: Some(100),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // Keep the live subscriber reading (and the data changing) until the server gives up on
    // the stalled one.
    let mut value = 2;
    let mut received = 0u64;
    let keep_reading = async {
        while running.server_stats.dropped_subscribers() == 0 {
            bump_all(dir.path(), CGROUPS, value);
            value += 1;
            let msg = live.message().await.unwrap().expect("live stream ended");
            assert_eq!(msg.sequence, received);
            received += 1;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), keep_reading)
        .await
        .expect("slow subscriber was never dropped");
    assert!(received > 10, "dropped after only {received} messages");

    // The stalled stream yields what was queued, then the reason.
    let status = loop {
        match stalled.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stalled stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("resubscribe"));
    let summary = CollectorClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap()
        .get_summary(collector::proto::GetSummaryRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.collector.unwrap().dropped_subscribers, 1);
    // The live one kept receiving after that, and on time.
    for _ in 0..3 {
        bump_all(dir.path(), CGROUPS, 1_000_000 + value);
        value += 1;
        let msg = tokio::time::timeout(Duration::from_secs(5), live.message())
            .await
            .expect("live subscriber stalled")
            .unwrap()
            .unwrap();
        assert!(!msg.snapshot);
    }
    running.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_filters_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    fixture_tree(dir.path());
    let (running, mut client) = start(dir.path()).await;
    let bad = [
        WatchRequest {
            cgroup_path_prefix: "svc".into(),
            ..Default::default()
        },
        WatchRequest {
            cgroup_path_prefix: "/svc/../etc".into(),
            ..Default::default()
        },
        WatchRequest {
            namespace: "Kube_System".into(),
            ..Default::default()
        },
        WatchRequest {
            pod: "no spaces".into(),
            ..Default::default()
        },
    ];
    for request in bad {
        let err = client.watch(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}: {err}");
    }
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_path_prefix_filter_keeps_only_that_subtree_in_snapshot_and_updates() {
    let dir = tempfile::tempdir().unwrap();
    fixture_tree(dir.path());
    fs::create_dir(dir.path().join("svc/child")).unwrap();
    fs::write(dir.path().join("svc/child/cpu.stat"), "usage_usec 1\n").unwrap();
    fs::create_dir(dir.path().join("svc2")).unwrap();
    fs::write(dir.path().join("svc2/cpu.stat"), "usage_usec 1\n").unwrap();
    let (running, mut client) = start(dir.path()).await;
    let mut stream = client
        .watch(WatchRequest {
            interval_ms: Some(100),
            cgroup_path_prefix: "/svc/".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let snapshot = stream.message().await.unwrap().unwrap();
    let mut paths: Vec<&str> = snapshot.cgroups.iter().map(|c| c.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        ["/svc", "/svc/child"],
        "component-wise: /svc2 is not under /svc"
    );
    // Changes outside the prefix never show up; inside they do.
    fs::write(dir.path().join("svc2/cpu.stat"), "usage_usec 99\n").unwrap();
    fs::write(dir.path().join("svc/child/cpu.stat"), "usage_usec 50\n").unwrap();
    let mut seen_child = false;
    for _ in 0..5 {
        let update = stream.message().await.unwrap().unwrap();
        for c in &update.cgroups {
            assert!(
                c.path.starts_with("/svc") && c.path != "/svc2",
                "{}",
                c.path
            );
            seen_child |= c.path == "/svc/child";
        }
    }
    assert!(seen_child);
    // A pod filter on a tree without pods: an empty, valid stream (node stats only).
    let mut pods_only = client
        .watch(WatchRequest {
            pod: "0a1b2c3d-0000-0000-0000-000000000000".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = pods_only.message().await.unwrap().unwrap();
    assert!(first.cgroups.is_empty() && first.pods.is_empty());
    assert!(first.node_stats.is_some());
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_big_snapshot_arrives_in_chunks_under_the_limit() {
    use prost::Message as _;
    const CGROUPS: usize = 600;
    const LIMIT: usize = 4_096;
    let dir = tempfile::tempdir().unwrap();
    fixture_tree(dir.path());
    for i in 0..CGROUPS {
        fs::create_dir(dir.path().join(format!("c{i}"))).unwrap();
    }
    bump_all(dir.path(), CGROUPS, 1);
    let (running, mut stream) = common::start_watching(
        ServeConfig {
            max_message_bytes: LIMIT,
            ..common::cgroupfs_only(dir.path())
        },
        100,
    )
    .await;
    let mut chunks = Vec::new();
    loop {
        let msg = stream.message().await.unwrap().unwrap();
        let more = msg.more;
        chunks.push(msg);
        if !more {
            break;
        }
    }
    assert!(chunks.len() > 3, "{} chunks", chunks.len());
    let mut ids = std::collections::BTreeSet::new();
    for (i, c) in chunks.iter().enumerate() {
        assert!(
            c.encoded_len() <= LIMIT,
            "chunk {i}: {} bytes",
            c.encoded_len()
        );
        assert!(c.snapshot && c.sequence == 0, "chunk {i}");
        assert_eq!(
            c.node.is_some(),
            i == 0,
            "node info rides in the first chunk"
        );
        ids.extend(c.cgroups.iter().map(|c| c.cgroup_id));
    }
    // Root, svc, bad and the 600: all there, each once.
    let total: usize = chunks.iter().map(|c| c.cgroups.len()).sum();
    assert_eq!((ids.len(), total), (CGROUPS + 3, CGROUPS + 3));
    // The next message is the update, sequence 1 (chunks share their message's sequence).
    bump_all(dir.path(), CGROUPS, 2);
    let next = stream.message().await.unwrap().unwrap();
    assert_eq!((next.sequence, next.snapshot), (1, false));
    running.stop().await.unwrap();
}
