//! `cargo xtask bench`: runs the measurement programs (collector/examples/*_bench.rs) in release
//! mode, each printing one JSON object per line, and writes `bench.md`, `bench.json` and
//! `cost.svg` to `--out`.
//!
//! Sections: collection cost against real cgroups (baseline / cgroupfs / eBPF, and the real
//! daemon), probe overhead, Watch fan-out, aggregation, push export against a scrape. A section
//! that fails is reported as such and the others still run; the command then exits non-zero.

mod baseline;
mod compare;
mod plot;
mod report;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;
use serde_json::Value;

/// What one run measures; `--quick` is about a minute after the build, the full run about ten.
pub struct Plan {
    pub quick: bool,
    pub cost_counts: Vec<u64>,
    pub cost_repeats: u64,
    pub daemon_counts: Vec<u64>,
    pub daemon_seconds: u64,
    /// Many short windows rather than a few long ones: each repeat compares the states side by
    /// side within about a second, so a VM whose speed drifts ±15 % from window to window hurts
    /// less (two runs of 100 × 5,000 round trips: +6.1 and +5.4 % at the defaults, where medians
    /// of 20 × 50,000 had ranged from +8.0 to +10.6 % the same day).
    pub probe_repeats: u64,
    pub roundtrips: u64,
    pub pages: u64,
    pub stream_seconds: u64,
    pub subscribers: Vec<u64>,
    pub aggregate_seconds: u64,
    pub nodes: Vec<u64>,
    /// Rotations of the push-vs-scrape modes (one 10 s window per mode each).
    pub export_repeats: u64,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                cost_counts: vec![100, 1000],
                cost_repeats: 3,
                daemon_counts: vec![1000],
                daemon_seconds: 10,
                probe_repeats: 20,
                roundtrips: 5_000,
                pages: 2_048,
                stream_seconds: 3,
                subscribers: vec![0, 1, 10, 100],
                aggregate_seconds: 10,
                nodes: vec![1000],
                export_repeats: 2,
            }
        } else {
            Self {
                quick,
                cost_counts: vec![100, 1000, 5000],
                cost_repeats: 5,
                daemon_counts: vec![1000, 5000],
                daemon_seconds: 30,
                probe_repeats: 100,
                roundtrips: 5_000,
                pages: 2_048,
                stream_seconds: 21,
                subscribers: vec![0, 1, 10, 100],
                aggregate_seconds: 30,
                nodes: vec![100, 1000, 5000],
                export_repeats: 3,
            }
        }
    }
}

/// One section's rows, or why it has none.
pub type Section = Result<Vec<Value>, String>;

/// Runs `EXAMPLES/PROGRAM WORDS... NUMBERS...`, one JSON value per stdout line.
fn run_program(examples: &Path, program: &str, words: &[&str], numbers: &[u64]) -> Section {
    let args: Vec<String> = words
        .iter()
        .map(|w| w.to_string())
        .chain(numbers.iter().map(u64::to_string))
        .collect();
    let path = examples.join(program);
    eprintln!("{} {}", path.display(), args.join(" "));
    let path = path.display().to_string();
    let output = Command::new(&path)
        .args(&args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("running {path}: {e}"))?;
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let row: Value =
            serde_json::from_str(line).map_err(|e| format!("{program}: bad line {line:?}: {e}"))?;
        eprintln!("  {row}");
        rows.push(row);
    }
    if !output.status.success() {
        return Err(format!(
            "{program} {} failed ({})",
            args.join(" "),
            output.status
        ));
    }
    Ok(rows)
}

/// Collection cost and probe overhead need root (cgroups to create, programs to load).
fn needs_root(section: impl FnOnce() -> Section) -> Section {
    if !super::cmd::is_root() {
        return Err("needs root (cgroups to create, BPF programs to load)".into());
    }
    section()
}

pub struct Results {
    pub cost: Section,
    pub daemon: Section,
    pub probes: Section,
    pub stream: Section,
    pub aggregate: Section,
    pub export: Section,
}

/// One section: runs against the directory that holds the bench programs.
type Measure<'a> = Box<dyn Fn(&Path) -> Section + 'a>;

/// The sections, in report order.
fn sections(plan: &Plan) -> [Measure<'_>; 6] {
    [
        Box::new(move |ex| {
            let args = [&[plan.cost_repeats][..], &plan.cost_counts].concat();
            needs_root(|| run_program(ex, "collect_bench", &["cost"], &args))
        }),
        Box::new(move |ex| {
            needs_root(|| {
                let mut rows = Vec::new();
                let windows = (plan.daemon_seconds / 10).max(1);
                for &n in &plan.daemon_counts {
                    let numbers = [n, plan.daemon_seconds, windows];
                    rows.extend(run_program(ex, "collect_bench", &["daemon"], &numbers)?);
                }
                Ok(rows)
            })
        }),
        Box::new(move |ex| {
            let numbers = [plan.probe_repeats, plan.roundtrips, plan.pages];
            needs_root(|| run_program(ex, "probe_bench", &[], &numbers))
        }),
        Box::new(move |ex| {
            let numbers = [&[1000, plan.stream_seconds][..], &plan.subscribers].concat();
            run_program(ex, "api_bench", &["stream"], &numbers)
        }),
        Box::new(move |ex| {
            let numbers = [&[plan.aggregate_seconds, 10_000][..], &plan.nodes].concat();
            run_program(ex, "api_bench", &["aggregate"], &numbers)
        }),
        Box::new(move |ex| run_program(ex, "export_bench", &[], &[1000, plan.export_repeats])),
    ]
}

