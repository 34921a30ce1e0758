//! The markdown report: every figure as median (min–max) over its repeats, each target with
//! whether it was met.

use std::fmt::Write as _;

use serde_json::Value;

use super::{Plan, Results, Section};

/// A spread object's median (or a plain number), scaled.
pub fn median(v: &Value, scale: f64) -> f64 {
    v.get("median").unwrap_or(v).as_f64().unwrap_or(f64::NAN) * scale
}

/// "median (min–max)" of a spread object, scaled, with `digits` decimals; "–" when absent.
pub fn spread(v: &Value, scale: f64, digits: usize) -> String {
    if !median(v, scale).is_finite() {
        return "–".into();
    }
    let at = |k: &str| v[k].as_f64().unwrap_or(f64::NAN) * scale;
    if v.get("median").is_none() {
        return format!("{:.digits$}", median(v, scale));
    }
    if v["n"].as_u64().unwrap_or(0) <= 1 {
        return format!("{:.digits$}", at("median"));
    }
    format!(
        "{:.digits$} ({:.digits$}–{:.digits$})",
        at("median"),
        at("min"),
        at("max")
    )
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

pub const MIB: f64 = 1.0 / 1_048_576.0;

/// Writes a section's rows with `body`, or the reason it has none.
fn section(md: &mut String, title: &str, rows: &Section, body: impl FnOnce(&mut String, &[Value])) {
    let _ = writeln!(md, "\n## {title}\n");
    match rows {
        Ok(rows) => body(md, rows),
        Err(e) => {
            let _ = writeln!(md, "Not measured: {e}");
        }
    }
}

fn find<'a>(rows: &'a [Value], created: u64, mode: &str) -> Option<&'a Value> {
    rows.iter()
        .find(|r| r["created"].as_u64() == Some(created) && r["mode"] == mode)
}

fn cost(md: &mut String, rows: &[Value], plot_note: &str) {
    let _ = writeln!(
        md,
        "N cgroups created under the cgroup2 mount and in every v1 hierarchy, shaped as \
         kubelet's pods: N/2 pods of one container, each container with a sleeping process (its \
         sandbox) and 20 of them also a live one (plus the host's own cgroups). Each measurement \
         runs in a fresh process; the three \
         modes alternate. (a) baseline: a cAdvisor-style pass reading and parsing every readable \
         file of every cgroup directory; (b) the collector's sampler reading cgroupfs every pass \
         (plus the Summary build); (c) the eBPF path at the daemon's defaults, 1 s passes with \
         cgroupfs every 10 s: probe-only pass + full pass / 10. CPU time per pass; median \
         (min–max). Plot: {plot_note}.\n"
    );
    let _ = writeln!(
        md,
        "| N | cgroups | (a) ms/pass | (b) ms/pass | (c) ms/pass | (a) µs/cgroup | (b) µs/cgroup | (c) µs/cgroup | (a)/(c) | (b)/(c) | peak RSS MiB a / b / c |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    let mut counts: Vec<u64> = rows.iter().filter_map(|r| r["created"].as_u64()).collect();
    counts.dedup();
    for n in counts {
        let (Some(a), Some(b), Some(c)) = (
            find(rows, n, "baseline"),
            find(rows, n, "cgroupfs"),
            find(rows, n, "ebpf"),
        ) else {
            continue;
        };
        let ratio = |x: &Value| median(&x["pass_us"], 1.0) / median(&c["pass_us"], 1.0);
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {:.1}x | {:.1}x | {:.0} / {:.0} / {:.0} |",
            c["cgroups"],
            spread(&a["pass_us"], 1e-3, 2),
            spread(&b["pass_us"], 1e-3, 2),
            spread(&c["pass_us"], 1e-3, 3),
            spread(&a["per_cgroup_us"], 1.0, 1),
            spread(&b["per_cgroup_us"], 1.0, 1),
            spread(&c["per_cgroup_us"], 1.0, 2),
            ratio(a),
            ratio(b),
            median(&a["peak_rss_bytes"], MIB),
            median(&b["peak_rss_bytes"], MIB),
            median(&c["peak_rss_bytes"], MIB),
        );
    }
    if let (Some(a), Some(c)) = (find(rows, 1000, "baseline"), find(rows, 1000, "ebpf")) {
        let ratio = median(&a["pass_us"], 1.0) / median(&c["pass_us"], 1.0);
        let _ = writeln!(
            md,
            "\nTarget: (c) >= 5x cheaper than (a) at 1,000 cgroups: {ratio:.1}x, {}. (c) splits \
             into a probe-only pass of {} ms and a full pass of {} ms. a's files per pass: {}.",
            verdict(ratio >= 5.0),
            spread(&c["fast_pass_us"], 1e-3, 3),
            spread(&c["full_pass_us"], 1e-3, 1),
            a["files"]
        );
    }
}

