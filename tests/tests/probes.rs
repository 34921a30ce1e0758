//! Root + BPF: the probe suite (page faults, run-queue latency, OOM kills, cgroup lifecycle)
//! streamed over gRPC, each compared with the kernel's own counters.

use std::{
    fs,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use collector::cgroupfs::CgroupMounts;
use collector_integration_tests::{
    TestCgroup, finish, process_faults, relative_diff, spawn_until_ready, uncached_file,
    wait_cpu_ns,
    watch::{View, catch_up, next, start_watching_with},
};
use tonic::Streaming;

type Stream = Streaming<collector::proto::WatchResponse>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minor_faults_match_the_process() {
    const MIB: u64 = 64;
    let test = "minor_faults_match_the_process";
    let needs = ["page_faults_minor", "page_faults_major"];
    let Some((running, mut stream, mut view)) =
        start_watching_with(test, 200, Duration::ZERO, &needs).await
    else {
        return;
    };
    let cgroup = TestCgroup::create("minflt").unwrap();
    let child = spawn_until_ready(
        &cgroup,
        Command::new(env!("CARGO_BIN_EXE_hold")).args([MIB.to_string(), "0".into()]),
    );
    let (minflt, majflt) = process_faults(child.id()).unwrap();
    catch_up(&mut stream, &mut view, Duration::from_millis(100)).await;
    let faults = view.cgroups[&cgroup.id()].ebpf_faults.expect("ebpf_faults");
    eprintln!(
        "minor: eBPF {} vs /proc minflt {minflt}; major: eBPF {} vs majflt {majflt}",
        faults.minor, faults.major
    );
    let pages = (MIB << 20) / 4096;
    assert!(
        faults.minor >= pages,
        "{} < {pages} pages touched",
        faults.minor
    );
    let diff = relative_diff(faults.minor, minflt, minflt);
    assert!(diff < 0.02, "minor faults off by {:.2} %", diff * 100.0);
    finish(child);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn major_faults_match_the_process() {
    const MIB: usize = 16;
    let test = "major_faults_match_the_process";
    let needs = ["page_faults_major"];
    let Some((running, mut stream, mut view)) =
        start_watching_with(test, 200, Duration::ZERO, &needs).await
    else {
        return;
    };
    let path = uncached_file(env!("CARGO_TARGET_TMPDIR"), "major-faults", MIB).unwrap();
    let cgroup = TestCgroup::create("majflt").unwrap();
    let child = spawn_until_ready(
        &cgroup,
        Command::new(env!("CARGO_BIN_EXE_touch_file")).arg(&path),
    );
    let (_, majflt) = process_faults(child.id()).unwrap();
    catch_up(&mut stream, &mut view, Duration::from_millis(100)).await;
    let faults = view.cgroups[&cgroup.id()].ebpf_faults.expect("ebpf_faults");
    eprintln!("major: eBPF {} vs /proc majflt {majflt}", faults.major);
    assert!(
        majflt > 0,
        "the file was still cached: no major faults to compare"
    );
    let diff = relative_diff(faults.major, majflt, majflt);
    assert!(diff < 0.02, "major faults off by {:.2} %", diff * 100.0);
    finish(child);
    let _ = fs::remove_file(&path);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_cgroup_leaves_a_terminated_record_with_its_cpu_time() {
    let test = "a_short_lived_cgroup_leaves_a_terminated_record_with_its_cpu_time";
    let needs = ["sched_switch", "cgroup_mkdir", "cgroup_rmdir"];
    // Samples 3 s apart: the cgroup lives ~0.35 s, almost surely between two of them.
    let Some((running, mut stream, mut view)) =
        start_watching_with(test, 3000, Duration::ZERO, &needs).await
    else {
        return;
    };
    let cgroup = TestCgroup::create("short").unwrap();
    let (id, path) = (cgroup.id(), cgroup.relative.clone());
    let burner = cgroup
        .spawn(Command::new(env!("CARGO_BIN_EXE_burn")).arg("300"))
        .unwrap();
    let used = tokio::task::spawn_blocking(move || wait_cpu_ns(burner))
        .await
        .unwrap()
        .unwrap();
    drop(cgroup);
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        if let Some(t) = view.terminated.iter().find(|t| t.cgroup_id == id) {
            break t.clone();
        }
        assert!(Instant::now() < deadline, "no terminated record for {path}");
        next(&mut stream, &mut view).await;
    };
    let cpu = record.ebpf_cpu_nano_seconds.expect("final CPU time");
    eprintln!(
        "terminated {}: eBPF {cpu} ns, process used {used} ns; seen live: {}",
        record.path,
        view.removed.contains(&id)
    );
    assert_eq!(record.path, path);
    assert!(
        cpu * 100 >= used * 95,
        "terminated record has {cpu} of {used} ns"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_is_reported_with_pid_comm_and_cgroup() {
    let test = "oom_kill_is_reported_with_pid_comm_and_cgroup";
    let needs = ["oom_mark_victim"];
    let Some((running, mut stream, mut view)) =
        start_watching_with(test, 200, Duration::ZERO, &needs).await
    else {
        return;
    };
    const LIMIT: &str = "33554432"; // 32 MiB
    let mut cgroup = TestCgroup::create("oom").unwrap();
    // The memory controller wherever it is mounted: v1 on hybrid hosts, cgroup2 otherwise.
    match CgroupMounts::discover().unwrap().v1.get("memory") {
        Some(v1) => {
            cgroup = cgroup.with_v1(v1).unwrap();
            let dir = cgroup.v1_path(v1).unwrap();
            fs::write(dir.join("memory.limit_in_bytes"), LIMIT).unwrap();
        }
        None => {
            fs::write(cgroup.path.join("memory.max"), LIMIT).unwrap();
            let _ = fs::write(cgroup.path.join("memory.swap.max"), "0");
        }
    }
    let mut child = cgroup
        .spawn(
            Command::new(env!("CARGO_BIN_EXE_hold"))
                .args(["256", "0"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null()),
        )
        .unwrap();
    let pid = child.id();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !status.success(),
        "the workload fit in the limit: {status:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let kill = loop {
        if let Some(k) = view.oom_kills.iter().find(|k| k.pid == pid) {
            break k.clone();
        }
        assert!(Instant::now() < deadline, "no OOM kill event for pid {pid}");
        next(&mut stream, &mut view).await;
    };
    eprintln!("OOM kill: {kill:?}");
    assert_eq!(kill.comm, "hold");
    assert_eq!(
        kill.cgroup_id,
        cgroup.id(),
        "attributed to its cgroup2 cgroup"
    );
    assert_eq!(kill.cgroup_path, cgroup.relative);
    catch_up(&mut stream, &mut view, Duration::from_millis(100)).await;
    let record = &view.cgroups[&cgroup.id()];
    assert_eq!(record.ebpf_oom_kills, Some(1));
    // The kernel's own count agrees: memory.events (v2) or memory.oom_control (v1) oom_kill.
    let memory = record.memory.as_ref().expect("memory stats");
    assert_eq!(memory.oom_kill_events, Some(1), "cgroupfs oom_kill");
    drop(cgroup);
    running.stop().await.unwrap();
}

/// (CPU, fault, run-queue) map entries as the collector reports them.
async fn map_entries(stream: &mut Stream, view: &mut View) -> (u64, u64, u64) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let stats = msg.collector.clone();
        view.apply(msg);
        if let Some(s) = stats {
            return (
                s.ebpf_map_entries,
                s.ebpf_fault_map_entries,
                s.ebpf_runq_map_entries,
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_entries_return_to_their_level_after_cgroup_churn() {
    let test = "map_entries_return_to_their_level_after_cgroup_churn";
    let needs = [
        "sched_switch",
        "page_faults_minor",
        "runq_switch",
        "cgroup_rmdir",
    ];
    let Some((running, mut stream, mut view)) =
        start_watching_with(test, 200, Duration::ZERO, &needs).await
    else {
        return;
    };
    next(&mut stream, &mut view).await;
    let before = map_entries(&mut stream, &mut view).await;
    let mut peak = before;
    for i in 0..200 {
        let cgroup = TestCgroup::create(&format!("churn{i}")).unwrap();
        let child = cgroup.spawn(&mut Command::new("true")).unwrap();
        let _ = wait_cpu_ns(child);
        if i % 50 == 0 {
            let now = map_entries(&mut stream, &mut view).await;
            peak = (peak.0.max(now.0), peak.1.max(now.1), peak.2.max(now.2));
        }
    }
    // The stream queued updates while the churn ran (slow machines queue many): skip to the
    // present before judging. Removed cgroups are retired on the next pass, ids never seen by a
    // pass after UNKNOWN_ID_GRACE_PASSES; allow a few passes for stragglers.
    catch_up(&mut stream, &mut view, Duration::ZERO).await;
    let mut after = map_entries(&mut stream, &mut view).await;
    for _ in 0..10 {
        after = map_entries(&mut stream, &mut view).await;
        if after.0 <= before.0 + 2 && after.1 <= before.1 + 2 && after.2 <= before.2 + 2 {
            break;
        }
    }
    eprintln!("map entries (cpu, faults, runq): before {before:?}, peak {peak:?}, after {after:?}");
    assert!(peak.0 > before.0, "the churn never showed in the CPU map");
    assert!(after.0 <= before.0 + 2, "CPU map: {before:?} -> {after:?}");
    assert!(
        after.1 <= before.1 + 2,
        "fault map: {before:?} -> {after:?}"
    );
    assert!(
        after.2 <= before.2 + 2,
        "run-queue map: {before:?} -> {after:?}"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_discover_cgroups_between_walks() {
    let test = "lifecycle_events_discover_cgroups_between_walks";
    let needs = ["sched_switch", "cgroup_mkdir", "cgroup_rmdir"];
    // Full reads (and walks) a minute apart: only the events can show these changes.
    let Some((running, mut stream, mut view)) =
        start_watching_with(test, 200, Duration::from_secs(60), &needs).await
    else {
        return;
    };
    next(&mut stream, &mut view).await;
    let cgroup = TestCgroup::create("events").unwrap();
    let id = cgroup.id();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !view.cgroups.contains_key(&id) {
        assert!(
            Instant::now() < deadline,
            "created cgroup not discovered from its event"
        );
        next(&mut stream, &mut view).await;
    }
    assert_eq!(view.cgroups[&id].path, cgroup.relative);
    drop(cgroup);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !view.removed.contains(&id) {
        assert!(Instant::now() < deadline, "removal not seen from its event");
        next(&mut stream, &mut view).await;
    }
    assert!(view.terminated.iter().any(|t| t.cgroup_id == id));
    running.stop().await.unwrap();
}
