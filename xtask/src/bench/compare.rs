//! The baseline's headline figures beside this tree's (`cargo xtask bench --baseline REV`).

use std::fmt::Write as _;

use serde_json::Value;

use super::{
    Results,
    report::{MIB, median, spread},
};

/// The headline figures of the baseline beside this tree's.
pub fn comparison(rev: &str, old: &Results, new: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## Baseline {rev} against this tree (same run, sections back to back)\n"
    );
    let _ = writeln!(md, "| figure | {rev} | this tree |");
    let _ = writeln!(md, "|---|---|---|");
    let probes = |r: &Results| {
        r.probes
            .as_ref()
            .ok()
            .and_then(|rows| rows.first().cloned())
    };
    let (op, np) = (probes(old), probes(new));
    let cell = |row: &Option<Value>, f: &dyn Fn(&Value) -> String| {
        row.as_ref().map_or_else(|| "–".to_owned(), f)
    };
    let pct =
        |key: &'static str, field: &'static str| move |r: &Value| spread(&r[key][field], 1.0, 1);
    for (name, f) in [
        (
            "ping-pong slowdown %, bpf_stats off",
            &pct("ping_pong", "slowdown_no_stats_percent") as &dyn Fn(&Value) -> String,
        ),
        (
            "ping-pong slowdown %, bpf_stats off, by the two tasks' CPU time",
            &pct("ping_pong_cpu", "slowdown_no_stats_percent"),
        ),
        (
            "ping-pong slowdown %, only an empty program on sched_switch (the floor)",
            &pct("ping_pong", "slowdown_empty_program_percent"),
        ),
        (
            "ping-pong slowdown %, bpf_stats on",
            &pct("ping_pong", "slowdown_percent"),
        ),
        (
            "page-fault slowdown %, bpf_stats off",
            &pct("page_fault", "slowdown_no_stats_percent"),
        ),
        (
            "sum of ns per run of the programs on a switch + wake-up",
            &|r: &Value| {
                let total: f64 = r["program_ns"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(name, _)| {
                        !name.starts_with("page_faults")
                            && !name.starts_with("cgroup")
                            && !name.starts_with("oom")
                            && name.as_str() != "sched_fork"
                    })
                    .map(|(_, ns)| median(ns, 1.0))
                    .sum();
                format!("{total:.0}")
            },
        ),
        (
            "map kernel memory at 128 possible CPUs, MiB",
            &|r: &Value| match r.get("map_memory") {
                Some(m) => format!("{:.1}", median(&m["projected_128_bytes"], MIB)),
                None => "≈ 755 (three 16,384-entry per-CPU hashes; not reported then)".into(),
            },
        ),
    ] {
        let _ = writeln!(md, "| {name} | {} | {} |", cell(&op, f), cell(&np, f));
    }
    let daemon = |r: &Results, n: u64| {
        r.daemon.as_ref().ok().and_then(|rows| {
            rows.iter()
                .find(|row| row["created"].as_u64() == Some(n))
                .map(|row| spread(&row["cpu_percent"], 1.0, 2))
        })
    };
    for n in [1000, 5000] {
        if let (Some(o), Some(c)) = (daemon(old, n), daemon(new, n)) {
            let _ = writeln!(md, "| daemon CPU % of a core at {n} cgroups | {o} | {c} |");
        }
    }
    for (name, section, pick) in rows_compared() {
        let cell = |r: &Results| {
            section(r)
                .as_ref()
                .ok()
                .and_then(|rows| pick(rows))
                .unwrap_or_else(|| "–".to_owned())
        };
        let _ = writeln!(md, "| {name} | {} | {} |", cell(old), cell(new));
    }
    md
}

type Pick = fn(&[Value]) -> Option<String>;
type SectionOf = fn(&Results) -> &super::Section;

/// The rest of the headline figures: (name, section, figure from its rows).
fn rows_compared() -> Vec<(&'static str, SectionOf, Pick)> {
    fn find<'a>(rows: &'a [Value], key: &str, value: u64) -> Option<&'a Value> {
        rows.iter().find(|r| r[key].as_u64() == Some(value))
    }
    fn cost(rows: &[Value], mode: &str, field: &str) -> Option<String> {
        let r = rows
            .iter()
            .find(|r| r["created"] == 1000 && r["mode"] == mode)?;
        Some(spread(&r[field], 1e-3, 1))
    }
    vec![
        (
            "(b) cgroupfs every pass, ms per pass at 1,000",
            |r| &r.cost,
            |rows| cost(rows, "cgroupfs", "pass_us"),
        ),
        (
            "(c) eBPF: full pass ms at 1,000 (every cgroup read)",
            |r| &r.cost,
            |rows| cost(rows, "ebpf", "full_pass_us"),
        ),
        (
            "daemon RSS MiB at 1,000 cgroups",
            |r| &r.daemon,
            |rows| Some(spread(&find(rows, "created", 1000)?["rss_bytes"], MIB, 1)),
        ),
        (
            "daemon peak RSS MiB at 1,000 (start-up included)",
            |r| &r.daemon,
            |rows| {
                let v = find(rows, "created", 1000)?["peak_rss_bytes"].as_f64()?;
                Some(format!("{:.1}", v * MIB))
            },
        ),
        (
            "Watch, 100 subscribers: collector CPU %",
            |r| &r.stream,
            |rows| {
                Some(spread(
                    &find(rows, "subscribers", 100)?["collector_cpu_percent"],
                    1.0,
                    1,
                ))
            },
        ),
        (
            "Watch, 100 subscribers: messages received",
            |r| &r.stream,
            |rows| Some(find(rows, "subscribers", 100)?["messages"].to_string()),
        ),
        // The baseline measured from the sample's time only: compare like with like.
        (
            "Watch, 100 subscribers: sample-to-receive p99 ms",
            |r| &r.stream,
            |rows| {
                let r = find(rows, "subscribers", 100)?;
                let v = r.get("sample_age_p99_ms").unwrap_or(&r["latency_p99_ms"]);
                Some(spread(v, 1.0, 1))
            },
        ),
        (
            "Watch, 100 subscribers: publish-to-receive p99 ms",
            |r| &r.stream,
            |rows| {
                let r = find(rows, "subscribers", 100)?;
                r.get("sample_age_p99_ms")?;
                Some(spread(&r["latency_p99_ms"], 1.0, 1))
            },
        ),
        (
            "aggregator MiB per node at 1,000 nodes",
            |r| &r.aggregate,
            |rows| {
                Some(spread(
                    &find(rows, "nodes", 1000)?["rss_mib_per_node"],
                    1.0,
                    3,
                ))
            },
        ),
        (
            "aggregator MiB per node at 5,000 nodes",
            |r| &r.aggregate,
            |rows| {
                Some(spread(
                    &find(rows, "nodes", 5000)?["rss_mib_per_node"],
                    1.0,
                    3,
                ))
            },
        ),
    ]
}
