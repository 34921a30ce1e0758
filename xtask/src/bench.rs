//! `cargo xtask bench`: runs the measurement programs in release mode, one figure per line of
//! JSON, and writes a markdown report and the raw JSON to `--out`.
//!
//! Today: streaming (Watch fan-out to 0/1/10/100 subscribers of 1,000 cgroups at 1 s) and
//! aggregation (a simulator of N nodes x 110 pods at 10 s into one aggregator). Collection cost
//! and probe overhead have their own program (`pass_cost`) and join this report later.

use std::{fmt::Write as _, path::PathBuf, process::Command};

use anyhow::Context as _;
use serde_json::Value;

pub struct Plan {
    pub stream_seconds: u64,
    pub subscribers: Vec<u64>,
    pub aggregate_seconds: u64,
    pub nodes: Vec<u64>,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                stream_seconds: 5,
                subscribers: vec![0, 1, 10, 100],
                aggregate_seconds: 20,
                nodes: vec![1000],
            }
        } else {
            Self {
                stream_seconds: 20,
                subscribers: vec![0, 1, 10, 100],
                aggregate_seconds: 30,
                nodes: vec![100, 1000, 5000],
            }
        }
    }
}

fn run_bench(args: &[String]) -> anyhow::Result<Vec<Value>> {
    let output = Command::new("target/release/examples/api_bench")
        .args(args)
        .output()
        .context("running target/release/examples/api_bench")?;
    anyhow::ensure!(
        output.status.success(),
        "api_bench {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let row: Value =
            serde_json::from_str(line).with_context(|| format!("bad line {line:?}"))?;
        eprintln!("  {row}");
        rows.push(row);
    }
    Ok(rows)
}

fn machine() -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    (cores, kernel)
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

pub fn run(quick: bool, out: PathBuf) -> anyhow::Result<()> {
    let plan = Plan::new(quick);
    super::build_release_with_examples()?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    eprintln!("streaming: 1,000 cgroups, Watch at 1 s");
    let mut args = vec![
        "stream".into(),
        "1000".into(),
        plan.stream_seconds.to_string(),
    ];
    args.extend(plan.subscribers.iter().map(u64::to_string));
    let stream = run_bench(&args)?;
    eprintln!("aggregation: 110 pods per node, 10 s interval");
    let mut args = vec![
        "aggregate".into(),
        plan.aggregate_seconds.to_string(),
        "10000".into(),
    ];
    args.extend(plan.nodes.iter().map(u64::to_string));
    let aggregate = run_bench(&args)?;

    let (cores, kernel) = machine();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# collector bench{}\n",
        if quick { " (--quick)" } else { "" }
    );
    let _ = writeln!(md, "Machine: {cores} cores, kernel {kernel}.\n");
    let _ = writeln!(
        md,
        "## Streaming: Watch fan-out, 1,000 cgroups, every cgroup changing, 1 s\n"
    );
    let _ = writeln!(
        md,
        "The collector runs as its own process (cgroupfs-only over a fixture tree); CPU is its \
         utime+stime over {} s. Latency is from the sample's timestamp (start of the sampling \
         pass) to receipt, so it includes the pass itself (see the 0-subscriber CPU). The \
         subscribers run on the same machine and compete for its cores.\n",
        plan.stream_seconds
    );
    let _ = writeln!(
        md,
        "| subscribers | collector CPU % of a core | RSS MiB | messages | latency p50 ms | p99 ms | max ms |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for r in &stream {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {:.1} |",
            r["subscribers"],
            f(r, "collector_cpu_percent"),
            f(r, "collector_rss_bytes") / 1048576.0,
            r["messages"],
            f(r, "latency_p50_ms"),
            f(r, "latency_p99_ms"),
            f(r, "latency_max_ms"),
        );
    }
    if let Some(r) = stream.iter().find(|r| r["subscribers"] == 100) {
        let p99 = f(r, "latency_p99_ms");
        let _ = writeln!(
            md,
            "\nTarget: p99 <= 50 ms with 100 subscribers: {p99:.1} ms, {}.",
            verdict(p99 <= 50.0)
        );
    }
    let _ = writeln!(
        md,
        "\n## Aggregation: simulated nodes x 110 pods, 10 s interval\n"
    );
    let _ = writeln!(
        md,
        "| nodes | aggregator CPU % | mCPU per node | RSS MiB | MiB per node | warm-up s |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for r in &aggregate {
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.4} | {:.1} | {:.3} | {:.1} |",
            r["nodes"],
            f(r, "aggregator_cpu_percent"),
            f(r, "millicores_per_node"),
            f(r, "rss_bytes") / 1048576.0,
            f(r, "rss_mib_per_node"),
            f(r, "warmup_seconds"),
        );
    }
    if let Some(r) = aggregate.iter().rfind(|r| f(r, "nodes") >= 1000.0) {
        let (cpu, rss) = (f(r, "millicores_per_node"), f(r, "rss_mib_per_node"));
        let _ = writeln!(
            md,
            "\nTargets at {} nodes: <= 0.1 mCPU per node: {cpu:.4}, {}; <= 0.2 MiB per node: {rss:.3}, {}.",
            r["nodes"],
            verdict(cpu <= 0.1),
            verdict(rss <= 0.2)
        );
    }
    let json = serde_json::json!({
        "quick": quick, "cores": cores, "kernel": kernel,
        "stream": stream, "aggregate": aggregate,
    });
    std::fs::write(out.join("bench.md"), &md)?;
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&json)?)?;
    println!("{md}");
    eprintln!("report: {}/bench.md and bench.json", out.display());
    Ok(())
}
