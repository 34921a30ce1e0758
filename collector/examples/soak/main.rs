//! The soak behind `cargo xtask soak` (root): the release collector under cgroup churn for N
//! minutes. 1,000 cgroups a minute are created under `<cgroup2>/collector-soak-<pid>/churn`,
//! each runs a short process and is removed; two long-lived busy cgroups sit under `busy`. A
//! Watch subscriber, an aggregator (`collector aggregate`) and, when given, Prometheus as a
//! remote-write receiver consume it. Halfway through the collector is killed with SIGKILL and
//! started again. Logs a JSON object per minute on stderr and prints the report, one JSON
//! object, on stdout. A minute's RSS, descriptors and map entries are the medians of its six
//! readings.
//!
//!   soak MINUTES COLLECTOR_BINARY [PROMETHEUS_BINARY]

mod churn;
mod procs;
mod watcher;

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use collector::proto::{
    GetSummaryRequest, ListNodeMetricsRequest, aggregator_client::AggregatorClient,
};
use serde_json::json;

use crate::{
    churn::{KernelSeries, SoakTree},
    procs::{Daemon, ProcessFigures, free_port, metric},
};

/// Churn pace: 1,000 cgroups a minute.
const CGROUPS_PER_MINUTE: u64 = 1000;
/// Figures are taken this often for the plot; the verdict uses each minute's last.
const TICK: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 3,
        "usage: soak MINUTES COLLECTOR_BINARY [PROMETHEUS_BINARY]"
    );
    let minutes: u64 = args[1].parse()?;
    let binary = std::path::PathBuf::from(&args[2]);
    let prometheus = args.get(3).map(std::path::PathBuf::from);
    anyhow::ensure!(
        minutes >= 2,
        "at least 2 minutes (the verdict compares minute 2 and the last)"
    );

    let tree = Arc::new(SoakTree::create()?);
    let series = KernelSeries::start(tree.clone());
    let busy = tree.start_busy(2)?;

    let receiver = match &prometheus {
        Some(p) => Some(procs::start_prometheus(p)?),
        None => None,
    };
    let (grpc, http) = (free_port(), free_port());
    let mut collector_args = vec![
        "serve".to_owned(),
        format!("--listen=127.0.0.1:{grpc}"),
        format!("--http-listen=127.0.0.1:{http}"),
        "--cri-socket=off".into(),
        "--log-format=json".into(),
    ];
    if let Some(r) = &receiver {
        collector_args.push(format!("--remote-write-url=http://{}/api/v1/write", r.addr));
    }
    let log_dir = tempfile::tempdir()?;
    let mut collector = Daemon::start(
        &binary,
        &collector_args,
        &log_dir.path().join("collector.log"),
    )?;
    let mut client = procs::connect(grpc).await?;
    let aggregator_port = free_port();
    let _aggregator = Daemon::start(
        &binary,
        &[
            "aggregate".into(),
            format!("--collectors=127.0.0.1:{grpc}"),
            "--interval-ms=1000".into(),
            "--backoff-max-ms=2000".into(),
            format!("--listen=127.0.0.1:{aggregator_port}"),
            "--http-listen=off".into(),
        ],
        &log_dir.path().join("aggregator.log"),
    )?;
    let watch = watcher::spawn(grpc, tree.clone());
    let churn = tree.clone().start_churn(CGROUPS_PER_MINUTE);

    let start = Instant::now();
    let restart_at = Duration::from_secs(minutes * 60 / 2 + 15);
    let mut restart = None;
    let mut figures = ProcessFigures::new(collector.pid());
    let mut segment = churn::Segment::begin(&mut client, &tree, &series).await?;
    let mut tick = tokio::time::interval(TICK);
    tick.tick().await;
    let mut minute_rows = Vec::new();
    let mut ticks = Vec::new();
    let mut minute_readings: Vec<[f64; 3]> = Vec::new();
    let mut last_minute = (0u64, 0u64, 0u64);
    for n in 1.. {
        tick.tick().await;
        let elapsed = start.elapsed();
        if restart.is_none() && elapsed >= restart_at {
            restart = Some(
                procs::restart(
                    &mut collector,
                    &binary,
                    &collector_args,
                    grpc,
                    &watch,
                    aggregator_port,
                    &tree,
                )
                .await?,
            );
            client = procs::connect(grpc).await?;
            figures = ProcessFigures::new(collector.pid());
            segment = churn::Segment::begin(&mut client, &tree, &series).await?;
            continue;
        }
        let metrics = procs::http_get(http, "/metrics").await.unwrap_or_default();
        let process = figures.take(metric(&metrics, "collector_sampler_passes_total"));
        let map_entries = metric(&metrics, "collector_ebpf_map_entries").unwrap_or(0.0) as u64;
        let reading = [
            process.rss_kib as f64 / 1024.0,
            process.fds as f64,
            map_entries as f64,
        ];
        ticks.push(json!({
            "seconds": elapsed.as_secs_f64(),
            "rss_mib": reading[0],
            "fds": reading[1],
            "map_entries": reading[2],
        }));
        minute_readings.push(reading);
        if n % (60 / TICK.as_secs()) != 0 {
            continue;
        }
        // A minute's level: the median of its readings (map entries of cgroups removed since
        // the last pass come and go between readings).
        let level = |i: usize| median(minute_readings.iter().map(|r| r[i]).collect());
        let (rss_mib, fds, map_entries) = (level(0), level(1), level(2));
        minute_readings.clear();
        let (cpu_ms_per_pass, passes) = figures.end_minute();
        let minute = n / (60 / TICK.as_secs());
        let churn_check = segment.check(&mut client, &series).await?;
        let nodes = AggregatorClient::connect(format!("http://127.0.0.1:{aggregator_port}"))
            .await?
            .list_node_metrics(ListNodeMetricsRequest::default())
            .await?
            .into_inner()
            .nodes;
        let summary = client
            .get_summary(GetSummaryRequest::default())
            .await?
            .into_inner();
        let stats = summary.collector.unwrap_or_default();
        let (created, removed) = (
            churn.created.load(Ordering::Relaxed),
            churn.removed.load(Ordering::Relaxed),
        );
        let w = watch.figures();
        minute_rows.push(json!({
            "minute": minute,
            // Which collector process: 0 before the restart, 1 after.
            "process": u8::from(restart.is_some()),
            "rss_mib": rss_mib,
            "fds": fds,
            "map_entries": map_entries,
            "cpu_ms_per_pass": cpu_ms_per_pass,
            "passes": passes,
            "cgroups_created": created - last_minute.0,
            "cgroups_removed": removed - last_minute.1,
            "spawn_failures": churn.failures.load(Ordering::Relaxed),
            "removals_announced_alive": w.alive_removals,
            "removals_announced": w.removals - last_minute.2,
            "terminated_records": w.terminated,
            "churn_kernel_ns": churn_check.kernel_ns,
            "churn_ebpf_ns": churn_check.ebpf_ns,
            "churn_lost_fraction": churn_check.lost_fraction(),
            "ebpf_dropped_runs": stats.ebpf_dropped_runs,
            "ebpf_unattributed_cgroups": stats.ebpf_unattributed_cgroups,
            "aggregator_nodes_fresh": nodes.iter().filter(|n| !n.stale && n.cpu_nano_cores.is_some()).count(),
            "aggregator_node_cores": nodes.first().and_then(|n| n.cpu_nano_cores).map(|c| c as f64 / 1e9),
            "exported_samples": metric(&metrics, "collector_export_samples_total"),
            "export_failures": metric(&metrics, "collector_export_failures_total"),
            "watch_reconnects": w.reconnects,
        }));
        eprintln!("soak: minute {minute}: {}", minute_rows.last().unwrap());
        last_minute = (created, removed, w.removals);
        if minute >= minutes {
            break;
        }
    }
    churn.stop();
    drop(busy);
    let w = watch.figures();
    let exported = match &receiver {
        Some(r) => Some(procs::prometheus_points(r, minutes).await?),
        None => None,
    };
    let report = json!({
        "minutes": minute_rows,
        "ticks": ticks,
        "restart": restart,
        "watch": {
            "alive_removals": w.alive_removals,
            "removals": w.removals,
            "reconnects": w.reconnects,
            "epochs": w.epochs,
            "rates": w.rates,
            "negative_rates": w.negative_rates,
            "spiking_rates": w.spiking_rates,
            "naive_decreases": w.naive_decreases,
        },
        "receiver_node_cpu_points": exported,
        "cpus": procs::online_cpus(),
    });
    println!("{report}");
    drop(series);
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
