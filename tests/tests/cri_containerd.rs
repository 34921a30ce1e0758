//! Root: a real containerd, driven through CRI exactly as kubelet drives it (cgroupfs driver,
//! pod cgroup parent under /kubepods/besteffort), runs a pod with a CPU-burning container. The
//! collector, started before the pod exists, must name the pod and the container from the
//! runtime (on demand, not by waiting for the periodic re-list), leave the sandbox out as
//! kubelet does, and report CPU time that matches the container cgroup's own counter.

#[path = "cri_containerd/storage.rs"]
mod storage;

use std::{fs, path::Path, time::Duration, time::SystemTime};

use collector::{
    app::ServeConfig,
    cri::{CriSetting, proto::NamespaceMode},
    proto::GetSummaryRequest,
};
use collector_integration_tests::{
    can_run, cgroup2_mount,
    containerd::Containerd,
    cri::{self, PodCgroups, PodSpec, http_get, stop_pod, wait_for},
    skip,
    watch::{start_local, unix_ns},
};

const TEST: &str = "containerd_pod_is_named_from_cri_with_its_cpu";
const POD: &str = "cpu-burner";
const NAMESPACE: &str = "collector-test";
const CONTAINER: &str = "burn";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pod_is_named_from_cri_with_its_cpu() {
    if !can_run(TEST) {
        return;
    }
    let _turn = cri::ONE_CONTAINERD_AT_A_TIME.lock().await;
    let containerd = match Containerd::start() {
        Ok(c) => c,
        Err(why) => return skip(TEST, &format!("containerd cannot start: {why}")),
    };
    containerd
        .import_test_image()
        .unwrap_or_else(|e| panic!("importing the test image: {e:#}\n{}", containerd.log_tail()));

    let (running, mut collector) = start_local(ServeConfig {
        cri: CriSetting::Socket(containerd.socket.clone()),
        // Far beyond the test: names must come from the on-demand refresh.
        cri_refresh: Duration::from_secs(3600),
        base_period: Duration::from_millis(500),
        cgroupfs_interval: Duration::ZERO,
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ServeConfig::default()
    })
    .await;
    let http = running.http_addr.expect("HTTP on");

    // Host network: no CNI plugin needed.
    let spec = PodSpec::new(POD, NAMESPACE, NamespaceMode::Node, None);
    let uid = spec.uid.clone();
    let _cgroups = PodCgroups(spec.cgroup_parent());
    let mut cri = cri::connect(&containerd.socket).await.runtime;
    let sandbox_id = spec
        .run(&mut cri)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", containerd.log_tail()));
    let burner = ["/bin/sh", "-c", "while :; do :; done"];
    let container_id = spec
        .start_container(&mut cri, &sandbox_id, CONTAINER, &burner)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", containerd.log_tail()));

    // Named by CRI, sandbox left out, and a rate (two samples) present.
    let pod = wait_for(&mut collector, Duration::from_secs(30), |pod| {
        pod.pod_ref.as_ref().is_some_and(|r| r.uid == uid)
            && pod.containers.iter().any(|c| {
                c.container_id == container_id
                    && c.name == CONTAINER
                    && c.cpu
                        .as_ref()
                        .is_some_and(|cpu| cpu.usage_nano_cores.is_some())
            })
    })
    .await
    .unwrap_or_else(|last| panic!("pod {uid} never named with a CPU rate; last: {last:#?}"));
    let pod_ref = pod.pod_ref.as_ref().unwrap();
    assert_eq!(
        (pod_ref.name.as_str(), pod_ref.namespace.as_str()),
        (POD, NAMESPACE)
    );
    assert_eq!(pod.qos_class, "BestEffort");
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [CONTAINER],
        "the sandbox ({sandbox_id}) is not a container"
    );
    let burn = &pod.containers[0];
    // A rate exists and one thread cannot use more than a core; how much of one it got depends
    // on the machine's load, so the exact check is the cumulative counter against the kernel's
    // below, not this wall-clock ratio.
    let cores = burn.cpu.as_ref().unwrap().usage_nano_cores.unwrap() as f64 / 1e9;
    assert!(
        cores > 0.0 && cores <= 1.2,
        "a one-thread busy loop used {cores:.2} cores"
    );

    // The sliding-window percentiles follow the same series.
    let window = burn
        .usage_percentiles
        .as_ref()
        .and_then(|p| p.cpu_nano_cores.as_ref())
        .expect("CPU percentiles once a rate exists");
    assert!(
        window.samples >= 1 && window.p50 <= window.max,
        "{window:?}"
    );
    assert!(
        window.max > 0 && window.max as f64 / 1e9 <= 1.2,
        "busiest sample {:.2} cores",
        window.max as f64 / 1e9
    );

    // The CPU time is the container cgroup's own counter, read between our two reads of it.
    let cpu_stat = cgroup2_mount()
        .unwrap()
        .join(burn.cgroup_path.trim_start_matches('/'))
        .join("cpu.stat");
    let before = usage_ns(&cpu_stat);
    let after_before = unix_ns(SystemTime::now());
    let reported = wait_for(&mut collector, Duration::from_secs(10), |pod| {
        pod.pod_ref.as_ref().is_some_and(|r| r.uid == uid)
            && pod.containers.iter().any(|c| {
                c.cpu
                    .as_ref()
                    .is_some_and(|cpu| cpu.time_unix_nano > after_before)
            })
    })
    .await
    .expect("a newer sample")
    .containers[0]
        .cpu
        .unwrap()
        .usage_core_nano_seconds
        .unwrap();
    let after = usage_ns(&cpu_stat);
    assert!(
        before <= reported && reported <= after,
        "reported {reported} ns, kernel read {before} before and {after} after"
    );

    // metrics-server's view: kubelet's resource metrics, labelled by name.
    let body = http_get(http, "/metrics/resource").await;
    let series = format!(
        "container_cpu_usage_seconds_total{{container=\"{CONTAINER}\",namespace=\"{NAMESPACE}\",pod=\"{POD}\"}}"
    );
    assert!(body.contains(&series), "{series} missing from:\n{body}");

    let summary = collector
        .get_summary(GetSummaryRequest::default())
        .await
        .unwrap()
        .into_inner();
    let cri_status = summary.probes.iter().find(|p| p.name == "cri").unwrap();
    assert!(
        cri_status.reason.contains("containerd"),
        "cri status: {cri_status:?}"
    );

    stop_pod(&mut cri, &sandbox_id).await;
    running.stop().await.unwrap();
}

fn usage_ns(cpu_stat: &Path) -> u64 {
    let text =
        fs::read_to_string(cpu_stat).unwrap_or_else(|e| panic!("{}: {e}", cpu_stat.display()));
    let usec: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    usec * 1000
}
