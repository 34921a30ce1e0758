//! The HTTP endpoints against a fixture node whose numbers are known: kubelet's /stats/summary
//! JSON and /metrics/resource exposition carry the fixture's values under kubelet's names,
//! `promtool check metrics` accepts both expositions, and a real Prometheus server scrapes them.

mod common;

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use collector::app::{self, Running, ServeConfig};
use common::{cgroupfs_only, eventually, http_get, http_post_form, node_tree, try_http_get};
use serde_json::Value;

const POD_UID: &str = "11111111-2222-3333-4444-555555555555";
const CONTAINER: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";

async fn start(root: &Path) -> (Running, SocketAddr) {
    let running = app::start(ServeConfig {
        ignore_cgroup1: true,
        node_name: Some("fixture-node".into()),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..cgroupfs_only(root)
    })
    .await
    .unwrap();
    let http = running.http_addr.expect("HTTP endpoints on");
    eventually(Duration::from_secs(10), "first sample", || async move {
        (http_get(http, "/healthz").await.0 == 200).then_some(())
    })
    .await;
    (running, http)
}

/// The value and timestamp of the sample line that starts with `series`.
fn sample(body: &str, series: &str) -> (f64, Option<i64>) {
    let line = body
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{body}"));
    let mut words = line[series.len()..].split_whitespace();
    let value = words.next().unwrap().parse().unwrap();
    (value, words.next().map(|t| t.parse().unwrap()))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The fixture's container, given a swap limit (memory.swap.max) and some swap in use.
const SWAP_MAX: u64 = 64 << 20;
const SWAP_USED: u64 = 40_960;

fn with_swap(root: &Path) -> &Path {
    let container = root.join(format!("kubepods/burstable/pod{POD_UID}/{CONTAINER}"));
    std::fs::write(container.join("memory.swap.max"), format!("{SWAP_MAX}\n")).unwrap();
    std::fs::write(
        container.join("memory.swap.current"),
        format!("{SWAP_USED}\n"),
    )
    .unwrap();
    root
}

#[tokio::test]
async fn metrics_resource_has_kubelets_names_labels_and_the_fixtures_values() {
    let dir = tempfile::tempdir().unwrap();
    let (running, http) = start(with_swap(&node_tree(dir.path()))).await;
    let (status, body) = http_get(http, "/metrics/resource").await;
    assert_eq!(status, 200);

    let container = format!("{{container=\"{CONTAINER}\",namespace=\"\",pod=\"{POD_UID}\"}}");
    // usage_usec 900000 in the container's cpu.stat.
    let (cpu, ts) = sample(
        &body,
        &format!("container_cpu_usage_seconds_total{container}"),
    );
    assert_eq!(cpu, 0.9);
    let ts = ts.expect("CPU samples carry the reading's timestamp");
    assert!(
        (now_ms() - ts).abs() < 60_000,
        "timestamp {ts} is not in ms of now"
    );
    // memory.current 30408704 - inactive_file 4194304 (kubelet's working set).
    let (ws, _) = sample(
        &body,
        &format!("container_memory_working_set_bytes{container}"),
    );
    assert_eq!(ws, 26_214_400.0);
    // kubelet sends the start time without a timestamp (an old one would be out of bounds).
    let (start, start_ts) = sample(&body, &format!("container_start_time_seconds{container}"));
    assert!(start > 1e9 && start_ts.is_none(), "{start} {start_ts:?}");
    // kubelet's swap limit: available + usage, i.e. memory.swap.max.
    let (limit, limit_ts) = sample(&body, &format!("container_swap_limit_bytes{container}"));
    assert_eq!(limit, SWAP_MAX as f64);
    assert!(limit_ts.is_some(), "stamped with the reading's time");
    let (used, _) = sample(&body, &format!("container_swap_usage_bytes{container}"));
    assert_eq!(used, SWAP_USED as f64);
    let pod = format!("{{namespace=\"\",pod=\"{POD_UID}\"}}");
    assert_eq!(
        sample(&body, &format!("pod_cpu_usage_seconds_total{pod}")).0,
        1.0
    );
    assert_eq!(
        sample(&body, &format!("pod_memory_working_set_bytes{pod}")).0,
        26_214_400.0
    );
    assert!(sample(&body, "node_cpu_usage_seconds_total").0 > 0.0);
    assert!(sample(&body, "node_memory_working_set_bytes").0 > 0.0);
    assert_eq!(sample(&body, "resource_scrape_error"), (0.0, None));
    for family in [
        "# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds",
        "# TYPE container_cpu_usage_seconds_total counter",
        "# TYPE container_memory_working_set_bytes gauge",
        "# HELP container_swap_limit_bytes [ALPHA] Current amount of the container swap limit in bytes. Reported only on non-windows systems",
        "# TYPE pod_cpu_usage_seconds_total counter",
        "# TYPE node_cpu_usage_seconds_total counter",
        "# TYPE resource_scrape_error gauge",
    ] {
        assert!(body.contains(family), "{family} missing from\n{body}");
    }
    running.stop().await.unwrap();
}

fn find_pod<'a>(summary: &'a Value, uid: &str) -> &'a Value {
    summary["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["uid"] == uid)
        .unwrap_or_else(|| panic!("pod {uid} missing from {summary}"))
}

