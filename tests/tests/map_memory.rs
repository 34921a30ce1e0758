//! Root: the kernel memory of the probes' maps, as the kernel charges it, fits a big node.
//!
//! Per-CPU maps hold one value per *possible* CPU, so a 2-core test machine hides what a
//! 128-CPU node pays; the collector projects each map's charge to 64 and 128 CPUs by the
//! kernel's own accounting, and the DaemonSet's memory limit (256 Mi, with the process's own
//! ~50 MiB peak) is sized from that projection. An object that creates maps it does not use
//! (as every family's object once did with the `sched` family's per-CPU counters) multiplies it.

use std::collections::BTreeMap;

use collector::probes::{ProbeConfig, Probes};
use collector_integration_tests::{can_run, cgroup2_mount};

/// The budget at the default `--max-cgroups` on a node with 128 possible CPUs.
const BUDGET_128_CPUS: u64 = 64 << 20;

#[test]
fn every_map_is_created_once_and_the_whole_fits_128_cpus() {
    if !can_run("every_map_is_created_once_and_the_whole_fits_128_cpus") {
        return;
    }
    // Every family, the net probe's per-CPU counters too (they attach at the cgroup2 root).
    let probes = Probes::load(&ProbeConfig {
        cgroup2_root: Some(cgroup2_mount().expect("a cgroup2 mount")),
        ..ProbeConfig::default()
    });
    let inactive: Vec<_> = probes
        .statuses()
        .into_iter()
        .filter(|s| !s.is_active())
        .collect();
    assert!(inactive.is_empty(), "probes not active: {inactive:?}");

    let maps = probes.map_memory();
    let mut owners: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for m in maps {
        // Every object keeps its own drop counters and read-only data; the rest exist once.
        if m.name != "COUNTERS" && !m.name.starts_with('.') {
            owners.entry(&m.name).or_default().push(m.object);
        }
    }
    let twice: Vec<_> = owners.iter().filter(|(_, o)| o.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "maps created by more than one object: {twice:?}"
    );

    let now: u64 = maps.iter().map(|m| m.kernel_bytes.unwrap_or(0)).sum();
    let at_128: u64 = maps.iter().map(|m| m.projected_bytes(128)).sum();
    eprintln!(
        "{} maps: {:.1} MiB now, {:.1} MiB at 128 possible CPUs",
        maps.len(),
        now as f64 / f64::from(1 << 20),
        at_128 as f64 / f64::from(1 << 20)
    );
    assert!(
        at_128 <= BUDGET_128_CPUS,
        "{:.1} MiB at 128 CPUs, budget {} MiB",
        at_128 as f64 / f64::from(1 << 20),
        BUDGET_128_CPUS >> 20
    );
}
