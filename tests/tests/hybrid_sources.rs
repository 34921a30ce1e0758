//! Root: each controller is read from the hierarchy it is mounted in. On our hybrid hosts a
//! process sits in a v1 memory cgroup and a cgroup2 cgroup at once; its record must carry real
//! memory numbers from v1 and CPU time from cgroup2. On a pure-v2 node both come from cgroup2,
//! and the same assertions hold against the v2 files.

use std::{fs, path::Path};

use collector::cgroupfs::CgroupMounts;
use collector_integration_tests::{
    TestCgroup, Workload, can_run, flat_key, read_u64, relative_diff, watch::cgroupfs_record,
};

const TOUCH_MIB: u64 = 64;
const BURN_MS: u64 = 700;
const PAGE: u64 = 4096;

/// The files memory numbers come from, in the hierarchy that has the memory controller.
struct MemoryFiles {
    usage: u64,
    rss: u64,
    inactive_file: u64,
    pgfault: u64,
}

impl MemoryFiles {
    fn v1(dir: &Path) -> Self {
        let stat = fs::read_to_string(dir.join("memory.stat")).unwrap();
        Self {
            usage: read_u64(&dir.join("memory.usage_in_bytes")),
            rss: flat_key(&stat, "total_rss"),
            inactive_file: flat_key(&stat, "total_inactive_file"),
            pgfault: flat_key(&stat, "total_pgfault"),
        }
    }

    fn v2(dir: &Path) -> Self {
        let stat = fs::read_to_string(dir.join("memory.stat")).unwrap();
        Self {
            usage: read_u64(&dir.join("memory.current")),
            rss: flat_key(&stat, "anon"),
            inactive_file: flat_key(&stat, "inactive_file"),
            pgfault: flat_key(&stat, "pgfault"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_from_its_own_hierarchy_and_cpu_from_cgroup2() {
    let test = "memory_from_its_own_hierarchy_and_cpu_from_cgroup2";
    if !can_run(test) {
        return;
    }
    let mounts = CgroupMounts::discover().unwrap();
    let v1_memory = mounts.v1.get("memory").cloned();
    let mut cgroup = TestCgroup::create("hybrid").unwrap();
    if let Some(mount) = &v1_memory {
        cgroup = cgroup.with_v1(mount).unwrap();
    } else {
        eprintln!("{test}: no v1 memory controller; memory comes from cgroup2 here");
    }
    let mut child = cgroup
        .start(
            &Workload::new(env!("CARGO_BIN_EXE_hold"))
                .args([TOUCH_MIB.to_string(), BURN_MS.to_string()])
                .piped(),
        )
        .unwrap();
    child.ready().unwrap();

    let (running, record) = cgroupfs_record(&cgroup.relative).await;

    // The workload is idle now, so the files read after the sample still match it closely.
    let truth = match cgroup.v1_path(v1_memory.as_deref().unwrap_or(Path::new("/-"))) {
        Some(dir) => MemoryFiles::v1(dir),
        None => MemoryFiles::v2(&cgroup.path),
    };
    let memory = record.memory.as_ref().expect("memory stats present");
    let usage = memory.usage_bytes.expect("usage_bytes");
    let rss = memory.rss_bytes.expect("rss_bytes");
    let working_set = memory.working_set_bytes.expect("working_set_bytes");
    eprintln!(
        "usage {usage} (file {}), rss {rss} (file {}), working set {working_set}, faults {:?}",
        truth.usage, truth.rss, memory.page_faults
    );
    assert!(
        rss >= TOUCH_MIB << 20,
        "rss {rss} below the {TOUCH_MIB} MiB touched"
    );
    assert!(relative_diff(usage, truth.usage, truth.usage) < 0.02);
    assert!(relative_diff(rss, truth.rss, truth.rss) < 0.02);
    let expected_ws = truth.usage.saturating_sub(truth.inactive_file);
    assert!(relative_diff(working_set, expected_ws, expected_ws) < 0.02);
    let faults = memory.page_faults.expect("page_faults");
    assert!(faults >= (TOUCH_MIB << 20) / PAGE, "{faults} faults");
    assert!(faults <= truth.pgfault);

    let cpu = record
        .cgroupfs_cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds)
        .expect("cgroup2 cpu.stat usage");
    let kernel_cpu = cgroup.cpu_stat_usage_ns().unwrap();
    eprintln!("cpu {cpu} ns, cgroup2 cpu.stat {kernel_cpu} ns");
    // The workload burned BURN_MS of CPU time (not wall time) before it said ready.
    assert!(
        cpu >= BURN_MS * 1_000_000,
        "cpu {cpu} ns for a {BURN_MS} ms burn"
    );
    // Idle since: the collector's reading is the file's.
    assert_eq!(cpu, kernel_cpu);
    let procs = record.process_stats.as_ref().and_then(|p| p.process_count);
    assert_eq!(procs, Some(1));

    child.finish().unwrap();
    running.stop().await.unwrap();
}
