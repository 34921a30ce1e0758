//! Root + BPF on pure cgroup v2 (the VM suite; hybrid hosts skip with a message): the memory
//! controller's own files on live cgroup2 cgroups against the eBPF fault probes and against
//! kubelet's working-set and available formulas.

use std::{fs, time::Duration};

use collector::proto::{EbpfFaults, WatchResponse};
use collector_integration_tests::{
    TestCgroup, Workload, can_run_v2, flat_key, read_u64, relative_diff, uncached_file,
    watch::{View, catch_up, cgroupfs_record, start_watching_with},
};
use tonic::Streaming;

const PAGE: u64 = 4096;

/// A key of the cgroup's memory.stat, read now.
fn memory_stat(cgroup: &TestCgroup, key: &str) -> u64 {
    flat_key(
        &fs::read_to_string(cgroup.path.join("memory.stat")).unwrap(),
        key,
    )
}

/// memory.stat's fault counters.
#[derive(Debug)]
struct MemoryStatFaults {
    pgfault: u64,
    pgmajfault: u64,
}

/// The cgroup's memory.stat faults and the collector's eBPF faults, once the stream has a
/// sample taken after now; also checks the collector's cgroupfs fields against the file.
async fn faults_now(
    stream: &mut Streaming<WatchResponse>,
    view: &mut View,
    cgroup: &TestCgroup,
) -> (MemoryStatFaults, EbpfFaults) {
    catch_up(stream, view, Duration::from_millis(100)).await;
    let file = MemoryStatFaults {
        pgfault: memory_stat(cgroup, "pgfault"),
        pgmajfault: memory_stat(cgroup, "pgmajfault"),
    };
    let record = &view.cgroups[&cgroup.id()];
    let ebpf = record.ebpf_faults.expect("ebpf_faults");
    let memory = record.memory.as_ref().expect("memory stats");
    eprintln!("memory.stat {file:?}; eBPF {ebpf:?}");
    // Nothing ran in the cgroup since the sample: its cgroupfs fields are the file.
    assert_eq!(memory.page_faults, Some(file.pgfault));
    assert_eq!(memory.major_page_faults, Some(file.pgmajfault));
    (file, ebpf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebpf_faults_match_memory_stat_pgfault_and_pgmajfault() {
    const ANON_MIB: u64 = 32;
    const FILE_MIB: usize = 16;
    let test = "ebpf_faults_match_memory_stat_pgfault_and_pgmajfault";
    if !can_run_v2(test) {
        return;
    }
    let needs = ["sched_switch"];
    let Some((running, mut stream, mut view)) =
        start_watching_with(test, 200, Duration::ZERO, &needs).await
    else {
        return;
    };
    let path = uncached_file(env!("CARGO_TARGET_TMPDIR"), "v2-faults", FILE_MIB).unwrap();
    let cgroup = TestCgroup::create("v2faults").unwrap();

    // Minor faults: fresh anonymous memory. The process ends; the cgroup's counters stay.
    cgroup
        .start_until_ready(
            &Workload::new(env!("CARGO_BIN_EXE_hold")).args([ANON_MIB.to_string(), "0".into()]),
        )
        .finish()
        .unwrap();
    let (anon, ebpf_anon) = faults_now(&mut stream, &mut view, &cgroup).await;
    assert!(
        anon.pgfault >= (ANON_MIB << 20) / PAGE,
        "{} faults for {ANON_MIB} MiB touched",
        anon.pgfault
    );
    // The task's counters and memory.stat are both counted in handle_mm_fault, but pgfault at
    // every attempt and the task's at completion (a retried fault counts once there): a
    // tolerance, not equality.
    let diff = relative_diff(
        ebpf_anon.minor + ebpf_anon.major,
        anon.pgfault,
        anon.pgfault,
    );
    assert!(
        diff < 0.02,
        "eBPF faults off pgfault by {:.2} %",
        diff * 100.0
    );

    // Major faults: every page of an uncached file.
    cgroup
        .start_until_ready(&Workload::new(env!("CARGO_BIN_EXE_touch_file")).arg(&path))
        .finish()
        .unwrap();
    let (all, ebpf_all) = faults_now(&mut stream, &mut view, &cgroup).await;
    assert!(
        all.pgmajfault > 0,
        "the file was still cached: no major faults"
    );
    let diff = relative_diff(ebpf_all.major, all.pgmajfault, all.pgmajfault);
    assert!(
        diff < 0.02,
        "eBPF major faults off pgmajfault by {:.2} %",
        diff * 100.0
    );
    // Before Linux 6.4 pgfault also counted a fault's retries: a major fault gives up the mmap
    // lock for its read and is retried, so it counts twice there (6.1: pgfault = minor +
    // 2 x major), once from 6.4 on. The probes count completed faults (the task's own counters)
    // on every kernel.
    let (minor, major) = (
        ebpf_all.minor - ebpf_anon.minor,
        ebpf_all.major - ebpf_anon.major,
    );
    let pgfault = all.pgfault - anon.pgfault;
    assert!(
        pgfault * 100 >= (minor + major) * 98 && pgfault * 100 <= (minor + 2 * major) * 102,
        "file phase: pgfault {pgfault} outside [{}, {}] from eBPF minor {minor} major {major}",
        minor + major,
        minor + 2 * major
    );
    let _ = fs::remove_file(&path);
    drop(cgroup);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_set_and_available_follow_kubelets_formula_under_memory_max() {
    const LIMIT: u64 = 256 << 20;
    const ANON_MIB: u64 = 64;
    const FILE_MIB: usize = 32;
    let test = "working_set_and_available_follow_kubelets_formula_under_memory_max";
    if !can_run_v2(test) {
        return;
    }
    let path = uncached_file(env!("CARGO_TARGET_TMPDIR"), "v2-cache", FILE_MIB).unwrap();
    let cgroup = TestCgroup::create("v2memory").unwrap();
    fs::write(cgroup.path.join("memory.max"), LIMIT.to_string()).unwrap();
    // Anonymous memory held, and page cache read in by the cgroup (charged to it, on the
    // inactive list after one touch): usage counts both, the working set only the first.
    let hold = cgroup.start_until_ready(
        &Workload::new(env!("CARGO_BIN_EXE_hold")).args([ANON_MIB.to_string(), "0".into()]),
    );
    cgroup
        .start_until_ready(&Workload::new(env!("CARGO_BIN_EXE_touch_file")).arg(&path))
        .finish()
        .unwrap();

    let (running, record) = cgroupfs_record(&cgroup.relative).await;
    let current = read_u64(&cgroup.path.join("memory.current"));
    let inactive_file = memory_stat(&cgroup, "inactive_file");
    let anon = memory_stat(&cgroup, "anon");
    let file = memory_stat(&cgroup, "file");
    let memory = record.memory.as_ref().expect("memory stats");
    eprintln!(
        "memory.current {current}, inactive_file {inactive_file}, anon {anon}, file {file}; \
         collector {memory:?}"
    );
    assert!(
        inactive_file >= (FILE_MIB as u64 / 2) << 20,
        "the file's page cache is not on the inactive list: {inactive_file}"
    );
    assert_eq!(memory.limit_bytes, Some(LIMIT), "limit from memory.max");
    let usage = memory.usage_bytes.expect("usage_bytes");
    let working_set = memory.working_set_bytes.expect("working_set_bytes");
    let available = memory
        .available_bytes
        .expect("available_bytes under a limit");
    // The workload is idle, so the files read just after the sample still match it closely.
    assert!(relative_diff(usage, current, current) < 0.02);
    let expected_ws = current - inactive_file;
    assert!(
        relative_diff(working_set, expected_ws, expected_ws) < 0.02,
        "working set {working_set} vs memory.current - inactive_file {expected_ws}"
    );
    assert!(
        working_set < usage,
        "page cache left out of the working set"
    );
    // kubelet: available = limit - working set, from one reading.
    assert_eq!(available, LIMIT - working_set);
    let rss = memory.rss_bytes.expect("rss_bytes");
    assert!(rss >= ANON_MIB << 20 && relative_diff(rss, anon, anon) < 0.02);
    let cache = memory.cache_bytes.expect("cache_bytes");
    assert!(relative_diff(cache, file, file) < 0.02);

    hold.finish().unwrap();
    let _ = fs::remove_file(&path);
    running.stop().await.unwrap();
}