fn results([cost, daemon, probes, stream, aggregate, export]: [Section; 6]) -> Results {
    Results {
        cost,
        daemon,
        probes,
        stream,
        aggregate,
        export,
    }
}

/// Measures this tree, and with `baseline` that commit's programs too: each section runs the
/// baseline's program, then this tree's, back to back, so both see the same machine.
pub fn run(quick: bool, out: PathBuf, baseline: Option<String>) -> anyhow::Result<()> {
    let plan = Plan::new(quick);
    // Re-renders the report of an earlier run (after a change to the report itself).
    if let Some(from) = std::env::var_os(REPORT_FROM) {
        let (results, old_results) = load(Path::new(&from))?;
        return write_report(&plan, &out, quick, &results, old_results.as_ref());
    }
    super::build_release_with_examples()?;
    let old = baseline.as_deref().map(baseline::build).transpose()?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let current = baseline::current();
    let mut new_sections = Vec::new();
    let mut old_sections = Vec::new();
    for section in sections(&plan) {
        if let Some((_, examples)) = &old {
            old_sections.push(section(examples));
        }
        new_sections.push(section(&current));
    }
    let results = results(new_sections.try_into().expect("six sections"));
    let old_results = old.map(|(rev, _)| {
        (
            rev,
            self::results(old_sections.try_into().expect("six sections")),
        )
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    write_report(&plan, &out, quick, &results, old_results.as_ref())
}

/// `COLLECTOR_BENCH_REPORT_FROM=path/bench.json`: no measurement, the report of that run.
const REPORT_FROM: &str = "COLLECTOR_BENCH_REPORT_FROM";

/// The results of an earlier run, from its bench.json.
fn load(path: &Path) -> anyhow::Result<(Results, Option<(String, Results)>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let json: Value = serde_json::from_str(&text)?;
    let section = |v: &Value| -> Section {
        match v.as_array() {
            Some(rows) => Ok(rows.clone()),
            None => Err(v["error"].as_str().unwrap_or("absent").to_owned()),
        }
    };
    let sections = |r: &Value| {
        results(
            ["cost", "daemon", "probes", "stream", "aggregate", "export"].map(|k| section(&r[k])),
        )
    };
    let old = json["baseline"].as_object().map(|b| {
        let rev = b["rev"].as_str().unwrap_or("baseline").to_owned();
        (rev, sections(&b["results"]))
    });
    Ok((sections(&json["this_tree"]), old))
}

fn write_report(
    plan: &Plan,
    out: &Path,
    quick: bool,
    results: &Results,
    old_results: Option<&(String, Results)>,
) -> anyhow::Result<()> {
    let (cores, kernel) = machine();
    let old_cost =
        old_results.and_then(|(rev, r)| Some((rev.as_str(), r.cost.as_ref().ok()?.as_slice())));
    let plot_note = match &results.cost {
        Ok(rows) => plot::cost_per_pass(rows, old_cost, &out.join("cost.svg"))
            .map_or_else(|e| format!("plot failed: {e}"), |()| "cost.svg".into()),
        Err(e) => format!("no plot: {e}"),
    };
    let mut md = report::markdown(plan, results, cores, &kernel, &plot_note);
    if let Some((rev, old)) = old_results {
        md.push_str(&compare::comparison(rev, old, results));
        md.push_str(&format!("\n# Baseline {rev}, measured in the same run\n"));
        md.push_str(&report::markdown(plan, old, cores, &kernel, "see above"));
    }
    let section = |s: &Section| match s {
        Ok(rows) => Value::Array(rows.clone()),
        Err(e) => serde_json::json!({ "error": e }),
    };
    let sections = |r: &Results| {
        serde_json::json!({
            "cost": section(&r.cost), "daemon": section(&r.daemon),
            "probes": section(&r.probes), "stream": section(&r.stream),
            "aggregate": section(&r.aggregate), "export": section(&r.export),
        })
    };
    let json = serde_json::json!({
        "quick": quick, "cores": cores, "kernel": kernel,
        "this_tree": sections(results),
        "baseline": old_results.map(|(rev, r)| serde_json::json!({ "rev": rev, "results": sections(r) })),
    });
    std::fs::write(out.join("bench.md"), &md)?;
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&json)?)?;
    println!("{md}");
    eprintln!("report: {}/bench.md, bench.json, cost.svg", out.display());
    let failed: Vec<&String> = [
        &results.cost,
        &results.daemon,
        &results.probes,
        &results.stream,
        &results.aggregate,
        &results.export,
    ]
    .into_iter()
    .filter_map(|s| s.as_ref().err())
    .collect();
    anyhow::ensure!(failed.is_empty(), "sections failed: {failed:?}");
    Ok(())
}

fn machine() -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    (cores, kernel)
}
