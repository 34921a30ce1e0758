//! The aggregator against three real collectors on loopback (cgroupfs-only, over fixture trees
//! whose CPU counters the test moves at a known pace): the cluster view, metrics-server's rates,
//! a counter reset, a collector that dies (stale, then forgotten) and comes back.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use collector::{
    aggregate::{RunningAggregator, cluster::Freshness},
    proto::{
        ClusterWatchRequest, ListPodMetricsRequest, PodMetrics, aggregator_client::AggregatorClient,
    },
};
use common::*;
use tonic::{Code, transport::Channel};

const CORE: u64 = 1_000_000_000;

/// The collectors' pace here. A rate is over the window between two readings, each stamped when
/// its collector read it; on a loaded 2-core machine a pass can run 100 ms late, which in the
/// 100 ms windows of the other tests' pace reads the fixture clock's core as 0.2 or 2. At
/// 500 ms the same delay moves a rate by a fifth.
const PACE: Duration = Duration::from_millis(500);

/// A collector over the fixture tree at [`PACE`].
async fn start_paced_collector(
    root: &Path,
    node_name: &str,
    listen: SocketAddr,
) -> collector::app::Running {
    collector::app::start(collector::app::ServeConfig {
        base_period: PACE,
        ..collector_config(root, node_name, listen)
    })
    .await
    .unwrap()
}

async fn start_aggregator(collectors: &[SocketAddr]) -> RunningAggregator {
    start_aggregator_with(
        collectors,
        Freshness {
            stale_after: 4 * PACE,
            forget_after: 8 * PACE,
        },
    )
    .await
}

