//! The Summary model against fixture trees, every expected value computed by hand from kubelet's
//! formulas (working set = usage − inactive_file floored at 0, available = limit − working set,
//! rss = anon / total_rss, node v2 usage = anon + file, node limit = MemTotal).
//!
//! - v2-systemd-node: pure cgroup v2, systemd driver: a burstable pod with two containers
//!   (containerd), a guaranteed pod (CRI-O, with conmon), a besteffort pod (docker), a service.
//! - v2-cgroupfs-driver: pure cgroup v2, cgroupfs driver.
//! - hybrid-v1-6.18: real files from our hybrid host (v1 memory/cpu/cpuacct/pids/blkio,
//!   cgroup2 without controllers), laid out as a cgroupfs-driver pod.
//!
//! The v2 trees are written in the kernel's exact file formats (6.x key sets) with chosen
//! values; the v1 tree is a capture.

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use collector::{
    cgroupfs::CgroupMounts,
    node::NodeInfo,
    probes::{ProbeConfig, Probes},
    proto::{self, PodStats},
    rate::CgroupRates,
    sampler::Sampler,
    store::Snapshot,
    summary,
};

const MIB: u64 = 1024 * 1024;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// One pass over a fixture tree, then the Summary. Rates are absent (a single sample).
fn summarize(
    cgroup2: PathBuf,
    mounts: CgroupMounts,
    proc_root: PathBuf,
) -> (proto::NodeStats, Vec<PodStats>, Snapshot) {
    let probes = Probes::load(&ProbeConfig {
        disabled: true,
        ..ProbeConfig::default()
    });
    let mut sampler = Sampler::new(cgroup2, &mounts, probes).with_proc_root(proc_root);
    let sample = sampler.sample().unwrap();
    let rates = vec![CgroupRates::default(); sample.cgroups.len()];
    let node = NodeInfo {
        node_name: "fixture-node".into(),
        hostname: "fixture-host".into(),
        boot_time_unix_nano: 42,
        ..NodeInfo::default()
    };
    let (node_stats, pods) = summary::build(&sample, &rates, &node, &Default::default());
    let snap = Snapshot {
        records: Default::default(),
        seq: 0,
        rates,
        sample,
        probes: Vec::new(),
        stats: sampler.stats,
        node_stats: node_stats.clone(),
        pods: pods.clone(),
        program_stats: Vec::new(),
        maps: Vec::new().into(),
        recent: Default::default(),
        disk_scan: Default::default(),
    };
    (node_stats, pods, snap)
}

fn v2(name: &str) -> (proto::NodeStats, Vec<PodStats>, Snapshot) {
    let base = testdata(name);
    summarize(
        base.join("cgroup"),
        CgroupMounts::default(),
        base.join("proc"),
    )
}

fn by_uid(pods: &[PodStats]) -> BTreeMap<String, &PodStats> {
    pods.iter()
        .map(|p| (p.pod_ref.as_ref().unwrap().uid.clone(), p))
        .collect()
}

