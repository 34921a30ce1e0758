//! `cargo xtask soak [--minutes N]` (root): the release collector, statically linked as the
//! image ships it, under 1,000 cgroups a minute of churn plus long-lived busy cgroups, with a
//! Watch subscriber, an aggregator and Prometheus as a remote-write receiver, killed with
//! SIGKILL halfway and started again (`collector/examples/soak/`). Writes `soak.md`,
//! `soak.json` and `soak.svg` (RSS, descriptors and map entries over time) and fails unless:
//! RSS, descriptors and map entries are flat (last minute within 10 % of the second, and the
//! same within each process when it ran three minutes or more; a minute's figure is the median
//! of its readings), no removal was announced for a cgroup still there, the churn parent's
//! eBPF CPU kept the time of every removed child (within 2 % of its cpu.stat every minute),
//! and after the restart the subscriber and the aggregator resumed, the cgroupfs counters
//! continued and the eBPF ones restarted under a new epoch with no negative or spiking rate.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::Context as _;
use plotters::prelude::*;
use serde_json::Value;

use crate::{cmd, debian, image::static_cargo, vm::artifacts::TARGET};

/// "Flat": the last minute within this fraction of the second.
const FLAT: f64 = 0.10;
/// The churn parent's eBPF CPU may miss at most this fraction of its cpu.stat.
const MAX_LOST: f64 = 0.02;

