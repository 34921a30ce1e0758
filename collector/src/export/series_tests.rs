//! The tracker against hand-made snapshots: readings once, per-pass series at the interval,
//! stale points after the last one, renamed entities replaced.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::*;
use crate::{
    sampler::{CgroupSample, Sample},
    store::Recent,
};

const T0_MS: u64 = 1_800_000_000_000;

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn cpu(ns: u64, read_ms: u64) -> Option<proto::CpuStats> {
    Some(proto::CpuStats {
        time_unix_nano: read_ms * 1_000_000,
        usage_core_nano_seconds: Some(ns),
        ..Default::default()
    })
}

fn container(
    id: &str,
    name: &str,
    cgroup_id: u64,
    cpu_ns: u64,
    read_ms: u64,
) -> proto::ContainerStats {
    proto::ContainerStats {
        name: name.into(),
        container_id: id.into(),
        cgroup_id,
        start_time_unix_nano: (T0_MS - 60_000) * 1_000_000,
        cpu: cpu(cpu_ns, read_ms),
        ..Default::default()
    }
}

fn pod(namespace: &str, containers: Vec<proto::ContainerStats>, read_ms: u64) -> proto::PodStats {
    proto::PodStats {
        pod_ref: Some(proto::PodReference {
            name: if namespace.is_empty() {
                String::new()
            } else {
                "web".into()
            },
            namespace: namespace.into(),
            uid: "uid-1".into(),
        }),
        cgroup_id: 10,
        cpu: cpu(5_000_000_000, read_ms),
        containers,
        ..Default::default()
    }
}

/// A pass at `wall_ms` whose cgroups have eBPF CPU `ebpf_ns`.
fn snapshot(seq: u64, wall_ms: u64, pods: Vec<proto::PodStats>, ebpf_ns: u64) -> Snapshot {
    let ids: Vec<u64> = pods
        .iter()
        .flat_map(|p| std::iter::once(p.cgroup_id).chain(p.containers.iter().map(|c| c.cgroup_id)))
        .collect();
    let mut cgroups: Vec<CgroupSample> = ids
        .into_iter()
        .map(|id| CgroupSample {
            id,
            path: format!("/kubepods/{id}").into(),
            reading: Default::default(),
            read_at: Instant::now(),
            read_wall: at(wall_ms),
            ebpf: EbpfValues {
                cpu_ns: Some(ebpf_ns),
                ..Default::default()
            },
            created_unix_nano: None,
            network: None,
        })
        .collect();
    cgroups.sort_by_key(|c| c.id);
    Snapshot {
        seq,
        sample: Sample {
            taken_at: Instant::now(),
            wall: at(wall_ms),
            cgroups,
            meminfo: None,
            host: Default::default(),
            terminated: Vec::new(),
            oom_kills: Vec::new(),
        },
        rates: Vec::new(),
        probes: Vec::new(),
        maps: Arc::new([]),
        disk_scan: Default::default(),
        stats: Default::default(),
        node_stats: proto::NodeStats {
            cpu: cpu(9_000_000_000, wall_ms),
            ..Default::default()
        },
        pods,
        program_stats: Vec::new(),
        recent: Arc::new(Recent::default()),
        records: Default::default(),
    }
}

fn series(b: &Batch, level: Level, metric: Metric) -> Vec<&Series> {
    b.series
        .iter()
        .filter(|s| s.entity.level == level && s.metric == metric)
        .collect()
}

fn times(s: &Series) -> Vec<u64> {
    s.points
        .iter()
        .map(|p| p.time_ns / 1_000_000 - T0_MS)
        .collect()
}

#[test]
fn a_reading_is_sent_once_at_its_read_time_and_ebpf_once_per_interval() {
    let mut t = Tracker::new(Duration::from_secs(1), at(T0_MS - 5_000));
    // Passes every 250 ms; cgroupfs read at 0 and again at 1000 (full passes).
    for (seq, wall) in [0u64, 250, 500, 750, 1000, 1250].into_iter().enumerate() {
        let read = if wall >= 1000 { T0_MS + 1000 } else { T0_MS };
        let c = container("c1", "app", 11, 1_000_000_000 + wall, read);
        t.observe(&snapshot(
            seq as u64,
            T0_MS + wall,
            vec![pod("ns", vec![c], read)],
            wall * 1000,
        ));
    }
    let b = t.take();
    let cpu = series(&b, Level::Container, Metric::Cpu);
    assert_eq!(cpu.len(), 1);
    assert_eq!(
        times(cpu[0]),
        [0, 1000],
        "each reading once, at its read time"
    );
    assert_eq!(
        cpu[0].points[1].value,
        Value::Number(1.000_001),
        "the value of the reading taken at 1000"
    );
    assert_eq!(
        cpu[0].start_ns,
        (T0_MS - 60_000) * 1_000_000,
        "container start"
    );
    let ebpf = series(&b, Level::Container, Metric::EbpfCpu);
    assert_eq!(times(ebpf[0]), [0, 1000], "per-pass series at the interval");
    assert_eq!(
        ebpf[0].start_ns,
        (T0_MS - 5_000) * 1_000_000,
        "since the probes attached"
    );
    assert_eq!(
        times(series(&b, Level::Node, Metric::Cpu)[0]),
        [0, 250, 500, 750, 1000, 1250]
    );
    // Nothing new: nothing sent.
    let c = container("c1", "app", 11, 1_000_001_250, T0_MS + 1000);
    t.observe(&snapshot(
        6,
        T0_MS + 1500,
        vec![pod("ns", vec![c], T0_MS + 1000)],
        1_250_000,
    ));
    let b = t.take();
    assert!(series(&b, Level::Container, Metric::Cpu).is_empty());
    assert!(series(&b, Level::Pod, Metric::Cpu).is_empty());
}