fn daemon(md: &mut String, rows: &[Value]) {
    let _ = writeln!(
        md,
        "`collector serve` with its defaults (eBPF, 1 s passes, cgroupfs every 10 s, no \
         subscribers) over the same kind of tree, in a cgroup of its own (CPU from cpu.stat); \
         windows of 10 s.\n"
    );
    let _ = writeln!(
        md,
        "| N created | CPU % of a core | RSS MiB | peak RSS MiB (start-up included) | probes |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for r in rows {
        let probes = r["probes"].as_object().map_or(String::new(), |p| {
            let inactive: Vec<String> = p
                .iter()
                .filter(|(_, s)| *s != "active")
                .map(|(name, s)| format!("{name}: {}", s.as_str().unwrap_or("?")))
                .collect();
            if inactive.is_empty() {
                "all active".into()
            } else {
                inactive.join("; ")
            }
        });
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {probes} |",
            r["created"],
            spread(&r["cpu_percent"], 1.0, 2),
            spread(&r["rss_bytes"], MIB, 1),
            spread(&r["peak_rss_bytes"], MIB, 1),
        );
    }
    if let Some(r) = rows.iter().find(|r| r["created"] == 1000) {
        let (cpu, rss) = (median(&r["cpu_percent"], 1.0), median(&r["rss_bytes"], MIB));
        let _ = writeln!(
            md,
            "\nTargets at 1,000 cgroups, 1 s: <= 1 % of one core: {cpu:.2} %, {}; <= 40 MiB RSS: \
             {rss:.1} MiB, {}.",
            verdict(cpu <= 1.0),
            verdict(rss <= 40.0)
        );
    }
    if let Some(r) = rows.iter().find(|r| r["created"] == 5000) {
        let cpu = median(&r["cpu_percent"], 1.0);
        let _ = writeln!(
            md,
            "Target at 5,000 cgroups: <= 3 % of one core: {cpu:.2} %, {}.",
            verdict(cpu <= 3.0)
        );
    }
}

