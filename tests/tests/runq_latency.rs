//! Root + BPF: run-queue latency per cgroup. Alone in its own test binary: CPU-pinned hogs and
//! sleepers must not share the machine with other tests' workloads.
//!
//! Two checks. Totals: the waits and wait time the collector reports for a cgroup equal the sum
//! of its tasks' own `/proc/<pid>/schedstat` (run_delay, pcount) — the same kernel counters, so
//! they agree within 2 % however busy the machine is. Shape: hogs sharing a CPU wait whole
//! scheduler slices, a real-time sleeper hardly waits at all, and the histograms say so.

use std::time::{Duration, Instant};

use collector::proto::RunqWindow;
use collector_integration_tests::{
    TestCgroup, Workload, all_cpus, pin_this_process_to_cpu, pin_this_process_to_cpus,
    relative_diff, schedstat,
    watch::{View, catch_up, next, start_watching_with},
};

/// Collects a cgroup's run-queue window from the latest message, when it had waits.
fn collect(windows: &mut Vec<RunqWindow>, view: &View, id: u64) {
    if let Some(w) = view
        .cgroups
        .get(&id)
        .and_then(|c| c.runq_latency.as_ref()?.window)
        .filter(|w| w.waits > 0)
    {
        windows.push(w);
    }
}

fn two_cpus(test: &str) -> bool {
    // The machine's CPUs, not this process's affinity (another test of this binary may have
    // pinned it).
    // SAFETY: no arguments, no preconditions.
    if unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } < 2 {
        collector_integration_tests::skip(test, "needs two CPUs");
        return false;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runq_totals_match_the_tasks_schedstat() {
    let test = "runq_totals_match_the_tasks_schedstat";
    if !two_cpus(test) {
        return;
    }
    let Some((running, mut stream, mut view)) =
        start_watching_with(test, 250, Duration::ZERO, &["sched_switch"]).await
    else {
        return;
    };
    let cgroup = TestCgroup::create("waiters").unwrap();
    // Two workloads that burn, then block on stdin with their counters final: sharing one CPU,
    // each waits for the other at every slice.
    let hold = || {
        Workload::new(env!("CARGO_BIN_EXE_hold"))
            .args(["1", "700"])
            .on_cpu(1)
            .piped()
    };
    let (mut a, mut b) = (
        cgroup.start(&hold()).unwrap(),
        cgroup.start(&hold()).unwrap(),
    );
    let (a, b) = tokio::task::spawn_blocking(move || {
        a.ready().unwrap();
        b.ready().unwrap();
        (a, b)
    })
    .await
    .unwrap();
    // Both block on stdin now: their counters are final, and their last switch-out charged
    // the collector's.
    let (mut waits, mut wait_ns) = (0, 0);
    for p in [&a, &b] {
        let (_, delay, count) = schedstat(p.id()).unwrap();
        waits += count;
        wait_ns += delay;
    }
    catch_up(&mut stream, &mut view, Duration::from_millis(100)).await;
    let runq = view.cgroups[&cgroup.id()]
        .runq_latency
        .clone()
        .expect("runq_latency");
    eprintln!(
        "collector: {} waits, {} ns; tasks' schedstat: {waits} arrivals, {wait_ns} ns",
        runq.waits, runq.total_wait_nano_seconds
    );
    assert!(wait_ns > 100_000_000, "the two barely waited: {wait_ns} ns");
    assert!(
        relative_diff(runq.total_wait_nano_seconds, wait_ns, wait_ns) < 0.02,
        "wait time {} ns vs schedstat {wait_ns} ns",
        runq.total_wait_nano_seconds
    );
    assert!(
        relative_diff(runq.waits, waits, waits) < 0.02,
        "waits {} vs schedstat {waits}",
        runq.waits
    );
    a.finish().unwrap();
    b.finish().unwrap();
    drop(cgroup);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runq_latency_of_hogs_sharing_a_cpu_and_of_a_realtime_sleeper() {
    let test = "runq_latency_of_hogs_sharing_a_cpu_and_of_a_realtime_sleeper";
    if !two_cpus(test) {
        return;
    }
    let Some((running, mut stream, mut view)) =
        start_watching_with(test, 250, Duration::ZERO, &["sched_switch"]).await
    else {
        return;
    };
    // The collector and this test share CPU 0 with the hogs; CPU 1 is the sleeper's. A
    // real-time sleeper preempts whatever else runs there when it wakes (another test's
    // workload, a compiler on a busy machine), so its waits measure the scheduler, not the load.
    pin_this_process_to_cpu(0).unwrap();
    let hogs = TestCgroup::create("hogs").unwrap();
    let sleeper = TestCgroup::create("sleeper").unwrap();
    let burn = Workload::new(env!("CARGO_BIN_EXE_burn"))
        .args(["--wall", "2500"])
        .on_cpu(0);
    let mut a = hogs.start(&burn).unwrap();
    let mut b = hogs.start(&burn).unwrap();
    let mut c = sleeper
        .start(
            &Workload::new(env!("CARGO_BIN_EXE_naps"))
                .args(["2500", "5000"])
                .on_cpu(1)
                .realtime(),
        )
        .unwrap();

    // Every window until the three have exited: on a busy machine a workload can start a
    // second or more late (the hogs, this test and its spawns share CPU 0), and a fixed span of
    // passes then held no window of the sleeper at all.
    let (mut hog_windows, mut nap_windows) = (Vec::new(), Vec::new());
    let exited = tokio::task::spawn_blocking(move || (a.wait(), b.wait(), c.wait()));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !exited.is_finished() {
        assert!(Instant::now() < deadline, "the workloads ran for 120 s");
        next(&mut stream, &mut view).await;
        collect(&mut hog_windows, &view, hogs.id());
        collect(&mut nap_windows, &view, sleeper.id());
    }
    let _ = exited.await;
    let p = |w: &RunqWindow| (w.waits, w.p50_nano_seconds, w.p99_nano_seconds);
    eprintln!(
        "hogs: {:?}\nsleeper: {:?}",
        hog_windows.iter().map(p).collect::<Vec<_>>(),
        nap_windows.iter().map(p).collect::<Vec<_>>()
    );
    // The typical (median) window of each: one noisy quarter-second must not decide the test.
    let median = |windows: &[RunqWindow], pick: fn(&RunqWindow) -> Option<u64>| {
        let mut v: Vec<u64> = windows.iter().filter_map(pick).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    let hog_p50 = median(&hog_windows, |w| w.p50_nano_seconds).expect("hog waits");
    let nap_p50 = median(&nap_windows, |w| w.p50_nano_seconds).expect("sleeper waits");
    assert!(
        hog_p50 > 1_000_000,
        "two hogs on one CPU wait {hog_p50} ns at p50"
    );
    // The typical wait, not the worst: a real-time task runs the moment it wakes, unless the
    // machine itself stops its CPU (a VM whose host is busy: the steal lands in its tail, p99
    // then reads like the hogs'), while sharing a CPU costs a hog a whole scheduler slice.
    assert!(
        nap_p50 <= hog_p50 / 4,
        "a real-time sleeper waits {nap_p50} ns at p50, hogs {hog_p50} ns"
    );
    drop((hogs, sleeper));
    running.stop().await.unwrap();
    pin_this_process_to_cpus(&all_cpus()).unwrap();
}