#[test]
fn a_removed_container_gets_stale_points_after_its_last_one() {
    let mut t = Tracker::new(Duration::from_secs(1), at(T0_MS));
    let c = container("c1", "app", 11, 1_000, T0_MS);
    t.observe(&snapshot(0, T0_MS, vec![pod("ns", vec![c], T0_MS)], 7));
    t.take();
    // Gone in the next pass, whose time equals the last reading's ms: the marker comes after.
    t.observe(&snapshot(1, T0_MS, vec![pod("ns", vec![], T0_MS)], 7));
    let b = t.take();
    for metric in [Metric::Cpu, Metric::StartTime, Metric::EbpfCpu] {
        let s = series(&b, Level::Container, metric);
        assert_eq!(s.len(), 1, "{metric:?}");
        assert_eq!(s[0].points.len(), 1);
        assert_eq!(s[0].points[0].value, Value::Stale);
        assert_eq!(times(s[0]), [1], "{metric:?}: 1 ms after the last point");
    }
    assert!(
        series(&b, Level::Pod, Metric::Cpu).is_empty(),
        "the pod lives on"
    );
}

#[test]
fn a_renamed_entity_ends_its_old_series_and_starts_new_ones() {
    let mut t = Tracker::new(Duration::from_secs(1), at(T0_MS));
    // The runtime's names arrive: the pod's labels change from its uid to web/ns.
    t.observe(&snapshot(0, T0_MS, vec![pod("", vec![], T0_MS)], 1));
    t.observe(&snapshot(
        1,
        T0_MS + 1000,
        vec![pod("ns", vec![], T0_MS + 1000)],
        2,
    ));
    let b = t.take();
    let pods = series(&b, Level::Pod, Metric::Cpu);
    assert_eq!(pods.len(), 2);
    let old = pods.iter().find(|s| s.entity.pod == "uid-1").unwrap();
    let new = pods.iter().find(|s| s.entity.pod == "web").unwrap();
    assert_eq!(old.points.last().unwrap().value, Value::Stale);
    assert_eq!(times(old), [0, 1000]);
    assert_eq!(times(new), [1000]);
    assert_eq!(new.entity.namespace, "ns");
}

#[test]
fn missed_snapshots_are_counted_and_old_ones_ignored() {
    let mut t = Tracker::new(Duration::from_secs(1), at(T0_MS));
    t.observe(&snapshot(3, T0_MS, vec![], 0));
    t.observe(&snapshot(6, T0_MS + 1000, vec![], 0));
    t.observe(&snapshot(5, T0_MS + 2000, vec![], 0));
    assert_eq!(t.missed_snapshots, 2);
    assert_eq!(
        times(series(&t.take(), Level::Node, Metric::Cpu)[0]),
        [0, 1000]
    );
}

#[test]
fn socket_traffic_goes_out_as_four_counters_by_direction() {
    let mut t = Tracker::new(Duration::from_secs(1), at(T0_MS - 5_000));
    let c = container("c1", "app", 11, 1_000_000_000, T0_MS);
    let mut s = snapshot(0, T0_MS, vec![pod("ns", vec![c], T0_MS)], 0);
    for c in &mut s.sample.cgroups {
        // rx bytes, rx packets, tx bytes, tx packets: the net probe's layout.
        c.ebpf.network = Some([1_028, 1, 2_056, 2]);
    }
    t.observe(&s);
    let b = t.take();
    for (metric, value, direction) in [
        (Metric::EbpfRxBytes, 1_028.0, "receive"),
        (Metric::EbpfRxPackets, 1.0, "receive"),
        (Metric::EbpfTxBytes, 2_056.0, "transmit"),
        (Metric::EbpfTxPackets, 2.0, "transmit"),
    ] {
        let sent = series(&b, Level::Container, metric);
        assert_eq!(sent.len(), 1, "{metric:?}");
        assert_eq!(sent[0].points[0].value, Value::Number(value), "{metric:?}");
        assert_eq!(
            sent[0].start_ns,
            (T0_MS - 5_000) * 1_000_000,
            "since the probes attached"
        );
        assert_eq!(metric.direction(), Some(direction));
        assert!(metric.is_counter());
    }
    // Without the net probe (no values), no network series.
    let c = container("c1", "app", 11, 1_000_000_000, T0_MS);
    t.observe(&snapshot(
        1,
        T0_MS + 1_000,
        vec![pod("ns", vec![c], T0_MS)],
        0,
    ));
    assert!(series(&t.take(), Level::Container, Metric::EbpfTxBytes).is_empty());
}
