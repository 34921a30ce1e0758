//! Push export against real engines on loopback (Debian trixie's Prometheus 2.53 and
//! VictoriaMetrics 1.112, fetched by `cargo xtask test`) and against receivers that fail:
//! every cgroupfs reading arrives once, stamped with its read time; removed series go stale;
//! an outage within the queue bound loses nothing and duplicates nothing; a 400 is dropped and
//! counted, not retried; a receiver that never answers does not slow sampling; OTLP arrives
//! with the Kubernetes resource attributes, over HTTP into VictoriaMetrics and over gRPC.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use collector::{
    app::{self, Running, ServeConfig},
    export::{
        ExportMetrics,
        config::{Destination, ExportConfig, Protocol},
    },
    http::{MoreMetrics as _, prom::Exposition},
};
use common::{cgroupfs_only, engines, eventually, http_get, node_tree, receivers, set_usage_usec};

const POD_UID: &str = "11111111-2222-3333-4444-555555555555";
const CONTAINER: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
const NODE: &str = "fixture-node";
const PASS: Duration = Duration::from_millis(250);

fn container_dir(root: &Path) -> PathBuf {
    root.join(format!("kubepods/burstable/pod{POD_UID}/{CONTAINER}"))
}

/// A probes-off collector over the fixture `root` (a full cgroupfs read every 250 ms pass),
/// pushing every 500 ms to `destinations`, retrying quickly. (The exporter sees every pass
/// unless it falls a whole pass behind; 250 ms leaves a loaded machine room.)
async fn start(root: &Path, destinations: Vec<Destination>) -> (Running, SocketAddr) {
    let running = app::start(ServeConfig {
        ignore_cgroup1: true,
        node_name: Some(NODE.into()),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        export: ExportConfig {
            destinations,
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(10),
            ..ExportConfig::default()
        },
        base_period: PASS,
        ..cgroupfs_only(root)
    })
    .await
    .unwrap();
    let http = running.http_addr.unwrap();
    (running, http)
}

fn rw(addr: SocketAddr, path: &str) -> Destination {
    Destination::new(Protocol::RemoteWrite, &format!("http://{addr}{path}")).unwrap()
}

/// `/metrics` now.
async fn metrics(http: SocketAddr) -> String {
    http_get(http, "/metrics").await.1
}

/// The exporters' families after the collector stopped (its HTTP server is gone by then).
fn final_metrics(running: &Option<Arc<ExportMetrics>>) -> String {
    let mut e = Exposition::default();
    running.as_ref().expect("exporting").write(&mut e);
    e.render()
}