#[tokio::test]
async fn stats_summary_is_kubelets_json() {
    let dir = tempfile::tempdir().unwrap();
    let (running, http) = start(&node_tree(dir.path())).await;
    let (status, body) = http_get(http, "/stats/summary").await;
    assert_eq!(status, 200, "{body}");
    let summary: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["node"]["nodeName"], "fixture-node");
    let time = summary["node"]["cpu"]["time"].as_str().unwrap();
    assert!(
        time.len() == 20 && time.ends_with('Z'),
        "not RFC 3339 seconds: {time}"
    );
    let pod = find_pod(&summary, POD_UID);
    // No runtime to name it: the name stays empty (kubelet never puts the uid there).
    assert_eq!(pod["podRef"]["name"], "");
    assert_eq!(pod["cpu"]["usageCoreNanoSeconds"], 1_000_000_000u64);
    assert_eq!(pod["memory"]["workingSetBytes"], 26_214_400u64);
    let container = &pod["containers"][0];
    assert_eq!(container["name"], CONTAINER);
    assert_eq!(container["cpu"]["usageCoreNanoSeconds"], 900_000_000u64);
    assert_eq!(container["memory"]["workingSetBytes"], 26_214_400u64);
    assert_eq!(container["memory"]["usageBytes"], 30_408_704u64);
    assert!(pod.get("process_stats").is_some(), "{pod}");

    let (status, body) = http_get(http, "/stats/summary?only_cpu_and_memory=true").await;
    assert_eq!(status, 200);
    let slim: Value = serde_json::from_str(&body).unwrap();
    let pod = find_pod(&slim, POD_UID);
    let mut keys: Vec<&str> = pod
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["containers", "cpu", "memory", "podRef", "startTime"]);
    assert_eq!(
        pod["containers"][0]["cpu"]["usageCoreNanoSeconds"],
        900_000_000u64
    );

    // kubelet keeps the node's swap when trimming.
    let node: Vec<&String> = slim["node"].as_object().unwrap().keys().collect();
    assert!(slim["node"].get("swap").is_some(), "{node:?}");

    // kubelet trims only on exactly "true": anything else is the full summary, never a 400.
    for query in ["yes", "1", "TRUE", "true&only_cpu_and_memory=true"] {
        let (status, body) =
            http_get(http, &format!("/stats/summary?only_cpu_and_memory={query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        let full: Value = serde_json::from_str(&body).unwrap();
        assert!(
            find_pod(&full, POD_UID).get("process_stats").is_some(),
            "{query}"
        );
    }
    // POST too, with the flag in a form body.
    let (status, body) = http_post_form(http, "/stats/summary", "only_cpu_and_memory=true").await;
    assert_eq!(status, 200, "{body}");
    let posted: Value = serde_json::from_str(&body).unwrap();
    assert!(find_pod(&posted, POD_UID).get("process_stats").is_none());
    running.stop().await.unwrap();
}

#[tokio::test]
async fn own_metrics_count_passes_and_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let (running, http) = start(&node_tree(dir.path())).await;
    let passes = eventually(Duration::from_secs(10), "two passes", || async move {
        let (_, body) = http_get(http, "/metrics").await;
        let (passes, _) = sample(&body, "collector_sampler_passes_total");
        (passes >= 2.0).then_some(passes)
    })
    .await;
    let (_, body) = http_get(http, "/metrics").await;
    assert!(sample(&body, "collector_sampler_passes_total").0 >= passes);
    assert_eq!(sample(&body, "collector_watch_subscribers").0, 0.0);
    assert!(sample(&body, "collector_cgroups").0 >= 7.0, "{body}");
    // cgroupfs-only: every probe reported down, none silently missing.
    assert_eq!(
        sample(
            &body,
            "collector_probe_up{probe=\"sched_switch\",provides=\"ebpf_cpu,ebpf_faults,runq_latency\"}"
        )
        .0,
        0.0
    );
    running.stop().await.unwrap();
}

