//! OTLP over gRPC into a receiver we did not write: rotel (a Rust OpenTelemetry collector from
//! PyPI, installed by `cargo xtask test`) decodes every request and prints what it got; the
//! print shows our resources, semantic-convention names, cumulative sums with start times and
//! the fixture's values. Wire-level only: rotel stores nothing.

mod common;

use std::time::Duration;

use collector::{
    app::{self, ServeConfig},
    export::config::{Destination, ExportConfig, Protocol},
};
use common::{cgroupfs_only, engines, eventually, http_get, node_tree};

const CONTAINER: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
const POD_UID: &str = "11111111-2222-3333-4444-555555555555";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_decodes_our_otlp_grpc_requests() {
    let dir = tempfile::tempdir().unwrap();
    let Some((rotel, _http)) = engines::rotel_agent(dir.path()).await else {
        return;
    };
    let url = format!("http://{}", rotel.addr);
    let running = app::start(ServeConfig {
        ignore_cgroup1: true,
        node_name: Some("fixture-node".into()),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        export: ExportConfig {
            destinations: vec![Destination::new(Protocol::OtlpGrpc, &url).unwrap()],
            interval: Duration::from_millis(500),
            ..ExportConfig::default()
        },
        ..cgroupfs_only(&node_tree(dir.path()))
    })
    .await
    .unwrap();
    let http = running.http_addr.unwrap();
    let count = |body: &str, name: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    eventually(
        Duration::from_secs(20),
        "three accepted requests",
        || async move {
            let body = http_get(http, "/metrics").await.1;
            (count(&body, "collector_export_requests_total") >= 3.0).then_some(())
        },
    )
    .await;
    let body = http_get(http, "/metrics").await.1;
    assert_eq!(
        count(&body, "collector_export_failures_total"),
        0.0,
        "{body}"
    );
    assert!(count(&body, "collector_export_samples_total") > 0.0);
    running.stop().await.unwrap();

    let log = rotel.log();
    // The container's resource, then its CPU as a cumulative sum with a start time.
    let at = log
        .find(&format!("k8s.container.name: Str({CONTAINER})"))
        .unwrap_or_else(|| panic!("no resource of {CONTAINER} in rotel's log:\n{log}"));
    let resource = &log[log[..at].rfind("ResourceMetrics #").unwrap()..];
    let resource = &resource[..resource[1..]
        .find("ResourceMetrics #")
        .map_or(resource.len(), |i| i + 1)];
    for line in [
        "k8s.node.name: Str(fixture-node)",
        &format!("k8s.pod.uid: Str({POD_UID})"),
        &format!("container.id: Str({CONTAINER})"),
        "Name: container.cpu.time",
        "Unit: s",
        "DataType: Sum",
        "IsMonotonic: true",
        "AggregationTemporality: AGGREGATION_TEMPORALITY_CUMULATIVE",
        "Name: container.memory.working_set",
        "DataType: Gauge",
        // usage_usec 900000 and kubelet's working set of the fixture.
        "Value: 0.9",
        "Value: 26214400",
    ] {
        assert!(resource.contains(line), "{line:?} missing from\n{resource}");
    }
    let start: u64 = resource
        .lines()
        .find_map(|l| l.strip_prefix("StartTimestamp: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        start > 1_000_000_000_000_000_000,
        "the container's start, Unix ns"
    );
}