fn probes(md: &mut String, rows: &[Value]) {
    let Some(r) = rows.first() else { return };
    let _ = writeln!(
        md,
        "Average run time per program from bpf_stats over the attached windows ({} repeats):\n",
        r["repeats"]
    );
    let _ = writeln!(md, "| program | ns per run | runs |");
    let _ = writeln!(md, "|---|---|---|");
    if let Some(programs) = r["program_ns"].as_object() {
        for (name, ns) in programs {
            let runs = &r["program_runs"][name];
            let _ = writeln!(md, "| {name} | {} | {runs} |", spread(ns, 1.0, 0));
        }
    }
    let _ = writeln!(
        md,
        "\nMicrobenchmarks, detached / attached with bpf_stats on (`--bpf-stats`) / attached with \
         bpf_stats off (the default) / only an empty program on sched_switch (the floor: what any \
         program on that hook costs before it does anything), the four rotated every repeat. \
         Ping-pong: two processes \
         pinned to one CPU exchanging a byte over pipes ({} round trips; each is two wake-ups \
         and two context switches). Page faults: first touch of {} fresh 4 KiB pages.\n",
        r["roundtrips"], r["pages"]
    );
    let _ = writeln!(
        md,
        "| microbenchmark | detached ns/op | bpf_stats on ns/op | default ns/op | empty program ns/op | slowdown % (stats on) | slowdown % (default) | slowdown % (empty program) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for (name, key) in [
        ("ping-pong round trip", "ping_pong"),
        ("ping-pong round trip, CPU time", "ping_pong_cpu"),
        ("page fault", "page_fault"),
    ] {
        let s = &r[key];
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            spread(&s["detached_ns"], 1.0, 0),
            spread(&s["attached_ns"], 1.0, 0),
            spread(&s["attached_no_stats_ns"], 1.0, 0),
            spread(&s["empty_program_ns"], 1.0, 0),
            spread(&s["slowdown_percent"], 1.0, 1),
            spread(&s["slowdown_no_stats_percent"], 1.0, 1),
            spread(&s["slowdown_empty_program_percent"], 1.0, 1),
        );
    }
    if let Some(m) = r.get("map_memory") {
        let _ = writeln!(
            md,
            "\nMap kernel memory (fdinfo memlock) at {} possible CPUs: {:.1} MiB; the same maps \
             projected to 64 possible CPUs: {:.1} MiB, to 128: {:.1} MiB (target <= 64 MiB: {}).\n",
            m["possible_cpus"],
            median(&m["kernel_bytes"], MIB),
            median(&m["projected_64_bytes"], MIB),
            median(&m["projected_128_bytes"], MIB),
            verdict(median(&m["projected_128_bytes"], MIB) <= 64.0)
        );
        let _ = writeln!(
            md,
            "| object | map | entries | value bytes | KiB now | MiB at 128 CPUs |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for map in m["maps"].as_array().into_iter().flatten() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} | {:.2} |",
                map["object"].as_str().unwrap_or("?"),
                map["name"].as_str().unwrap_or("?"),
                map["max_entries"],
                map["value_size"],
                median(&map["kernel_bytes"], 1.0 / 1024.0),
                median(&map["projected_128_bytes"], MIB),
            );
        }
    }
    let switch_ns = median(&r["program_ns"]["sched_switch"], 1.0);
    let ping = median(&r["ping_pong"]["slowdown_no_stats_percent"], 1.0);
    let fault = median(&r["page_fault"]["slowdown_no_stats_percent"], 1.0);
    let floor = median(&r["ping_pong"]["slowdown_empty_program_percent"], 1.0);
    let ping_cpu = median(&r["ping_pong_cpu"]["slowdown_no_stats_percent"], 1.0);
    let floor_cpu = median(&r["ping_pong_cpu"]["slowdown_empty_program_percent"], 1.0);
    let by_cpu = if ping_cpu.is_finite() {
        format!(
            "; by the two tasks' CPU time {ping_cpu:.1} %, {} (empty program {floor_cpu:.1} %)",
            verdict(ping_cpu <= 5.0)
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        md,
        "\nTargets at the defaults (bpf_stats off): sched_switch <= 60 ns per run: \
         {switch_ns:.0} ns, {}; ping-pong slowdown <= 5 %: by the wall clock {ping:.1} %, {} (an \
         empty program on sched_switch alone: {floor:.1} %){by_cpu}; page-fault slowdown <= 2 %: \
         {fault:.1} %, {}.",
        verdict(switch_ns <= 60.0),
        verdict(ping <= 5.0),
        verdict(fault <= 2.0)
    );
}

