//! Sliding-window percentiles stream with the pods: on a fixture node whose container working
//! set is known, a step up shows in `max` exactly at once while p50 stays on the old level
//! (within its HDR bucket), because the window holds more samples of the old one.

mod common;

use std::{fs, time::Duration};

use collector::{app::ServeConfig, proto::ContainerStats};
use common::{cgroupfs_only, node_tree};

const CONTAINER_DIR: &str = "kubepods/burstable/pod11111111-2222-3333-4444-555555555555/\
                             eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
/// memory.current 30408704 − inactive_file 4194304.
const WORKING_SET: u64 = 26_214_400;
const STEP: u64 = 10 << 20;

#[tokio::test]
async fn working_set_percentiles_stream_and_follow_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let root = node_tree(dir.path());
    let (running, mut stream) = common::start_watching(
        ServeConfig {
            ignore_cgroup1: true,
            ..cgroupfs_only(&root)
        },
        100,
    )
    .await;
    let mut stepped = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no step seen");
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a message within 5 s")
            .unwrap()
            .unwrap();
        let Some(container) = msg
            .pods
            .iter()
            .flat_map(|p| &p.containers)
            .find(|c| c.cgroup_path.ends_with("eeee"))
        else {
            continue;
        };
        let (samples, p50, max, window) = working_set(container);
        if !stepped {
            assert_eq!(max, WORKING_SET, "constant so far: max is exact");
            assert_eq!(p50, WORKING_SET, "and so is p50 (clamped to the max)");
            if samples >= 10 {
                fs::write(
                    root.join(CONTAINER_DIR).join("memory.current"),
                    (30_408_704 + STEP).to_string(),
                )
                .unwrap();
                stepped = true;
            }
            continue;
        }
        if max == WORKING_SET {
            continue; // the step's reading is not in yet
        }
        assert_eq!(max, WORKING_SET + STEP, "the step is the exact max");
        assert!(
            (WORKING_SET..=WORKING_SET + WORKING_SET / 16).contains(&p50),
            "p50 {p50} stays on the old level, within one bucket"
        );
        assert!(window <= 10, "the window covers the run so far: {window} s");
        let pod = msg
            .pods
            .iter()
            .find(|p| {
                p.containers
                    .iter()
                    .any(|c| c.cgroup_id == container.cgroup_id)
            })
            .unwrap();
        let pod_cpu = pod
            .usage_percentiles
            .as_ref()
            .and_then(|p| p.cpu_nano_cores.as_ref())
            .expect("the pod has CPU percentiles too");
        // The fixture's CPU counters never move: every rate is 0.
        assert_eq!((pod_cpu.p99, pod_cpu.max), (0, 0));
        break;
    }
    running.stop().await.unwrap();
}

fn working_set(c: &ContainerStats) -> (u64, u64, u64, u64) {
    let p = c
        .usage_percentiles
        .as_ref()
        .expect("percentiles on every container");
    let ws = p
        .memory_working_set_bytes
        .as_ref()
        .expect("working-set percentiles");
    (ws.samples, ws.p50, ws.max, p.window_seconds)
}