#[test]
fn v2_systemd_node_stats() {
    let (node, _, snap) = v2("v2-systemd-node");
    assert_eq!(node.node_name, "fixture-node");
    assert_eq!(node.start_time_unix_nano, 42);
    let cpu = node.cpu.unwrap();
    assert_eq!(cpu.usage_core_nano_seconds, Some(987_654_321_000));
    assert_eq!(cpu.usage_nano_cores, None, "first sample: absent, not 0");
    let m = node.memory.unwrap();
    // Root has no memory.current: usage = anon 1024 MiB + file 2048 MiB.
    assert_eq!(m.usage_bytes, Some(3072 * MIB));
    assert_eq!(m.working_set_bytes, Some(1536 * MIB)); // − inactive_file 1536 MiB
    assert_eq!(m.limit_bytes, Some(8_388_608 * 1024)); // MemTotal
    assert_eq!(m.available_bytes, Some(8_589_934_592 - 1_610_612_736));
    assert_eq!(m.rss_bytes, Some(1024 * MIB));
    assert_eq!(
        (m.page_faults, m.major_page_faults),
        (Some(9_000_000), Some(1200))
    );
    let swap = node.swap.unwrap();
    assert_eq!(swap.swap_usage_bytes, Some((2_097_152 - 1_048_576) * 1024));
    assert_eq!(swap.swap_available_bytes, Some(1_048_576 * 1024));
    let io = node.io.unwrap();
    assert_eq!((io.read_bytes, io.write_bytes), (Some(4000), Some(6000)));
    assert_eq!((io.read_ops, io.write_ops), (Some(40), Some(60)));
    assert_eq!(node.process_stats.unwrap().process_count, Some(3));
    // /proc/1/net/dev: lo, veth* and docker* left out; no eth0, so no default interface.
    let net = node.network.unwrap();
    let names: Vec<&str> = net.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["ens5", "cni0"]);
    assert_eq!(net.default_interface, None);
    assert_eq!(net.interfaces[0].rx_bytes, Some(9_188_465_332));
    let rlimit = node.rlimit.unwrap();
    assert_eq!(
        (rlimit.max_pid, rlimit.cur_proc),
        (Some(192_730), Some(1834))
    );
    assert_eq!(node.fs, None, "no kubelet root dir given");
    assert_eq!(node.runtime, None, "no runtime");
    assert_eq!(
        node.ebpf, None,
        "no probes: eBPF absent, never filled from cgroupfs"
    );
    assert_eq!(snap.stats.parse_errors, 0);
}

#[test]
fn v2_systemd_burstable_pod_with_two_containers() {
    let (_, pods, _) = v2("v2-systemd-node");
    assert_eq!(pods.len(), 3);
    let pods = by_uid(&pods);
    let pod = pods["1b4e28ba-2fa1-11d2-883f-0016d3cca427"];
    assert_eq!(pod.qos_class, "Burstable");

    // Pod numbers come from the pod cgroup, not from summing containers.
    let m = pod.memory.unwrap();
    assert_eq!(m.usage_bytes, Some(300 * MIB));
    assert_eq!(m.working_set_bytes, Some(250 * MIB));
    assert_eq!(m.limit_bytes, None, "memory.max = max");
    assert_eq!(m.available_bytes, None, "absent when unlimited");
    assert_eq!(m.rss_bytes, Some(200 * MIB));
    assert_eq!(m.cache_bytes, Some(100 * MIB));
    assert_eq!(m.mapped_file_bytes, Some(8 * MIB));
    assert_eq!(
        (m.page_faults, m.major_page_faults),
        (Some(150_000), Some(12))
    );
    let cpu = pod.cpu.unwrap();
    assert_eq!(cpu.usage_core_nano_seconds, Some(45_000_000_000));
    assert_eq!(cpu.user_nano_seconds, Some(40_000_000_000));
    assert_eq!((cpu.quota_micros, cpu.period_micros), (None, Some(100_000)));
    assert_eq!(cpu.weight, Some(79));
    let psi = cpu.psi.unwrap().some.unwrap();
    assert_eq!((psi.total_micros, psi.avg10), (123_456, 0.5));
    let swap = pod.swap.unwrap();
    assert_eq!(
        (swap.swap_usage_bytes, swap.swap_available_bytes),
        (Some(0), None)
    );
    let io = pod.io.unwrap();
    assert_eq!(
        (io.read_bytes, io.write_bytes, io.read_ops),
        (Some(8192), Some(8192), Some(2))
    );
    // kubelet's process count is the containers' sum (2 + 1); tasks are the pod cgroup's own.
    let procs = pod.process_stats.unwrap();
    assert_eq!(
        (procs.process_count, procs.task_count, procs.task_limit),
        (Some(3), Some(12), None)
    );
    // The pod's network namespace, read through its first process (pid 101): lo left out,
    // eth0 the default interface.
    let net = pod
        .network
        .as_ref()
        .expect("pod network from proc/101/net/dev");
    let names: Vec<&str> = net.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["eth0"]);
    let eth0 = net.default_interface.as_ref().unwrap();
    assert_eq!(
        (eth0.rx_bytes, eth0.rx_errors, eth0.tx_bytes, eth0.tx_errors),
        (Some(123_456_789), Some(3), Some(987_654_321), Some(1))
    );
    assert_eq!((eth0.rx_packets, eth0.rx_dropped), (Some(98_765), Some(7)));

    assert_eq!(pod.containers.len(), 2);
    let a = &pod.containers[0];
    assert_eq!(a.container_id, "a".repeat(64));
    assert_eq!(a.runtime, "containerd");
    let m = a.memory.unwrap();
    assert_eq!(m.working_set_bytes, Some(170 * MIB)); // 200 − 30
    assert_eq!(m.limit_bytes, Some(256 * MIB));
    assert_eq!(m.available_bytes, Some(256 * MIB - 170 * MIB));
    assert_eq!((m.oom_events, m.oom_kill_events), (Some(3), Some(1)));
    let swap = a.swap.unwrap();
    assert_eq!(swap.swap_usage_bytes, Some(4 * MIB));
    assert_eq!(swap.swap_available_bytes, Some(60 * MIB)); // swap.max 64 − 4
    let cpu = a.cpu.unwrap();
    assert_eq!(cpu.cfs_periods, Some(500));
    assert_eq!(cpu.cfs_throttled_periods, Some(25));
    assert_eq!(cpu.cfs_throttled_nano_seconds, Some(1_250_000_000));
    assert_eq!(
        (cpu.quota_micros, cpu.period_micros),
        (Some(50_000), Some(100_000))
    );
    assert_eq!(a.process_stats.unwrap().process_count, Some(2));

    // inactive_file (120 MiB) larger than usage (100 MiB): working set floors at 0.
    let b = &pod.containers[1];
    let m = b.memory.unwrap();
    assert_eq!(m.working_set_bytes, Some(0));
    assert_eq!(m.available_bytes, Some(128 * MIB));
}

