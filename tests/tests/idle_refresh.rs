//! Root + BPF: a cgroup the probes see idle keeps its cgroupfs reading on full passes (its
//! record says how old), never longer than the bound, and is read again at the first full pass
//! after it works; every reading it carries is still exact.

use std::time::{Duration, SystemTime};

use collector::{app::ServeConfig, proto::WatchResponse};
use collector_integration_tests::{
    TestCgroup, Workload, can_run,
    watch::{View, next, start_local, subscribe, unix_ns},
};
use tonic::Streaming;

const CGROUPFS_INTERVAL: Duration = Duration::from_millis(500);
const IDLE_MAX_AGE: Duration = Duration::from_secs(5);
/// Passes land late on a loaded machine; the bound is checked with this much room.
const LATE: Duration = Duration::from_secs(1);
const BURN_MS: u64 = 200;

/// What one message showed of the cgroup: (sample time, its reading's time, cgroupfs CPU ns).
type Seen = (u64, u64, u64);

async fn follow(
    stream: &mut Streaming<WatchResponse>,
    view: &mut View,
    id: u64,
    until: u64,
) -> (Vec<Seen>, u64) {
    let (mut seen, mut carried) = (Vec::new(), 0);
    loop {
        let at = next(stream, view).await;
        if let Some(c) = view.cgroups.get(&id) {
            let cpu = c.cgroupfs_cpu.and_then(|f| f.usage_core_nano_seconds);
            seen.push((at, c.cgroupfs_time_unix_nano, cpu.unwrap_or_default()));
        }
        if at >= until {
            return (seen, carried);
        }
        carried = carried.max(view_carried(view));
    }
}

/// The collector's count of idle cgroups left unread, from the stats of the latest message.
fn view_carried(view: &View) -> u64 {
    view.collector
        .as_ref()
        .map_or(0, |c| c.cgroupfs_idle_carried)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cgroup_carries_its_reading_within_the_bound_and_is_read_once_it_works() {
    let test = "an_idle_cgroup_carries_its_reading_within_the_bound_and_is_read_once_it_works";
    if !can_run(test) {
        return;
    }
    let (running, client) = start_local(ServeConfig {
        cgroupfs_interval: CGROUPFS_INTERVAL,
        cgroupfs_idle_max_age: IDLE_MAX_AGE,
        ..ServeConfig::default()
    })
    .await;
    let Some((mut stream, mut view)) = subscribe(test, client, 100, &["sched_switch"]).await else {
        return;
    };
    let cgroup = TestCgroup::create("idle").unwrap();
    let id = cgroup.id();
    let burn = || Workload::new(env!("CARGO_BIN_EXE_burn")).arg(BURN_MS.to_string());
    cgroup.start(&burn()).unwrap().finish().unwrap();
    let after_first = unix_ns(SystemTime::now());

    // Idle for longer than the bound: readings are carried, none older than the bound.
    let watch_until = after_first + (IDLE_MAX_AGE * 2).as_nanos() as u64;
    let (seen, carried) = follow(&mut stream, &mut view, id, watch_until).await;
    let oldest = seen
        .iter()
        .map(|&(at, read, _)| at.saturating_sub(read))
        .max();
    eprintln!(
        "{} messages while idle; oldest reading {:?} ms; {carried} idle cgroups carried",
        seen.len(),
        oldest.map(|ns| ns / 1_000_000)
    );
    let oldest = Duration::from_nanos(oldest.expect("the cgroup is in the stream"));
    assert!(
        oldest > CGROUPFS_INTERVAL * 2,
        "an idle cgroup read at every full pass: oldest reading {oldest:?}"
    );
    assert!(
        oldest <= IDLE_MAX_AGE + LATE,
        "a reading {oldest:?} old, above the {IDLE_MAX_AGE:?} bound"
    );
    assert!(carried > 0, "the collector counts no carried cgroup");
    // Every reading taken after the work is the kernel's figure now (nothing ran since).
    let kernel = cgroup.cpu_stat_usage_ns().unwrap();
    let fresh: Vec<&Seen> = seen.iter().filter(|s| s.1 > after_first).collect();
    assert!(!fresh.is_empty(), "no reading after the work ended");
    assert!(fresh.iter().all(|s| s.2 == kernel), "{fresh:?} vs {kernel}");

    // Work again: the first full pass after it reads the cgroup, not the idle bound.
    let before = seen.last().map_or(0, |s| s.1);
    cgroup.start(&burn()).unwrap().finish().unwrap();
    let ended = unix_ns(SystemTime::now());
    let until = ended + (CGROUPFS_INTERVAL + LATE).as_nanos() as u64;
    let (seen, _) = follow(&mut stream, &mut view, id, until).await;
    let kernel = cgroup.cpu_stat_usage_ns().unwrap();
    let read_again = seen.iter().find(|s| s.1 >= ended);
    eprintln!(
        "after the second burn: {read_again:?}, cpu.stat {kernel} ns (reading before {before})"
    );
    let (_, _, cpu) = read_again.expect("not read within a full pass of working again");
    assert_eq!(*cpu, kernel, "the fresh reading is the kernel's figure");
    assert!(*cpu >= BURN_MS * 2 * 1_000_000, "{cpu} ns for two burns");
    drop(cgroup);
    running.stop().await.unwrap();
}