/// promtool from Debian's prometheus package (`cargo xtask test` installs it).
fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} not found: install Debian's prometheus package (cargo xtask test does)"
    );
    name.to_owned()
}

#[tokio::test]
async fn promtool_accepts_both_expositions() {
    let promtool = tool("promtool");
    let dir = tempfile::tempdir().unwrap();
    let (running, http) = start(with_swap(&node_tree(dir.path()))).await;
    for path in ["/metrics/resource", "/metrics"] {
        let (_, body) = http_get(http, path).await;
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics rejected {path}:\n{}{}\n{body}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    running.stop().await.unwrap();
}

/// A Prometheus server on loopback, killed on drop.
struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_both_endpoints() {
    let prometheus = tool("prometheus");
    let dir = tempfile::tempdir().unwrap();
    let (running, http) = start(with_swap(&node_tree(dir.path()))).await;
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n\
             - job_name: resource\n  metrics_path: /metrics/resource\n  static_configs: [{{ targets: ['{http}'] }}]\n\
             - job_name: collector\n  metrics_path: /metrics\n  static_configs: [{{ targets: ['{http}'] }}]\n"
        ),
    )
    .unwrap();
    let _server = Prometheus(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let query = |q: &'static str| async move {
        let (status, body) = try_http_get(web, &format!("/api/v1/query?query={q}"))
            .await
            .ok()?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let results = v["data"]["result"].as_array()?.clone();
        (!results.is_empty()).then_some(results)
    };
    let up = eventually(Duration::from_secs(60), "both targets up", || async move {
        let up = query("up").await?;
        (up.len() == 2 && up.iter().all(|r| r["value"][1] == "1")).then_some(up)
    })
    .await;
    assert_eq!(up.len(), 2);
    let cpu = eventually(
        Duration::from_secs(30),
        "container CPU in Prometheus",
        || async move { query("container_cpu_usage_seconds_total").await },
    )
    .await;
    let ours = cpu
        .iter()
        .find(|r| r["metric"]["container"] == CONTAINER)
        .expect("the fixture container");
    assert_eq!(ours["metric"]["pod"], POD_UID);
    assert_eq!(ours["value"][1], "0.9");
    // Stored, not rejected: the start time (no timestamp) and the swap limit.
    for (family, check) in [
        ("container_swap_limit_bytes", Some(SWAP_MAX.to_string())),
        ("container_start_time_seconds", None),
    ] {
        let found = eventually(Duration::from_secs(30), family, || async move {
            query(family).await
        })
        .await;
        let ours = found
            .iter()
            .find(|r| r["metric"]["container"] == CONTAINER)
            .unwrap_or_else(|| panic!("{family}: {found:?}"));
        if let Some(value) = check {
            assert_eq!(ours["value"][1], value.as_str(), "{family}");
        }
    }
    let passes = eventually(
        Duration::from_secs(30),
        "own metrics in Prometheus",
        || async move { query("collector_sampler_passes_total").await },
    )
    .await;
    assert!(
        passes[0]["value"][1]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 1.0
    );
    running.stop().await.unwrap();
}