#[test]
fn v2_systemd_guaranteed_and_besteffort_pods() {
    let (_, pods, _) = v2("v2-systemd-node");
    let pods = by_uid(&pods);

    let g = pods["9d8c7b6a-5f4e-4d3c-2b1a-0f9e8d7c6b5a"];
    assert_eq!(g.qos_class, "Guaranteed");
    let m = g.memory.unwrap();
    assert_eq!(m.working_set_bytes, Some(300_000_000));
    assert_eq!(m.available_bytes, Some(536_870_912 - 300_000_000));
    // No pressure files: PSI absent. No memory.swap.*: swap usage absent.
    assert_eq!(m.psi, None);
    assert_eq!(g.cpu.unwrap().psi, None);
    assert_eq!(g.swap.unwrap().swap_usage_bytes, None);
    // crio-conmon is part of the pod, not a container: neither listed nor counted.
    assert_eq!(g.containers.len(), 1);
    assert_eq!(g.process_stats.unwrap().process_count, Some(1));
    let net = g.network.as_ref().unwrap();
    assert_eq!(net.interfaces.len(), 2, "eth0 and net1");
    assert_eq!(
        net.default_interface.as_ref().unwrap().tx_bytes,
        Some(60_000)
    );
    assert_eq!(g.containers[0].runtime, "cri-o");
    assert_eq!(g.containers[0].container_id, "c".repeat(64));

    let be = pods["0a1b2c3d-4e5f-6789-abcd-ef0123456789"];
    assert_eq!(be.qos_class, "BestEffort");
    assert_eq!(be.containers.len(), 1);
    assert_eq!(be.containers[0].runtime, "docker");
    assert_eq!(be.memory.unwrap().working_set_bytes, Some(15 * MIB));
    assert_eq!(
        be.network, None,
        "no net/dev for its processes: absent, not zero"
    );
}

#[test]
fn v2_non_pod_cgroups_stay_raw_records() {
    let (_, _, snap) = v2("v2-systemd-node");
    let paths: Vec<&str> = snap.sample.cgroups.iter().map(|c| &*c.path).collect();
    assert!(
        paths.contains(&"/system.slice/containerd.service"),
        "{paths:?}"
    );
}