pub fn run(minutes: u64, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(cmd::is_root(), "the soak needs root (cgroups and probes)");
    anyhow::ensure!(minutes >= 2, "--minutes must be at least 2");
    let collector = crate::image::build_static_binary()?;
    let soak = build_soak_program()?;
    let engines = debian::ensure_engines()?;
    let prometheus = engines.join("prometheus/usr/bin/prometheus");
    std::fs::create_dir_all(out)?;
    eprintln!(
        "==> soak: {minutes} min of churn against {}",
        collector.display()
    );
    let start = Instant::now();
    let mut child = Command::new(&soak)
        .arg(minutes.to_string())
        .arg(std::fs::canonicalize(&collector)?)
        .arg(&prometheus)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the soak program")?;
    let mut last = String::new();
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        last = line?;
    }
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "the soak program failed ({status})");
    let report: Value = serde_json::from_str(&last).context("the soak's report")?;
    std::fs::write(
        out.join("soak.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let verdicts = verdicts(&report);
    let md = markdown(&report, &verdicts, start.elapsed().as_secs_f64());
    std::fs::write(out.join("soak.md"), &md)?;
    if let Err(e) = plot(&report, &out.join("soak.svg")) {
        eprintln!("warning: no plot: {e}");
    }
    eprintln!("{md}");
    eprintln!("report in {}", out.display());
    let failed: Vec<&str> = verdicts
        .iter()
        .filter(|v| !v.1)
        .map(|v| v.0.as_str())
        .collect();
    anyhow::ensure!(failed.is_empty(), "soak failed: {}", failed.join("; "));
    Ok(())
}

/// The soak program, built like the image's binary (same target and flags: one build cache).
fn build_soak_program() -> anyhow::Result<PathBuf> {
    cmd::timed(
        "build the soak program (release, static)",
        static_cargo("build").args(["--release", "--package", "collector", "--example", "soak"]),
    )?;
    Ok(PathBuf::from(format!(
        "target/{TARGET}/release/examples/soak"
    )))
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// (what, passed, detail) for every criterion.
fn verdicts(r: &Value) -> Vec<(String, bool, String)> {
    let rows = r["minutes"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    let (second, last) = (rows.get(1), rows.last());
    for key in ["rss_mib", "fds", "map_entries"] {
        let (a, b) = (
            second.map_or(f64::NAN, |m| num(&m[key])),
            last.map_or(f64::NAN, |m| num(&m[key])),
        );
        let ok = a.is_finite() && b.is_finite() && (b - a).abs() <= FLAT * a.max(1.0);
        out.push((
            format!("{key} flat"),
            ok,
            format!("minute 2: {a:.1}, last: {b:.1}"),
        ));
    }
    // The restart resets RSS: each process must also be flat on its own, from its second
    // minute to its last (when it ran long enough for that to be two different minutes).
    for process in [0, 1] {
        let own: Vec<&Value> = rows
            .iter()
            .filter(|m| m["process"].as_u64() == Some(process))
            .collect();
        if own.len() < 3 {
            continue;
        }
        let (second, last) = (own[1], own[own.len() - 1]);
        for key in ["rss_mib", "fds", "map_entries"] {
            let (a, b) = (num(&second[key]), num(&last[key]));
            out.push((
                format!("{key} flat in process {}", process + 1),
                (b - a).abs() <= FLAT * a.max(1.0),
                format!(
                    "minute {}: {a:.1}, minute {}: {b:.1}",
                    second["minute"], last["minute"]
                ),
            ));
        }
    }
    let alive: f64 = rows
        .iter()
        .map(|m| num(&m["removals_announced_alive"]))
        .fold(0.0, f64::max);
    out.push((
        "no removal announced for a live cgroup".into(),
        alive == 0.0 && num(&r["watch"]["alive_removals"]) == 0.0,
        format!("{alive}"),
    ));
    let worst = rows
        .iter()
        .map(|m| num(&m["churn_lost_fraction"]))
        .fold(0.0f64, |w, x| if x.abs() > w.abs() { x } else { w });
    out.push((
        "removed cgroups' CPU reached their parent".into(),
        worst.abs() <= MAX_LOST,
        format!(
            "eBPF at worst {:.2} % {} the parent's cpu.stat in a minute",
            worst.abs() * 100.0,
            if worst >= 0.0 { "below" } else { "above" }
        ),
    ));
    let created: f64 = rows.iter().map(|m| num(&m["cgroups_created"])).sum();
    let minutes = rows.len().max(1) as f64;
    out.push((
        "churn pace".into(),
        created / minutes >= 900.0,
        format!("{:.0} cgroups created a minute", created / minutes),
    ));
    let x = &r["restart"];
    let w = &r["watch"];
    out.push((
        "restart: new epoch, eBPF counters restarted, cgroupfs continued".into(),
        x["epoch_after"] != x["epoch_before"]
            && num(&x["busy_ebpf_after_ns"]) < num(&x["busy_ebpf_before_ns"])
            && num(&x["busy_cgroupfs_after_ns"]) >= num(&x["busy_cgroupfs_before_ns"]),
        format!(
            "busy cgroup eBPF {:.2} s → {:.2} s, cgroupfs {:.2} s → {:.2} s",
            num(&x["busy_ebpf_before_ns"]) / 1e9,
            num(&x["busy_ebpf_after_ns"]) / 1e9,
            num(&x["busy_cgroupfs_before_ns"]) / 1e9,
            num(&x["busy_cgroupfs_after_ns"]) / 1e9
        ),
    ));
    out.push((
        "restart: subscriber and aggregator resumed".into(),
        num(&w["reconnects"]) >= 1.0 && num(&x["aggregator_fresh_after_s"]).is_finite(),
        format!(
            "collector answering after {:.1} s, Watch after {:.1} s, aggregator fresh after {:.1} s",
            num(&x["answering_after_s"]),
            num(&x["watch_resumed_after_s"]),
            num(&x["aggregator_fresh_after_s"])
        ),
    ));
    out.push((
        "no negative or spiking rate across the restart".into(),
        num(&w["negative_rates"]) == 0.0
            && num(&w["spiking_rates"]) == 0.0
            && num(&w["rates"]) > 0.0,
        format!(
            "{} rates, {} negative, {} spiking; a client ignoring the epoch saw {} decreases",
            w["rates"], w["negative_rates"], w["spiking_rates"], w["naive_decreases"]
        ),
    ));
    let cpus = num(&r["cpus"]);
    let node_cores: Vec<f64> = rows
        .iter()
        .filter_map(|m| m["aggregator_node_cores"].as_f64())
        .collect();
    out.push((
        "aggregator's node rate in range every minute".into(),
        node_cores.len() == rows.len()
            && node_cores.iter().all(|c| (0.0..=cpus * 1.05).contains(c)),
        format!("{node_cores:.2?} cores of {cpus}"),
    ));
    let points = num(&r["receiver_node_cpu_points"]);
    out.push((
        "remote-write receiver got the node's CPU".into(),
        points > 0.0,
        format!("{points} points in Prometheus"),
    ));
    out
}

fn markdown(r: &Value, verdicts: &[(String, bool, String)], seconds: f64) -> String {
    let mut md = format!(
        "# Soak\n\n{} minutes, {} CPUs, {seconds:.0} s in all; SIGKILL and restart halfway. RSS, \
         descriptors and map entries: each minute's median of six readings.\n\n\
         | minute | RSS MiB | fds | map entries | ms CPU/pass | created | removed | live removals | churn eBPF vs cpu.stat | aggregator cores |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        r["minutes"].as_array().map_or(0, Vec::len),
        r["cpus"]
    );
    for m in r["minutes"].as_array().into_iter().flatten() {
        md += &format!(
            "| {} | {:.1} | {:.0} | {:.0} | {} | {} | {} | {} | {:+.2} % | {} |\n",
            m["minute"],
            num(&m["rss_mib"]),
            num(&m["fds"]),
            num(&m["map_entries"]),
            m["cpu_ms_per_pass"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.2}")),
            m["cgroups_created"],
            m["cgroups_removed"],
            m["removals_announced_alive"],
            -num(&m["churn_lost_fraction"]) * 100.0,
            m["aggregator_node_cores"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.2}")),
        );
    }
    md += "\n";
    for (what, ok, detail) in verdicts {
        md += &format!("- {} {what}: {detail}\n", if *ok { "PASS" } else { "FAIL" });
    }
    md
}

/// RSS, descriptors and map entries against time, one line each (the restart shows as a dip).
fn plot(r: &Value, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let ticks = r["ticks"].as_array().cloned().unwrap_or_default();
    let series = |key: &str| -> Vec<(f64, f64)> {
        ticks
            .iter()
            .filter_map(|t| Some((t["seconds"].as_f64()? / 60.0, t[key].as_f64()?)))
            .collect()
    };
    let lines = [
        ("rss_mib", "collector RSS (MiB)", RED),
        ("fds", "open descriptors", BLUE),
        ("map_entries", "eBPF map entries", GREEN),
    ];
    let x_max = ticks
        .last()
        .and_then(|t| t["seconds"].as_f64())
        .unwrap_or(60.0)
        / 60.0;
    let y_max = lines
        .iter()
        .flat_map(|(k, _, _)| series(k))
        .map(|p| p.1)
        .fold(1.0f64, f64::max)
        * 1.2;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Soak: 1,000 cgroups a minute, restart halfway",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max.max(1.0), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("value")
        .draw()?;
    for (key, label, colour) in lines {
        chart
            .draw_series(LineSeries::new(series(key), colour.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