fn stream(md: &mut String, rows: &[Value], seconds: u64) {
    let _ = writeln!(
        md,
        "The collector runs as its own process (cgroupfs-only over a fixture tree whose every \
         cgroup changes each pass); CPU is its utime+stime in three windows over {seconds} s, \
         and per subscriber the CPU above the collector without subscribers, divided by their \
         number. Publish-to-receive is from each message's `sent_unix_nano` (when the collector \
         queued it) to receipt; sample-to-receive from the sample's time, so it also holds the \
         pass. The subscribers run on the same machine and compete for its cores. (A baseline \
         without `sent_unix_nano` reports sample-to-receive only.)\n"
    );
    let _ = writeln!(
        md,
        "| subscribers | collector CPU % of a core | CPU % per subscriber | RSS MiB | messages | publish-to-receive p50 ms | p99 ms | max ms | sample-to-receive p50 ms | p99 ms |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let per = r["cpu_percent_per_subscriber"]
            .as_f64()
            .map_or_else(|| "–".to_owned(), |v| format!("{v:.3}"));
        let _ = writeln!(
            md,
            "| {} | {} | {per} | {:.1} | {} | {} | {} | {} | {} | {} |",
            r["subscribers"],
            spread(&r["collector_cpu_percent"], 1.0, 1),
            median(&r["collector_rss_bytes"], MIB),
            r["messages"],
            spread(&r["latency_p50_ms"], 1.0, 1),
            spread(&r["latency_p99_ms"], 1.0, 1),
            spread(&r["latency_max_ms"], 1.0, 1),
            spread(&r["sample_age_p50_ms"], 1.0, 1),
            spread(&r["sample_age_p99_ms"], 1.0, 1),
        );
    }
    if let Some(r) = rows.iter().find(|r| r["subscribers"] == 100) {
        let p99 = median(&r["latency_p99_ms"], 1.0);
        let _ = writeln!(
            md,
            "\nTarget: publish-to-receive p99 <= 50 ms with 100 subscribers: {p99:.1} ms, {}.",
            verdict(p99 <= 50.0)
        );
    }
}

fn aggregate(md: &mut String, rows: &[Value]) {
    let _ = writeln!(
        md,
        "A simulator plays N collectors (110 pods each, every pod changing every interval, one \
         loopback address per node) into a separate `collector aggregate` process; CPU in three \
         windows of one interval each after every node has a rate.\n"
    );
    let _ = writeln!(
        md,
        "| nodes | aggregator CPU % | mCPU per node | RSS MiB | MiB per node | warm-up s |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {:.3} | {:.1} |",
            r["nodes"],
            spread(&r["aggregator_cpu_percent"], 1.0, 2),
            spread(&r["millicores_per_node"], 1.0, 4),
            median(&r["rss_bytes"], MIB),
            median(&r["rss_mib_per_node"], 1.0),
            median(&r["warmup_seconds"], 1.0),
        );
    }
    if let Some(r) = rows.iter().rfind(|r| r["nodes"].as_u64() >= Some(1000)) {
        let (cpu, rss) = (
            median(&r["millicores_per_node"], 1.0),
            median(&r["rss_mib_per_node"], 1.0),
        );
        let _ = writeln!(
            md,
            "\nTargets at {} nodes: <= 0.1 mCPU per node: {cpu:.4}, {}; <= 0.2 MiB per node: \
             {rss:.3}, {}.",
            r["nodes"],
            verdict(cpu <= 0.1),
            verdict(rss <= 0.2)
        );
    }
}

