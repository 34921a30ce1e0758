//! Tests of the reader against fixture trees.

use std::collections::BTreeMap;

use super::*;
use crate::cgroupfs::parse::{Io, Limit, PsiData};

/// Real files of one cgroup on our 6.18 hybrid host (memory/cpu/cpuacct/pids/blkio in v1,
/// cgroup2 with no controllers): a process touched 20 MiB, wrote an 8 MiB file and spun for
/// 1 s under a 64 MiB limit and a 50 ms/100 ms quota.
fn hybrid_reader() -> CgroupReader {
    let base = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/hybrid-v1-6.18"
    ));
    let v1: BTreeMap<String, PathBuf> = ["memory", "cpu", "cpuacct", "pids", "blkio"]
        .iter()
        .map(|c| (c.to_string(), base.join(c)))
        .collect();
    let mounts = CgroupMounts {
        v2: Some(base.join("unified")),
        v1,
    };
    CgroupReader::new(base.join("unified"), &mounts)
}

#[test]
fn hybrid_host_takes_each_controller_from_its_mount() {
    let r = hybrid_reader().read("/captest").unwrap();
    // CPU time from cgroup2's cpu.stat only (cpuacct.usage says 620_016_202 ns, cpuacct.stat
    // 55 and 6 ticks of the same time: never read), throttling and limits from v1 cpu.
    assert_eq!(r.cpu_source, Source::V2);
    assert_eq!(r.cpu.usage_ns, Some(620_016_000));
    assert_eq!(r.cpu.user_ns, Some(555_598_000));
    assert_eq!(r.cpu.system_ns, Some(64_417_000));
    assert_eq!(r.cpu.nr_periods, Some(15));
    assert_eq!(r.cpu.nr_throttled, Some(12));
    assert_eq!(r.cpu.throttled_ns, Some(592_502_854));
    assert_eq!(r.cpu.quota_us, Some(50_000));
    assert_eq!(r.cpu.period_us, Some(100_000));
    assert_eq!(r.cpu.shares, Some(1024));

    assert_eq!(r.memory_source, Source::V1);
    let m = r.memory.unwrap();
    assert_eq!(m.usage_bytes, Some(9_797_632));
    assert_eq!(m.limit, Some(Limit::Value(67_108_864)));
    assert_eq!(m.stat.inactive_file, Some(9_121_792));
    assert_eq!(m.stat.pgfault, Some(16_570));
    assert_eq!(m.swap_bytes, Some(0));
    assert_eq!(m.swap_limit.and_then(Limit::bytes), None);
    assert_eq!(m.oom_kill_events, Some(0));

    let pids = r.pids.unwrap();
    assert_eq!((pids.current, pids.max), (Some(0), Some(Limit::Max)));
    assert_eq!(r.io, Some(Io::default()));

    // PSI comes from cgroup2 even on a hybrid host.
    let cpu_psi = r.cpu_psi.unwrap();
    assert_eq!(
        cpu_psi.some,
        Some(PsiData {
            avg10: 4.15,
            avg60: 0.88,
            avg300: 0.18,
            total_us: 578_879
        })
    );
    assert_eq!(r.io_psi.unwrap().full.unwrap().total_us, 4031);
    assert_eq!((r.malformed, r.read_errors), (0, 0));
}

#[test]
fn a_cgroup_only_in_v2_falls_back_to_v2_files() {
    // The root exists in every hierarchy; a v2-only child must not borrow v1 numbers.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("only-v2")).unwrap();
    std::fs::write(dir.path().join("only-v2/cpu.stat"), "usage_usec 7\n").unwrap();
    let mut mounts = CgroupMounts {
        v2: Some(dir.path().into()),
        ..CgroupMounts::default()
    };
    mounts
        .v1
        .insert("memory".into(), dir.path().join("no-such-v1"));
    let r = CgroupReader::new(dir.path().into(), &mounts)
        .read("/only-v2")
        .unwrap();
    assert_eq!(r.cpu_source, Source::V2);
    assert_eq!(r.cpu.usage_ns, Some(7000));
    assert_eq!(r.memory, None);
    assert_eq!(r.cpu_psi, None);
}

#[test]
fn removed_cgroup_is_vanished() {
    assert!(hybrid_reader().read("/no-such-cgroup").is_err());
}
