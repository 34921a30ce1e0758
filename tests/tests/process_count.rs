//! Root: `cgroup.procs` of a cgroup with more processes than one kernel page of PIDs holds
//! (~500 to ~580) is read whole. The kernel hands out that file a page per `read`; a reader
//! that stops at the first short read counts the first page only.

use std::{fs, time::Duration};

use collector_integration_tests::{TestCgroup, Workload, can_run, watch::cgroupfs_record};

const PROCESSES: u64 = 1_500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cgroup_with_1500_processes_counts_1500() {
    if !can_run("a_cgroup_with_1500_processes_counts_1500") {
        return;
    }
    let cgroup = TestCgroup::create("procs").unwrap();
    // One shell and its sleeping children, all born inside the cgroup.
    // (Dropping the cgroup at the end kills them all.)
    let _shell = cgroup
        .start(&Workload::new("sh").args([
            "-c",
            &format!("i=1; while [ $i -lt {PROCESSES} ]; do sleep 600 & i=$((i+1)); done; wait"),
        ]))
        .unwrap();
    // Count with a reader that goes to EOF (std reads until read returns 0).
    let listed = || {
        fs::read_to_string(cgroup.path.join("cgroup.procs"))
            .unwrap()
            .lines()
            .count() as u64
    };
    // A deadline on progress, not on the whole: 1,500 forks took over 60 s in a TCG guest whose
    // host was busy, but a shell that still forks is not stuck.
    let (mut seen, mut progress) = (0, std::time::Instant::now());
    loop {
        let now = listed();
        if now >= PROCESSES {
            break;
        }
        if now > seen {
            (seen, progress) = (now, std::time::Instant::now());
        }
        assert!(
            progress.elapsed() < Duration::from_secs(60),
            "only {now} processes started, none in the last 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(listed(), PROCESSES);
    let text = fs::read_to_string(cgroup.path.join("cgroup.procs")).unwrap();
    assert!(
        text.len() > 4096,
        "the list ({} bytes) must span more than one page for this test to mean anything",
        text.len()
    );

    let (running, record) = cgroupfs_record(&cgroup.relative).await;
    let count = record.process_stats.and_then(|p| p.process_count);
    assert_eq!(count, Some(PROCESSES), "cgroup.procs read whole");
    running.stop().await.unwrap();
}