fn export(md: &mut String, rows: &[Value]) {
    let _ = writeln!(
        md,
        "A `collector` process (no probes, a full cgroupfs read every pass) over a fixture tree \
         of 1,000 containers, 10 per pod, idle, then scraped (`/metrics/resource` and \
         `/metrics` once a round), then pushing remote-write, then OTLP/HTTP to a local sink. \
         The clock runs 10x (a pass, a push, a scrape every second: the work of one 10 s round). \
         Each mode is a fresh process, the modes in rotation; CPU is the collector's own over a \
         10 s window, the cost per round is its CPU above the idle collector's median, and \
         \"at 10 s\" divides that by 10 s. Scrape bytes are uncompressed text.\n"
    );
    let _ = writeln!(
        md,
        "| mode | collector CPU % (1 s rounds) | ms per round | % of a core at 10 s | KiB per round | samples per round | bytes per sample |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let (process, precise): (Vec<&Value>, Vec<&Value>) = rows
        .iter()
        .partition(|r| r.get("thread_ms_per_round").is_none());
    let per_sample = |r: &Value| r["bytes_per_sample"].as_f64().unwrap_or(f64::NAN);
    let kib = |r: &Value| r["bytes_per_round"].as_f64().unwrap_or(f64::NAN) / 1024.0;
    let samples = |r: &Value| r["samples_per_round"].as_f64().unwrap_or(f64::NAN);
    for r in &process {
        let ms = median(&r["ms_per_round"], 1.0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} | {:.0} | {:.2} |",
            r["mode"].as_str().unwrap_or("?"),
            spread(&r["cpu_share"], 100.0, 2),
            spread(&r["ms_per_round"], 1.0, 2),
            if ms.is_finite() {
                format!("{:.3}", ms / 100.0)
            } else {
                "–".into()
            },
            kib(r),
            samples(r),
            per_sample(r),
        );
    }
    let _ = writeln!(
        md,
        "\nThe same paths on real snapshots of that tree inside one process, timed on one thread \
         (no sampler, no machine noise): a scrape renders both endpoints; a push tracks the new \
         points and encodes them (the HTTP exchange is left out of both).\n"
    );
    let _ = writeln!(
        md,
        "| path | thread ms per round | % of a core at 10 s | KiB per round | samples per round | bytes per sample |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for r in &precise {
        let ms = r["thread_ms_per_round"].as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "| {} | {ms:.2} | {:.3} | {:.1} | {:.0} | {:.2} |",
            r["mode"].as_str().unwrap_or("?"),
            ms / 100.0,
            kib(r),
            samples(r),
            per_sample(r),
        );
    }
    let cost = |mode: &str| {
        rows.iter()
            .find(|r| r["mode"] == mode)
            .map_or(f64::NAN, |r| {
                r["thread_ms_per_round"].as_f64().unwrap_or(f64::NAN)
            })
    };
    let (push, scrape) = (cost("remote_write_encode"), cost("scrape_render"));
    let _ = writeln!(
        md,
        "\nTarget: pushing 1,000 containers at 10 s costs no more CPU than serving them to one \
         scrape: remote-write {push:.2} ms vs scrape {scrape:.2} ms per round, {}.",
        verdict(push <= scrape)
    );
}

pub fn markdown(
    plan: &Plan,
    results: &Results,
    cores: usize,
    kernel: &str,
    plot_note: &str,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# collector bench{}\n",
        if plan.quick { " (--quick)" } else { "" }
    );
    let _ = writeln!(
        md,
        "Machine: {cores} cores, kernel {kernel}. Figures are median (min–max) over repeats or \
         windows of one run."
    );
    section(
        &mut md,
        "Collection cost vs cgroup count",
        &results.cost,
        |md, rows| cost(md, rows, plot_note),
    );
    section(&mut md, "The daemon at 1 s", &results.daemon, daemon);
    section(&mut md, "Probe overhead", &results.probes, probes);
    section(
        &mut md,
        "Streaming: Watch fan-out, 1,000 cgroups at 1 s",
        &results.stream,
        |md, rows| stream(md, rows, plan.stream_seconds),
    );
    section(
        &mut md,
        "Aggregation: simulated nodes x 110 pods, 10 s interval",
        &results.aggregate,
        aggregate,
    );
    section(
        &mut md,
        "Export: push vs scrape, 1,000 containers at 10 s",
        &results.export,
        export,
    );
    md
}

#[cfg(test)]
mod tests;
