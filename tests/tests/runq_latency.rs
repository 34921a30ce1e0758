//! Root + BPF: run-queue latency per cgroup. Alone in its own test binary: CPU-pinned hogs and
//! a sleeper must not share the machine with other tests' workloads.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use collector::proto::RunqWindow;
use collector_integration_tests::{
    TestCgroup, pin_this_process_to_cpu, pin_to_cpu, wait_cpu_ns,
    watch::{View, next, start_watching_with},
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runq_latency_of_hogs_sharing_a_cpu_and_of_a_lone_sleeper() {
    let test = "runq_latency_of_hogs_sharing_a_cpu_and_of_a_lone_sleeper";
    let needs = ["sched_wakeup", "sched_wakeup_new", "runq_switch"];
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        collector_integration_tests::skip(test, "needs two CPUs");
        return;
    }
    let Some((running, mut stream, mut view)) =
        start_watching_with(test, 250, Duration::ZERO, &needs).await
    else {
        return;
    };
    // The collector and this test share CPU 0 with the hogs: CPU 1 is the sleeper's alone, so
    // its waits measure the scheduler, not our own sampling passes.
    pin_this_process_to_cpu(0).unwrap();
    let hogs = TestCgroup::create("hogs").unwrap();
    let sleeper = TestCgroup::create("sleeper").unwrap();
    let burn = |cpu| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_burn"));
        c.arg("2500");
        pin_to_cpu(&mut c, cpu);
        c
    };
    let a = hogs.spawn(&mut burn(0)).unwrap();
    let b = hogs.spawn(&mut burn(0)).unwrap();
    let mut naps = Command::new(env!("CARGO_BIN_EXE_naps"));
    naps.args(["2500", "5000"]);
    pin_to_cpu(&mut naps, 1);
    let c = sleeper.spawn(&mut naps).unwrap();

    let (mut hog_windows, mut nap_windows) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2300) {
        next(&mut stream, &mut view).await;
        collect(&mut hog_windows, &view, hogs.id());
        collect(&mut nap_windows, &view, sleeper.id());
    }
    for child in [a, b, c] {
        let _ = tokio::task::spawn_blocking(move || wait_cpu_ns(child)).await;
    }
    let p = |w: &RunqWindow| (w.waits, w.p50_nano_seconds, w.p99_nano_seconds);
    eprintln!(
        "hogs: {:?}\nsleeper: {:?}",
        hog_windows.iter().map(p).collect::<Vec<_>>(),
        nap_windows.iter().map(p).collect::<Vec<_>>()
    );
    // The typical (median) window of each: one noisy half-second on a shared machine must not
    // decide the test.
    let median = |windows: &[RunqWindow], pick: fn(&RunqWindow) -> Option<u64>| {
        let mut v: Vec<u64> = windows.iter().filter_map(pick).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    let hog_p50 = median(&hog_windows, |w| w.p50_nano_seconds).expect("hog waits");
    let nap_p99 = median(&nap_windows, |w| w.p99_nano_seconds).expect("sleeper waits");
    assert!(
        hog_p50 > 1_000_000,
        "two hogs on one CPU wait {hog_p50} ns at p50"
    );
    // Relative, not absolute: a lone sleeper's worst waits are tens of microseconds on bare
    // metal but about a millisecond under an emulated CPU (the VM suite), while sharing a CPU
    // costs a hog whole scheduler slices either way.
    assert!(
        nap_p99 <= hog_p50 / 4,
        "a lone sleeper waits {nap_p99} ns at p99, hogs {hog_p50} ns at p50"
    );
    drop((hogs, sleeper));
    running.stop().await.unwrap();
}
