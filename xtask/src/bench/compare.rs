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
    md
}
