//! Root + BPF: per-cgroup CPU time streamed over gRPC agrees with the kernel's own counters.
//!
//! Every workload is born inside its cgroup (see `collector_integration_tests::workload`), so
//! its rusage, its cgroup's `cpu.stat` and the eBPF figure all count the same nanoseconds: the
//! scheduler's run time. They must agree within 0.5 %, on an idle or a busy machine alike.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use collector_integration_tests::{
    TestCgroup, Workload, relative_diff,
    watch::{catch_up, next, start_watching, start_watching_with, unix_ns},
};

/// CPU time each burner uses (a CPU-time target: the same work on a busy machine).
const BURN_MS: u64 = 1500;
/// Same counter, two readers: the only differences are rounding (cpu.stat has microseconds) and
/// when each read, which the tests below take out.
const SAME_COUNTER: f64 = 0.005;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebpf_and_cgroupfs_cpu_time_match_the_process() {
    let Some((running, mut stream, mut view)) =
        start_watching("ebpf_and_cgroupfs_cpu_time_match_the_process", 200).await
    else {
        return;
    };
    let busy = TestCgroup::create("busy").unwrap();
    let idle = TestCgroup::create("idle").unwrap();
    let rival = TestCgroup::create("rival").unwrap();
    // The burner shares its CPU with a hog of another cgroup: every switch between them must
    // land on the right side, and a loaded machine must not change the figures.
    let cpu = last_cpu();
    let mut hog = rival
        .start(
            &Workload::new(env!("CARGO_BIN_EXE_burn"))
                .args(["--wall", "60000"])
                .on_cpu(cpu),
        )
        .unwrap();
    let mut burner = busy
        .start(
            &Workload::new(env!("CARGO_BIN_EXE_burn"))
                .arg(BURN_MS.to_string())
                .on_cpu(cpu),
        )
        .unwrap();
    let mut sleeper = idle.start(&Workload::new("sleep").arg("2")).unwrap();

    // Mid-run: the run in progress is visible (a hog that never switches out would otherwise
    // read ~0), and never above what the kernel has counted by the time we look.
    let (before, ebpf, after) = loop {
        let before = busy.cpu_stat_usage_ns().unwrap();
        let asked = unix_ns(std::time::SystemTime::now());
        while next(&mut stream, &mut view).await < asked {}
        let after = busy.cpu_stat_usage_ns().unwrap();
        if let Some((ebpf, _)) = view.cpu(busy.id())
            && before > 300_000_000
        {
            break (before, ebpf, after);
        }
    };
    eprintln!("mid-run: cpu.stat {before} ns <= eBPF {ebpf} ns <= cpu.stat {after} ns");
    // A tick of slack above: the kernel updates a running task's time at ticks, both figures
    // lag it by less than one.
    assert!(
        ebpf * 100 >= before * 95 && ebpf <= after + 10_000_000,
        "mid-run eBPF {ebpf} ns outside cpu.stat [{before}, {after}] ns"
    );

    let truth = tokio::task::spawn_blocking(move || burner.wait())
        .await
        .unwrap()
        .unwrap()
        .cpu_ns;
    // A sample taken after the exit has the final switch-out and the cpu.stat flush.
    catch_up(&mut stream, &mut view, Duration::from_millis(100)).await;
    let kernel_fs = busy.cpu_stat_usage_ns().unwrap();
    let (ebpf, fs) = view.cpu(busy.id()).expect("busy cgroup in stream");
    eprintln!(
        "busy cgroup: ebpf {ebpf} ns, cgroupfs {fs} ns (cpu.stat now {kernel_fs}), process \
         rusage {truth} ns"
    );
    assert!(
        truth >= BURN_MS * 1_000_000,
        "burner stopped early: {truth} ns"
    );
    for (name, value) in [("eBPF", ebpf), ("cgroupfs", fs), ("cpu.stat", kernel_fs)] {
        let diff = relative_diff(value, truth, truth);
        assert!(
            diff < SAME_COUNTER,
            "{name} {value} ns vs rusage {truth} ns: {:.3} %",
            diff * 100.0
        );
    }

    // The idle cgroup is charged its own process's time (starting `sleep`) and nothing of the
    // busy one's; rusage and the probe count the same nanoseconds, down to a microsecond.
    let sleeper_truth = tokio::task::spawn_blocking(move || sleeper.wait())
        .await
        .unwrap()
        .unwrap()
        .cpu_ns;
    catch_up(&mut stream, &mut view, Duration::from_millis(100)).await;
    let (idle_ebpf, idle_fs) = view.cpu(idle.id()).expect("idle cgroup in stream");
    eprintln!(
        "idle cgroup: ebpf {idle_ebpf} ns, cgroupfs {idle_fs} ns, process rusage \
         {sleeper_truth} ns"
    );
    assert!(
        idle_ebpf.abs_diff(sleeper_truth) < 50_000,
        "idle eBPF {idle_ebpf} ns"
    );
    assert!(
        idle_fs.abs_diff(sleeper_truth) < 50_000,
        "idle cgroupfs {idle_fs} ns"
    );
    hog.signal(libc::SIGKILL).unwrap();
    let _ = hog.wait();
    drop((busy, idle, rival));
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_cgroup_is_announced_and_its_time_moves_to_the_parent() {
    let Some((running, mut stream, mut view)) = start_watching(
        "removed_cgroup_is_announced_and_its_time_moves_to_the_parent",
        100,
    )
    .await
    else {
        return;
    };

    let parent = TestCgroup::create("parent").unwrap();
    let child = parent.child("child").unwrap();
    let child_id = child.id();
    let mut burner = child
        .start(&Workload::new(env!("CARGO_BIN_EXE_burn")).arg("300"))
        .unwrap();
    let truth = tokio::task::spawn_blocking(move || burner.wait())
        .await
        .unwrap()
        .unwrap()
        .cpu_ns;
    while view.cpu(child_id).is_none_or(|(e, _)| e < truth * 99 / 100) {
        next(&mut stream, &mut view).await;
    }
    drop(child);
    // The removal is announced, and the parent keeps the child's time (as cpu.stat does).
    catch_up(&mut stream, &mut view, Duration::from_millis(100)).await;
    assert!(
        view.removed.contains(&child_id),
        "child cgroup removal never announced"
    );
    assert!(!view.cgroups.contains_key(&child_id));
    let (parent_ebpf, parent_fs) = view.cpu(parent.id()).expect("parent in stream");
    eprintln!(
        "parent after child removal: ebpf {parent_ebpf}, cgroupfs {parent_fs}, child rusage {truth}"
    );
    // The child was born in its cgroup: its rusage is exactly what both hierarchies count.
    // Losing the child's time would be -100 %.
    for (name, value) in [("eBPF", parent_ebpf), ("cgroupfs", parent_fs)] {
        let diff = relative_diff(value, truth, truth);
        assert!(
            diff < SAME_COUNTER,
            "parent {name} {value} ns vs the removed child's {truth} ns: {:.3} %",
            diff * 100.0
        );
    }
    drop(parent);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroupfs_is_read_at_its_own_pace_while_ebpf_moves_every_sample() {
    const CGROUPFS_INTERVAL: Duration = Duration::from_secs(1);
    let Some((running, mut stream, mut view)) = start_watching_with(
        "cgroupfs_is_read_at_its_own_pace_while_ebpf_moves_every_sample",
        100,
        CGROUPFS_INTERVAL,
        &["sched_switch"],
    )
    .await
    else {
        return;
    };
    let busy = TestCgroup::create("paced").unwrap();
    let mut burner = busy
        .start(&Workload::new(env!("CARGO_BIN_EXE_burn")).args(["--wall", "3000"]))
        .unwrap();
    let id = busy.id();
    // From the first sample that has it, follow the cgroup for two seconds of samples (stream
    // time, not wall time: a slow machine delivers them late but dated right).
    let appeared = Instant::now();
    let first = loop {
        let at = next(&mut stream, &mut view).await;
        if view.cgroups.contains_key(&id) {
            break at;
        }
        assert!(
            appeared.elapsed() < Duration::from_secs(10),
            "the new cgroup never appeared in the stream"
        );
    };
    let (mut ebpf_values, mut reads) = (BTreeSet::new(), BTreeSet::new());
    let mut rates = Vec::new();
    while next(&mut stream, &mut view).await < first + 2_000_000_000 {
        let Some(c) = view.cgroups.get(&id) else {
            continue;
        };
        ebpf_values.insert(c.ebpf_cpu.as_ref().map(|e| e.on_cpu_nano_seconds));
        let fs = c.cgroupfs_cpu.as_ref().unwrap();
        reads.insert((
            c.cgroupfs_time_unix_nano,
            fs.usage_core_nano_seconds.unwrap(),
        ));
        rates.push((c.cgroupfs_time_unix_nano, fs.usage_nano_cores));
    }
    eprintln!(
        "{} distinct eBPF values, cgroupfs reads {reads:?}",
        ebpf_values.len()
    );
    // 100 ms samples: eBPF moves almost every time; cgroupfs about once a second (the first
    // read when the cgroup appeared, then at most two paced reads, plus one for slack).
    assert!(
        ebpf_values.len() >= 10,
        "eBPF values: {}",
        ebpf_values.len()
    );
    assert!(
        (2..=4).contains(&reads.len()),
        "cgroupfs reads in 2 s at a 1 s pace: {}",
        reads.len()
    );
    // Every record carries the rate of its own reading: Δusage / Δt of the last two reads,
    // kept (not absent) on the samples in between.
    let reads: Vec<(u64, u64)> = reads.into_iter().collect();
    for pair in reads.windows(2) {
        let [(t0, u0), (t1, u1)] = [pair[0], pair[1]];
        let expected = u128::from(u1 - u0) * 1_000_000_000 / u128::from(t1 - t0);
        for &(at, rate) in rates.iter().filter(|(at, _)| *at == t1) {
            let rate = rate.unwrap_or_else(|| panic!("no cgroupfs rate with the read at {at}"));
            // The collector times reads with the monotonic clock, the record with the wall
            // clock: they agree to well under a percent over a second.
            assert!(
                relative_diff(rate, expected as u64, expected as u64) < 0.01,
                "rate {rate} nanocores vs {expected} from the readings"
            );
        }
    }
    let _ = tokio::task::spawn_blocking(move || burner.wait()).await;
    drop(busy);
    running.stop().await.unwrap();
}

/// The last CPU this test may use (the busiest test workloads go there, away from CPU 0).
fn last_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
}
