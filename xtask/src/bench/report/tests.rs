use serde_json::json;

use super::*;

fn s(median: f64, min: f64, max: f64) -> Value {
    json!({ "median": median, "min": min, "max": max, "n": 3 })
}

fn cost_row(mode: &str, pass_us: f64) -> Value {
    json!({
        "kind": "cost", "created": 1000, "mode": mode, "cgroups": 1002.0,
        "pass_us": s(pass_us, pass_us * 0.9, pass_us * 1.1),
        "per_cgroup_us": s(pass_us / 1002.0, 0.0, 1.0),
        "peak_rss_bytes": s(20.0 * 1_048_576.0, 0.0, 0.0),
        "full_pass_us": s(98_000.0, 0.0, 0.0), "fast_pass_us": s(1250.0, 0.0, 0.0),
        "files": 131_327,
    })
}

#[test]
fn report_gives_ratios_spreads_and_verdicts() {
    let cost = vec![
        cost_row("baseline", 500_000.0),
        cost_row("cgroupfs", 100_000.0),
        cost_row("ebpf", 11_000.0),
    ];
    let daemon = vec![json!({
        "created": 1000, "cpu_percent": s(2.5, 2.4, 2.6),
        "rss_bytes": s(12.0 * 1_048_576.0, 0.0, 0.0),
        "probes": { "sched_switch": "active", "page_faults_minor": "no perf events" },
    })];
    let results = Results {
        cost: Ok(cost.clone()),
        daemon: Ok(daemon),
        probes: Err("needs root".into()),
        stream: Ok(vec![json!({
            "subscribers": 0, "collector_cpu_percent": s(2.0, 2.0, 2.0),
            "collector_rss_bytes": 0, "messages": 0, "latency_p50_ms": null,
        })]),
        aggregate: Ok(Vec::new()),
        export: Ok(vec![
            json!({"mode": "scrape", "cpu_share": s(0.05, 0.05, 0.05),
                   "ms_per_round": s(20.0, 19.0, 21.0), "bytes_per_round": 2048.0,
                   "samples_per_round": 100.0, "bytes_per_sample": 20.48}),
            json!({"mode": "remote_write", "cpu_share": s(0.04, 0.04, 0.04),
                   "ms_per_round": s(10.0, 9.0, 11.0), "bytes_per_round": 1024.0,
                   "samples_per_round": 100.0, "bytes_per_sample": 10.24}),
            json!({"mode": "scrape_render", "thread_ms_per_round": 4.0,
                   "bytes_per_round": 2048.0, "samples_per_round": 100.0,
                   "bytes_per_sample": 20.48}),
            json!({"mode": "remote_write_encode", "thread_ms_per_round": 3.0,
                   "bytes_per_round": 1024.0, "samples_per_round": 100.0,
                   "bytes_per_sample": 10.24}),
        ]),
    };
    let md = markdown(&Plan::new(true), &results, 2, "6.1.0", "cost.svg");
    assert!(
        md.contains("| 1000 | 1002.0 | 500.00 (450.00–550.00) |"),
        "{md}"
    );
    assert!(md.contains("| 45.5x | 9.1x |"), "{md}");
    assert!(
        md.contains("5x cheaper than (a) at 1,000 cgroups: 45.5x, met"),
        "{md}"
    );
    assert!(
        md.contains("<= 1 % of one core: 2.50 %, **not met**"),
        "{md}"
    );
    assert!(md.contains("<= 40 MiB RSS: 12.0 MiB, met"), "{md}");
    assert!(md.contains("page_faults_minor: no perf events"), "{md}");
    assert!(
        md.contains("## Probe overhead\n\nNot measured: needs root"),
        "{md}"
    );
    assert!(
        md.contains("| 0 | 2.0 (2.0–2.0) | – | 0.0 | 0 | – |"),
        "{md}"
    );
    assert!(
        md.contains(
            "| remote_write | 4.00 (4.00–4.00) | 10.00 (9.00–11.00) | 0.100 | 1.0 | 100 | 10.24 |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| remote_write_encode | 3.00 | 0.030 | 1.0 | 100 | 10.24 |"),
        "{md}"
    );
    assert!(
        md.contains("remote-write 3.00 ms vs scrape 4.00 ms per round, met"),
        "{md}"
    );

    let dir = std::env::temp_dir().join(format!("xtask-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("cost.svg");
    super::super::plot::cost_per_pass(&cost, Some(("abc123", &cost)), &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    for label in ["(a) cAdvisor-style", "(b) collector", "(c) collector, eBPF"] {
        assert!(text.contains(label), "{label} missing from the plot");
    }
    assert!(text.contains("every 10 s), abc123"), "no baseline curve");
    assert!(super::super::plot::cost_per_pass(&[], None, &svg).is_err());
}

#[test]
fn probe_section_shows_the_empty_program_floor_beside_the_probes() {
    let micro = |detached: f64, default: f64, empty: f64| {
        json!({
            "detached_ns": s(detached, detached, detached),
            "attached_ns": s(default + 100.0, default + 100.0, default + 100.0),
            "attached_no_stats_ns": s(default, default, default),
            "empty_program_ns": s(empty, empty, empty),
            "slowdown_percent": s(12.0, 10.0, 14.0),
            "slowdown_no_stats_percent": s(6.7, -8.6, 34.7),
            "slowdown_empty_program_percent": s(4.1, -16.6, 15.4),
        })
    };
    let row = json!({
        "roundtrips": 50000, "pages": 163840,
        "ping_pong": micro(6000.0, 6445.0, 6002.0),
        "ping_pong_cpu": micro(5800.0, 5900.0, 5850.0),
        "page_fault": micro(2000.0, 2000.0, 2000.0),
        "program_ns": { "sched_switch": s(201.0, 182.0, 240.0) },
    });
    let mut md = String::new();
    probes(&mut md, &[row]);
    assert!(
        md.contains("| ping-pong round trip | 6000 (6000–6000) | 6545 (6545–6545) | 6445 (6445–6445) | 6002 (6002–6002) | 12.0 (10.0–14.0) | 6.7 (-8.6–34.7) | 4.1 (-16.6–15.4) |"),
        "{md}"
    );
    assert!(
        md.contains("| ping-pong round trip, CPU time | 5800 (5800–5800) |"),
        "{md}"
    );
    assert!(
        md.contains("ping-pong slowdown <= 5 %: by the wall clock 6.7 %, **not met** (an empty program on sched_switch alone: 4.1 %); by the two tasks' CPU time 6.7 %, **not met** (empty program 4.1 %)"),
        "{md}"
    );
}
