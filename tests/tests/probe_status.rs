//! Root: a collector that may not load BPF still serves cgroupfs and says why per probe.

use collector::{
    cgroupfs::CgroupMounts,
    probes::{ProbeConfig, ProbeState, Probes},
    sampler::Sampler,
};
use collector_integration_tests::{
    can_run, cap, cgroup2_mount, drop_thread_capabilities, keep_thread_capabilities,
};

#[test]
fn without_bpf_privileges_probes_are_unsupported_and_cgroupfs_still_works() {
    if !can_run("without_bpf_privileges_probes_are_unsupported_and_cgroupfs_still_works") {
        return;
    }
    let mount = cgroup2_mount().unwrap();
    let (statuses, sample) = std::thread::spawn(move || {
        drop_thread_capabilities().expect("capset");
        let probes = Probes::load(&ProbeConfig {
            cgroup2_root: Some(mount.clone()),
            ..ProbeConfig::default()
        });
        let statuses = probes.statuses();
        let mounts = CgroupMounts::discover().unwrap();
        let sample = Sampler::new(mount, &mounts, probes).sample();
        (statuses, sample)
    })
    .join()
    .unwrap();

    eprintln!("without privileges: {}", statuses[0]);
    // Every program of every family says why it is not running.
    assert_eq!(statuses.len(), 6, "{statuses:?}");
    assert_eq!(statuses[0].name, "sched_switch");
    for status in &statuses {
        match &status.state {
            ProbeState::Unsupported(why) => {
                assert!(why.contains("not permitted"), "{}: {why}", status.name)
            }
            other => panic!("{}: expected Unsupported, got {other:?}", status.name),
        }
    }
    let sample = sample.expect("cgroupfs pass without privileges");
    let root = sample.cgroups.iter().find(|c| &*c.path == "/").unwrap();
    assert!(root.reading.cpu.usage_ns.unwrap() > 0);
    assert!(
        sample
            .cgroups
            .iter()
            .all(|c| c.ebpf == collector::sampler::EbpfValues::default())
    );
}

/// The DaemonSet's capabilities: BPF, PERFMON and SYS_RESOURCE load every tracing family; the
/// network family needs NET_ADMIN too, and says so when it is missing.
#[test]
fn the_manifests_capabilities_load_every_family_and_net_needs_net_admin() {
    if !can_run("the_manifests_capabilities_load_every_family_and_net_needs_net_admin") {
        return;
    }
    let mount = cgroup2_mount().unwrap();
    let tracing = [cap::BPF, cap::PERFMON, cap::SYS_RESOURCE];
    let with = |caps: Vec<u32>| {
        let mount = mount.clone();
        std::thread::spawn(move || {
            keep_thread_capabilities(&caps).expect("capset");
            Probes::load(&ProbeConfig {
                cgroup2_root: Some(mount),
                ..ProbeConfig::default()
            })
            .statuses()
        })
        .join()
        .unwrap()
    };
    let is_net = |name: &str| name.starts_with("net_");

    let without_net_admin = with(tracing.to_vec());
    for status in &without_net_admin {
        match (&status.state, is_net(status.name)) {
            (ProbeState::Unsupported(why), true) => {
                assert!(why.contains("CAP_NET_ADMIN"), "{}: {why}", status.name)
            }
            (ProbeState::Active { .. }, false) => {}
            (other, _) => panic!("{}: {other:?}", status.name),
        }
    }
    let all = with([&tracing[..], &[cap::NET_ADMIN]].concat());
    assert_eq!(all.len(), 6, "{all:?}");
    for status in &all {
        assert!(status.is_active(), "{status:?}");
    }
}
