//! Root: a collector that may not load BPF still serves cgroupfs and says why per probe.

use collector::{
    cgroupfs::CgroupMounts,
    probes::{ProbeConfig, ProbeState, Probes},
    sampler::Sampler,
};
use collector_integration_tests::{can_run, cgroup2_mount, drop_thread_capabilities};

#[test]
fn without_bpf_privileges_probes_are_unsupported_and_cgroupfs_still_works() {
    if !can_run("without_bpf_privileges_probes_are_unsupported_and_cgroupfs_still_works") {
        return;
    }
    let mount = cgroup2_mount().unwrap();
    let (statuses, sample) = std::thread::spawn(move || {
        drop_thread_capabilities().expect("capset");
        let probes = Probes::load(&ProbeConfig::default());
        let statuses = probes.statuses();
        let mounts = CgroupMounts::discover().unwrap();
        let sample = Sampler::new(mount, &mounts, probes).sample();
        (statuses, sample)
    })
    .join()
    .unwrap();

    eprintln!("without privileges: {}", statuses[0]);
    // Every program of every family says why it is not running.
    assert_eq!(statuses.len(), 4, "{statuses:?}");
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