/// The sum of a family's samples in `body` whose labels contain every `want`.
fn counter(body: &str, name: &str, want: &[&str]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn dropped(body: &str) -> f64 {
    counter(body, "collector_export_dropped_samples_total", &[])
}

/// The container's CPU sample on `/metrics/resource`: (timestamp ms, value).
async fn served_reading(http: SocketAddr) -> Option<(i64, f64)> {
    let (_, body) = http_get(http, "/metrics/resource").await;
    let prefix = format!("container_cpu_usage_seconds_total{{container=\"{CONTAINER}\"");
    let line = body.lines().find(|l| l.starts_with(&prefix))?;
    let mut words = line.rsplit(' ');
    let ts = words.next()?.parse().ok()?;
    Some((ts, words.next()?.parse().ok()?))
}

/// Moves the container's CPU counter `steps` times while recording every reading
/// `/metrics/resource` serves (stamped with its read time); returns the readings and the
/// values written.
async fn drive(root: &Path, http: SocketAddr, steps: u64) -> (BTreeMap<i64, f64>, BTreeSet<u64>) {
    let mut readings = BTreeMap::new();
    let mut written = BTreeSet::from([900_000u64]);
    for step in 1..=steps {
        let usec = 900_000 + step * 10_000;
        set_usage_usec(&container_dir(root), usec);
        written.insert(usec);
        for _ in 0..3 {
            if let Some((ts, v)) = served_reading(http).await {
                readings.insert(ts, v);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (readings, written)
}

/// Each series' timestamps (sorted) strictly increase: no sample stored twice.
fn assert_ordered(series: &[(serde_json::Value, Vec<f64>, Vec<i64>)]) {
    for (labels, _, timestamps) in series {
        assert!(
            timestamps.windows(2).all(|w| w[0] < w[1]),
            "{labels}: timestamps not strictly increasing: {timestamps:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_holds_every_reading_at_its_read_time_and_removed_series_go_stale() {
    let dir = tempfile::tempdir().unwrap();
    let Some(prometheus) = engines::prometheus(dir.path()).await else {
        return;
    };
    let root = node_tree(dir.path());
    let (running, http) = start(&root, vec![rw(prometheus.addr, "/api/v1/write")]).await;
    let (readings, written) = drive(&root, http, 20).await;
    let last_ts = *readings.last_key_value().unwrap().0;
    let query = format!("container_cpu_usage_seconds_total{{container=\"{CONTAINER}\"}}[10m]");
    let stored = eventually(
        Duration::from_secs(30),
        "the last reading in Prometheus",
        || {
            let (prometheus, query) = (&prometheus, &query);
            async move {
                let result = engines::prom_query(prometheus, query).await;
                let [series] = result.as_slice() else {
                    return None;
                };
                assert_eq!(series["metric"]["node"], NODE);
                assert_eq!(series["metric"]["pod"], POD_UID);
                let stored: BTreeMap<i64, f64> = series["values"]
                    .as_array()?
                    .iter()
                    .map(|v| {
                        let ts = (v[0].as_f64().unwrap() * 1000.0).round() as i64;
                        (ts, v[1].as_str().unwrap().parse::<f64>().unwrap())
                    })
                    .collect();
                stored.contains_key(&last_ts).then_some(stored)
            }
        },
    )
    .await;
    // Every reading the collector served is there, at the time it was read, with its value.
    for (ts, value) in &readings {
        assert_eq!(stored.get(ts), Some(value), "reading at {ts} ms");
    }
    // And nothing else: every stored value is one the test wrote.
    for value in stored.values() {
        let usec = (value * 1e6).round() as u64;
        assert!(written.contains(&usec), "{value} was never in cpu.stat");
    }
    assert!(stored.len() >= readings.len());
    // Prometheus answers 400 to a duplicate or out-of-order sample: it never did.
    let body = metrics(http).await;
    assert_eq!(counter(&body, "collector_export_failures_total", &[]), 0.0);
    assert_eq!(dropped(&body), 0.0);
    assert!(counter(&body, "collector_export_samples_total", &[]) > 0.0);

    // prometheus-adapter's rules (deploy/prometheus-adapter.yaml) find the container's
    // working set under the names we push, as the adapter would ask for one pod.
    let adapter = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus-adapter.yaml"),
    )
    .unwrap();
    let docs: serde_yaml::Value = serde_yaml::from_str(&adapter).unwrap();
    let config: serde_yaml::Value =
        serde_yaml::from_str(docs["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let memory = config["resourceRules"]["memory"]["containerQuery"]
        .as_str()
        .unwrap()
        .replace("<<.LabelMatchers>>", &format!("pod=\"{POD_UID}\""))
        .replace("<<.GroupBy>>", "pod,container");
    let result = engines::prom_query(&prometheus, &memory).await;
    assert_eq!(result.len(), 1, "{memory}: {result:?}");
    assert_eq!(result[0]["metric"]["container"], CONTAINER);
    // memory.current 30408704 - inactive_file 4194304.
    assert_eq!(result[0]["value"][1], "26214400");

    // The container goes: its series are marked stale, so an instant query no longer finds
    // them (without the marker they would linger for the 5-minute lookback); the pod stays.
    std::fs::remove_dir_all(container_dir(&root)).unwrap();
    let now = format!("container_cpu_usage_seconds_total{{container=\"{CONTAINER}\"}}");
    eventually(
        Duration::from_secs(30),
        "the container's series to go stale",
        || {
            let (prometheus, now) = (&prometheus, &now);
            async move {
                engines::prom_query(prometheus, now)
                    .await
                    .is_empty()
                    .then_some(())
            }
        },
    )
    .await;
    let pod = format!("pod_cpu_usage_seconds_total{{pod=\"{POD_UID}\"}}");
    assert_eq!(engines::prom_query(&prometheus, &pod).await.len(), 1);
    let body = metrics(http).await;
    assert_eq!(counter(&body, "collector_export_failures_total", &[]), 0.0);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn victoria_metrics_gets_each_sample_once_by_remote_write_and_otlp() {
    let dir = tempfile::tempdir().unwrap();
    let Some(vm) = engines::victoria_metrics(dir.path()).await else {
        return;
    };
    let root = node_tree(dir.path());
    let otlp = Destination::new(
        Protocol::OtlpHttp,
        &format!("http://{}/opentelemetry/v1/metrics", vm.addr),
    )
    .unwrap();
    let (running, http) = start(&root, vec![rw(vm.addr, "/api/v1/write"), otlp]).await;
    let (readings, _) = drive(&root, http, 10).await;
    let exported = running.export_metrics.clone();
    running.stop().await.unwrap();

    // Remote-write: VictoriaMetrics keeps every sample written, duplicates included. What
    // arrived last may take its ingestion buffer a moment to show.
    let last = *readings.last_key_value().unwrap().0;
    let selector = format!("{{node=\"{NODE}\"}}");
    let series = eventually(
        Duration::from_secs(20),
        "the last reading in VictoriaMetrics",
        || {
            let (vm, selector) = (&vm, &selector);
            async move {
                let series = engines::vm_export(vm, selector).await;
                let otlp = engines::vm_export(vm, "{__name__=\"container.cpu.time\"}").await;
                let has = |label: &str, series: &[(serde_json::Value, Vec<f64>, Vec<i64>)]| {
                    series
                        .iter()
                        .any(|(m, _, t)| m[label] == CONTAINER && t.contains(&last))
                };
                (has("container", &series) && has("k8s.container.name", &otlp)).then_some(series)
            }
        },
    )
    .await;
    assert!(series.len() >= 8, "{series:?}");
    assert_ordered(&series);
    let names: BTreeSet<&str> = series
        .iter()
        .filter_map(|(m, _, _)| m["__name__"].as_str())
        .collect();
    for family in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_start_time_seconds",
        "pod_cpu_usage_seconds_total",
        "node_cpu_usage_seconds_total",
        "node_memory_working_set_bytes",
    ] {
        assert!(names.contains(family), "{family} missing: {names:?}");
    }
    let cpu = |s: &&(serde_json::Value, Vec<f64>, Vec<i64>)| {
        s.0["__name__"] == "container_cpu_usage_seconds_total" && s.0["container"] == CONTAINER
    };
    let (_, rw_values, rw_times) = series.iter().find(cpu).unwrap();
    for (ts, value) in &readings {
        let i = rw_times
            .binary_search(ts)
            .unwrap_or_else(|_| panic!("reading at {ts} missing from {rw_times:?} {readings:?}"));
        assert_eq!(rw_values[i], *value);
    }

    // OTLP: semantic-convention names, the resource attributes as labels, the same readings.
    let otlp = engines::vm_export(&vm, "{__name__=\"container.cpu.time\"}").await;
    assert_ordered(&otlp);
    let (labels, values, times) = otlp
        .iter()
        .find(|(m, _, _)| m["k8s.container.name"] == CONTAINER)
        .unwrap_or_else(|| panic!("no container.cpu.time of {CONTAINER}: {otlp:?}"));
    assert_eq!(labels["k8s.pod.uid"], POD_UID);
    assert_eq!(
        labels["k8s.pod.name"], POD_UID,
        "no runtime: the pod is named by its uid"
    );
    assert_eq!(labels["container.id"], CONTAINER);
    assert_eq!(labels["k8s.node.name"], NODE);
    assert_eq!(
        (times, values),
        (rw_times, rw_values),
        "both protocols carry the same readings"
    );
    let pods = engines::vm_export(&vm, "{__name__=\"k8s.pod.memory.working_set\"}").await;
    let pod = pods
        .iter()
        .find(|(m, _, _)| m["k8s.pod.uid"] == POD_UID)
        .expect("the pod's working set");
    // memory.current 30408704 - inactive_file 4194304.
    assert_eq!(pod.1.last(), Some(&26_214_400.0));
    assert_eq!(dropped(&final_metrics(&exported)), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_second_outage_within_the_queue_bound_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut vm) = engines::victoria_metrics(dir.path()).await else {
        return;
    };
    let root = node_tree(dir.path());
    let (running, http) = start(&root, vec![rw(vm.addr, "/api/v1/write")]).await;
    let protocol = "protocol=\"remote_write\"";
    eventually(Duration::from_secs(20), "a first delivery", || async move {
        let body = metrics(http).await;
        (counter(&body, "collector_export_samples_total", &[protocol]) > 0.0).then_some(())
    })
    .await;
    vm.stop();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let queued = counter(&metrics(http).await, "collector_export_queue_bytes", &[]);
    assert!(queued > 0.0, "the outage's samples wait in the queue");
    vm.start();
    vm.ready("/health").await;
    eventually(
        Duration::from_secs(60),
        "the queue to drain",
        || async move {
            (counter(&metrics(http).await, "collector_export_queue_bytes", &[]) == 0.0)
                .then_some(())
        },
    )
    .await;
    let exported = running.export_metrics.clone();
    running.stop().await.unwrap();
    let body = final_metrics(&exported);
    let accepted = counter(&body, "collector_export_samples_total", &[protocol]);
    assert!(counter(&body, "collector_export_failures_total", &[]) > 0.0);
    assert_eq!(dropped(&body), 0.0);
    // What arrived last may take VictoriaMetrics' ingestion buffer a moment to show.
    let selector = format!("{{node=\"{NODE}\"}}");
    let mut series = Vec::new();
    let mut stored = 0;
    for _ in 0..40 {
        series = engines::vm_export(&vm, &selector).await;
        stored = series.iter().map(|(_, v, _)| v.len()).sum::<usize>();
        if stored as f64 >= accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_ordered(&series);
    assert_eq!(
        stored as f64,
        accepted,
        "every accepted sample stored exactly once\n{}",
        vm.log()
    );
    // Four passes a second for over 30 s: the outage's readings are all there.
    let (_, _, times) = series
        .iter()
        .find(|(m, _, _)| m["__name__"] == "node_cpu_usage_seconds_total")
        .unwrap();
    assert!(times.len() > 60, "{} node readings", times.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_400_gets_each_request_once_and_the_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, bodies) = receivers::http(receivers::Answer::BadRequest).await;
    let (running, http) = start(&node_tree(dir.path()), vec![rw(addr, "/api/v1/write")]).await;
    eventually(
        Duration::from_secs(20),
        "three refused requests",
        || async move {
            (counter(&metrics(http).await, "collector_export_requests_total", &[]) >= 3.0)
                .then_some(())
        },
    )
    .await;
    let exported = running.export_metrics.clone();
    running.stop().await.unwrap();
    let body = final_metrics(&exported);
    let bodies = bodies.lock().unwrap().clone();
    let requests = counter(&body, "collector_export_requests_total", &[]);
    assert_eq!(requests, bodies.len() as f64);
    assert_eq!(
        counter(&body, "collector_export_failures_total", &[]),
        requests
    );
    let distinct: BTreeSet<&Vec<u8>> = bodies.iter().collect();
    assert_eq!(
        distinct.len(),
        bodies.len(),
        "a refused request is never sent again"
    );
    let rejected = counter(
        &body,
        "collector_export_dropped_samples_total",
        &["reason=\"rejected\""],
    );
    assert!(rejected >= 3.0, "{rejected}");
    assert_eq!(counter(&body, "collector_export_samples_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_does_not_slow_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, bodies) = receivers::http(receivers::Answer::Never).await;
    let (running, http) = start(&node_tree(dir.path()), vec![rw(addr, "/api/v1/write")]).await;
    eventually(
        Duration::from_secs(20),
        "a request held by the receiver",
        || {
            let bodies = bodies.clone();
            async move { (!bodies.lock().unwrap().is_empty()).then_some(()) }
        },
    )
    .await;
    let passes =
        |http| async move { counter(&metrics(http).await, "collector_sampler_passes_total", &[]) };
    let before = passes(http).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = passes(http).await - before;
    // 250 ms passes: 12 in 3 s; a busy 2-core machine still makes at least half.
    assert!(
        during >= 6.0,
        "only {during} passes in 3 s while a push hung"
    );
    let body = metrics(http).await;
    assert_eq!(counter(&body, "collector_export_samples_total", &[]), 0.0);
    assert!(counter(&body, "collector_export_queue_bytes", &[]) > 0.0);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_grpc_carries_resources_headers_and_honours_partial_success() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = receivers::otlp_grpc().await;
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let destination = Destination::new(Protocol::OtlpGrpc, &format!("http://{addr}"))
        .unwrap()
        .with_headers(&[("X-Scope-OrgID".into(), "tenant-1".into())])
        .unwrap()
        .with_bearer_token_file(Some(token));
    let (running, http) = start(&node_tree(dir.path()), vec![destination]).await;
    eventually(Duration::from_secs(20), "three deliveries", || async move {
        (counter(&metrics(http).await, "collector_export_requests_total", &[]) >= 3.0).then_some(())
    })
    .await;
    let exported = running.export_metrics.clone();
    running.stop().await.unwrap();
    let body = final_metrics(&exported);
    let seen = seen.lock().unwrap();
    let mut points = 0;
    let mut container_cpu = None;
    for (request, auth, tenant) in &seen.requests {
        assert_eq!(auth, "Bearer s3cret");
        assert_eq!(tenant, "tenant-1");
        for r in &request.resource_metrics {
            let attributes: BTreeMap<&str, String> = r
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .map(|kv| (kv.key.as_str(), format!("{:?}", kv.value)))
                .collect();
            assert!(attributes["k8s.node.name"].contains(NODE));
            for m in &r.scope_metrics[0].metrics {
                use collector::export::wire::otlp::metric::Data;
                points += match &m.data {
                    Some(Data::Sum(s)) => s.data_points.len(),
                    Some(Data::Gauge(g)) => g.data_points.len(),
                    Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                    _ => 0,
                };
                if m.name == "container.cpu.time"
                    && attributes
                        .get("container.id")
                        .is_some_and(|v| v.contains(CONTAINER))
                    && let Some(Data::Sum(s)) = &m.data
                {
                    container_cpu = s.data_points.first().cloned();
                    assert_eq!(m.unit, "s");
                }
            }
        }
    }
    let cpu = container_cpu.expect("the container's container.cpu.time");
    assert!(cpu.start_time_unix_nano > 0 && cpu.start_time_unix_nano < cpu.time_unix_nano);
    assert_eq!(
        cpu.value,
        Some(collector::export::wire::otlp::number_data_point::Value::AsDouble(0.9))
    );
    // The first answer refused one point: dropped and counted, the rest delivered.
    let rejected = counter(
        &body,
        "collector_export_dropped_samples_total",
        &["reason=\"rejected\""],
    );
    assert_eq!(rejected, 1.0);
    assert_eq!(
        counter(&body, "collector_export_samples_total", &[]),
        (points - 1) as f64
    );
}