async fn pods(client: &mut AggregatorClient<Channel>) -> Vec<PodMetrics> {
    client
        .list_pod_metrics(ListPodMetricsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_collectors_merge_into_one_cluster_view() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let trees: Vec<PathBuf> = dirs.iter().map(|d| node_tree(d.path())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let clock = spawn_clock(trees.clone(), stop.clone());
    let names = ["node-a", "node-b", "node-c"];
    let mut collectors = Vec::new();
    for (tree, name) in trees.iter().zip(names) {
        collectors.push(start_paced_collector(tree, name, "127.0.0.1:0".parse().unwrap()).await);
    }
    let addrs: Vec<SocketAddr> = collectors.iter().map(|c| c.addr).collect();
    let aggregator = start_aggregator(&addrs).await;
    let mut client = AggregatorClient::connect(format!("http://{}", aggregator.grpc_addr))
        .await
        .unwrap();

    // Every node with a rate; every pod of every node with its containers' rates.
    let nodes = eventually(Duration::from_secs(10), "three nodes with rates", || {
        let client = client.clone();
        async move {
            let nodes = node_list(client).await;
            (nodes.nodes.len() == 3 && nodes.nodes.iter().all(|n| n.cpu_nano_cores.is_some()))
                .then_some(nodes)
        }
    })
    .await;
    let listed: Vec<&str> = nodes.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(listed, names);
    assert!(
        nodes
            .collectors
            .iter()
            .all(|c| c.connected && c.source == "static")
    );
    for n in &nodes.nodes {
        let cores = n.cpu_nano_cores.unwrap() as f64 / CORE as f64;
        assert!(
            (0.4..=1.6).contains(&cores),
            "{}: {cores} cores, clock runs 1",
            n.name
        );
        assert!(!n.stale && n.window_nano_seconds > 0);
        assert!(n.memory_working_set_bytes.is_some());
    }
    let per_node = eventually(Duration::from_secs(10), "pods of every node", || {
        let mut client = client.clone();
        async move {
            let pods = pods(&mut client).await;
            let nodes: std::collections::BTreeSet<String> =
                pods.iter().map(|p| p.node.clone()).collect();
            (nodes.len() == 3).then_some(pods)
        }
    })
    .await;
    for p in &per_node {
        assert!(!p.uid.is_empty() && !p.containers.is_empty(), "{p:?}");
        for c in &p.containers {
            let cores = c.cpu_nano_cores as f64 / CORE as f64;
            assert!(
                (0.2..=0.8).contains(&cores),
                "{}/{}: {cores} cores, clock runs 0.5",
                p.uid,
                c.name
            );
            assert!(c.memory_working_set_bytes > 0);
        }
    }

    // metrics.k8s.io JSON, as kubectl / the HPA would read it.
    let http = aggregator.http_addr.unwrap();
    let (status, body) = http_get(http, "/apis/metrics.k8s.io/v1beta1/nodes").await;
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "NodeMetricsList");
    assert_eq!(list["apiVersion"], "metrics.k8s.io/v1beta1");
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    let item = &list["items"][0];
    assert_eq!(item["metadata"]["name"], "node-a");
    let cpu = item["usage"]["cpu"].as_str().unwrap();
    assert!(
        cpu.ends_with('n') || cpu.ends_with('u') || cpu.ends_with('m'),
        "{cpu}"
    );
    assert!(item["window"].as_str().unwrap().ends_with('s'), "{item}");
    assert!(item["timestamp"].as_str().unwrap().ends_with('Z'), "{item}");
    let pod = &per_node[0];
    let path = format!(
        "/apis/metrics.k8s.io/v1beta1/namespaces/{}/pods/{}",
        pod.namespace,
        if pod.name.is_empty() {
            &pod.uid
        } else {
            &pod.name
        }
    );
    if !pod.namespace.is_empty() {
        let (status, body) = http_get(http, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = http_get(http, "/apis/metrics.k8s.io/v1beta1/pods").await;
    assert_eq!(status, 200);
    let pods_json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(pods_json["kind"], "PodMetricsList");
    assert_eq!(pods_json["items"].as_array().unwrap().len(), per_node.len());
    let (status, body) = http_get(http, "/apis/metrics.k8s.io/v1beta1/nodes/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("\"NotFound\""), "{body}");
    let (status, _) = http_get(http, "/apis/metrics.k8s.io/v1beta1/namespaces/Bad_NS/pods").await;
    assert_eq!(status, 400);

    // Bad arguments are the caller's error.
    let err = client
        .list_pod_metrics(ListPodMetricsRequest {
            namespace: "Not A Namespace".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for bad in [
        ListPodMetricsRequest {
            continue_token: "forged".into(),
            ..Default::default()
        },
        ListPodMetricsRequest {
            limit: 1_000_000,
            ..Default::default()
        },
    ] {
        let err = client.list_pod_metrics(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    }
    // Pages of one pod each cover the list.
    let all = pods(&mut client).await;
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_pod_metrics(ListPodMetricsRequest {
                limit: 1,
                continue_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.pods.len() <= 1);
        paged.extend(page.pods.into_iter().map(|p| (p.uid, p.node)));
        if page.continue_token.is_empty() {
            break;
        }
        token = page.continue_token;
    }
    let mut whole: Vec<(String, String)> = all
        .iter()
        .map(|p| (p.uid.clone(), p.node.clone()))
        .collect();
    whole.sort();
    paged.sort();
    assert_eq!(paged, whole, "every pod of every node once");
    let err = client
        .watch(ClusterWatchRequest {
            interval_ms: Some(10),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A container restart: its counter drops to ~0. Never a negative or huge rate.
    let container = cpu_stat_dirs(&trees[0])
        .into_iter()
        .find(|d| d.file_name().unwrap().len() == 64)
        .unwrap();
    set_usage_usec(&container, 0);
    for _ in 0..30 {
        for p in pods(&mut client).await {
            for c in &p.containers {
                assert!(
                    c.cpu_nano_cores <= 2 * CORE,
                    "{}/{}: {} nano cores after a counter reset",
                    p.uid,
                    c.name,
                    c.cpu_nano_cores
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Cluster Watch: a snapshot of every node first.
    let mut watch = client
        .watch(ClusterWatchRequest {
            interval_ms: Some(1_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert!(first.snapshot);
    assert_eq!(first.nodes.len(), 3);

    // Kill node-b's collector: stale after four paces of silence, its pods leave the pod list,
    // then it is forgotten.
    let b_addr = collectors[1].addr;
    collectors.remove(1).stop().await.unwrap();
    until_node(
        &client,
        "node-b",
        Duration::from_secs(10),
        "node-b stale",
        |n| n.stale,
    )
    .await;
    assert!(pods(&mut client).await.iter().all(|p| p.node != "node-b"));
    let (_, body) = http_get(http, "/apis/metrics.k8s.io/v1beta1/nodes").await;
    assert!(
        !body.contains("node-b"),
        "stale nodes are not served as metrics: {body}"
    );
    let update = eventually(Duration::from_secs(10), "node-b forgotten", || {
        let client = client.clone();
        async move {
            let nodes = node_list(client).await;
            let gone = nodes.nodes.iter().all(|n| n.name != "node-b");
            let target = nodes
                .collectors
                .iter()
                .find(|c| c.address == b_addr.to_string())
                .cloned();
            gone.then_some(target)
        }
    })
    .await
    .expect("the target stays listed");
    assert!(
        !update.connected && !update.last_error.is_empty() && update.reconnects > 0,
        "{update:?}"
    );
    let mut removed = false;
    for _ in 0..10 {
        let msg = watch.message().await.unwrap().unwrap();
        if msg.removed_nodes.contains(&"node-b".to_string()) {
            removed = true;
            break;
        }
    }
    assert!(removed, "the cluster Watch says node-b went away");

    // It comes back on the same address: fresh again, with a rate.
    collectors.insert(1, start_paced_collector(&trees[1], "node-b", b_addr).await);
    until_node(
        &client,
        "node-b",
        Duration::from_secs(10),
        "node-b back with a rate",
        |n| !n.stale && n.cpu_nano_cores.is_some(),
    )
    .await;

    aggregator.stop().await.unwrap();
    for c in collectors {
        c.stop().await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    clock.join().unwrap();
}