#[test]
fn v2_cgroupfs_driver() {
    let (node, pods, _) = v2("v2-cgroupfs-driver");
    let m = node.memory.unwrap();
    assert_eq!(m.usage_bytes, Some(200 * MIB));
    assert_eq!(m.working_set_bytes, Some(150 * MIB));
    assert_eq!(m.available_bytes, Some(4 * 1024 * MIB - 150 * MIB));
    let swap = node.swap.unwrap();
    assert_eq!(
        (swap.swap_usage_bytes, swap.swap_available_bytes),
        (Some(0), Some(0))
    );

    let pods = by_uid(&pods);
    assert_eq!(pods.len(), 2);
    let b = pods["11111111-2222-3333-4444-555555555555"];
    assert_eq!(b.qos_class, "Burstable");
    assert_eq!(b.containers.len(), 1);
    assert_eq!(
        b.containers[0].runtime, "",
        "cgroupfs driver paths do not name the runtime"
    );
    let g = pods["66666666-7777-8888-9999-000000000000"];
    assert_eq!(g.qos_class, "Guaranteed");
    let m = g.containers[0].memory.unwrap();
    assert_eq!(m.working_set_bytes, Some(25 * MIB));
    assert_eq!(m.available_bytes, Some(7 * MIB));
}

#[test]
fn v1_hybrid_host_pod_from_real_files() {
    let base = testdata("hybrid-v1-6.18");
    let v1 = ["memory", "cpu", "cpuacct", "pids", "blkio"]
        .iter()
        .map(|c| (c.to_string(), base.join(c)))
        .collect();
    let mounts = CgroupMounts {
        v2: Some(base.join("unified")),
        v1,
    };
    let started = Instant::now();
    let (node, pods, _) = summarize(base.join("unified"), mounts, base.join("proc"));
    assert!(started.elapsed().as_secs() < 60);

    // Node from the v1 root: usage_in_bytes 370884608 − total_inactive_file 200171520.
    let m = node.memory.unwrap();
    assert_eq!(m.usage_bytes, Some(370_884_608));
    assert_eq!(m.working_set_bytes, Some(170_713_088));
    assert_eq!(m.limit_bytes, Some(25_276_502_016)); // MemTotal 24684084 kB
    assert_eq!(m.available_bytes, Some(25_105_788_928));
    assert_eq!(m.rss_bytes, Some(5_328_896)); // total_rss
    assert_eq!(
        node.cpu.unwrap().usage_core_nano_seconds,
        Some(1_640_213_701_973)
    ); // cpuacct.usage

    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert_eq!(
        pod.pod_ref.as_ref().unwrap().uid,
        "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    );
    assert_eq!(pod.qos_class, "Burstable");
    let c = &pod.containers[0];
    let m = c.memory.unwrap();
    // usage 9797632 − total_inactive_file 9121792; limit 64 MiB.
    assert_eq!(m.usage_bytes, Some(9_797_632));
    assert_eq!(m.working_set_bytes, Some(675_840));
    assert_eq!(m.limit_bytes, Some(64 * MIB));
    assert_eq!(m.available_bytes, Some(64 * MIB - 675_840));
    assert_eq!(m.rss_bytes, Some(0));
    assert_eq!(m.cache_bytes, Some(9_506_816));
    assert_eq!(
        (m.page_faults, m.major_page_faults),
        (Some(16_570), Some(10))
    );
    assert_eq!(m.psi.unwrap().some.unwrap().total_micros, 0);
    let cpu = c.cpu.unwrap();
    // cgroup2's cpu.stat (620016 µs): the same charge as cpuacct.usage's 620_016_202 ns,
    // which is no longer read for a cgroup below the root.
    assert_eq!(cpu.usage_core_nano_seconds, Some(620_016_000));
    assert_eq!(cpu.cfs_throttled_nano_seconds, Some(592_502_854));
    assert_eq!(cpu.shares, Some(1024));
    // v1 swap: usage from total_swap, availability not derivable from memsw.
    let swap = c.swap.unwrap();
    assert_eq!(
        (swap.swap_usage_bytes, swap.swap_available_bytes),
        (Some(0), None)
    );
}
