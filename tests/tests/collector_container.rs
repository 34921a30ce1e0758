//! Root: the collector as a cluster runs it. The OCI image of `cargo xtask image`
//! (`COLLECTOR_IMAGE_ARCHIVE`) is imported into a private containerd and started through CRI
//! with the DaemonSet's hostPID, securityContext, hostPath mounts and limits, parsed from
//! `deploy/collector.yaml`. Only its arguments are the test's (loopback listeners, no TLS or
//! webhook authentication, which need a cluster). It must load every probe that loads on this
//! host as root, name a busybox pod beside it through CRI and report that pod's CPU at the
//! kernel's value of the same instant, over gRPC and HTTP from the host, and log through the
//! runtime in both formats. With one capability dropped, the probes turn Unsupported with a
//! reason while the cgroupfs numbers keep flowing.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use collector::{
    app::ServeConfig,
    cri::endpoint,
    proto::{GetSummaryRequest, probe_status::State},
};
use collector_integration_tests::{
    can_run,
    capabilities::{bounding_set, split_by_bounding_set},
    containerd::Containerd,
    daemonset::DaemonSet,
    skip,
    watch::start_local,
};

mod container_support;
use container_support::*;

const TEST: &str = "collector_image_runs_with_the_daemonsets_privileges";
/// The capability the second run goes without.
const DROPPED: &str = "BPF";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_image_runs_with_the_daemonsets_privileges() {
    if !can_run(TEST) {
        return;
    }
    let Some(archive) = std::env::var_os("COLLECTOR_IMAGE_ARCHIVE").map(PathBuf::from) else {
        return skip(
            TEST,
            "COLLECTOR_IMAGE_ARCHIVE is not set (cargo xtask test builds the image and sets it)",
        );
    };
    let ds = DaemonSet::load().unwrap();
    let (repository, _tag) = ds
        .image
        .rsplit_once(':')
        .expect("the manifest's image has a tag");

    // What this host allows: the probes a root collector loads here.
    let host_active = {
        let (running, mut client) = start_local(ServeConfig::default()).await;
        let summary = client
            .get_summary(GetSummaryRequest::default())
            .await
            .unwrap();
        running.stop().await.unwrap();
        active_probes(&summary.into_inner().probes)
    };
    assert!(
        !host_active.is_empty(),
        "no probe loads on this host as root"
    );

    let containerd = match Containerd::start() {
        Ok(c) => c,
        Err(why) => return skip(TEST, &format!("containerd cannot start: {why}")),
    };
    containerd.import_test_image().unwrap();
    containerd
        .import_archive(&archive, repository)
        .unwrap_or_else(|e| panic!("importing {}: {e:#}", archive.display()));
    let images = containerd.ctr(&["images", "ls", "--quiet"]).unwrap();
    assert!(
        images.lines().any(|l| l == ds.image),
        "the manifest's image {} is not what the archive holds: {images}",
        ds.image
    );
    check_dockerfile_shape(&archive);

    // A capability outside this host's own bounding set cannot be granted to any container
    // here (runc fails the container); both runs then go without it and say so.
    let (granted, not_on_host) =
        split_by_bounding_set(&ds.capabilities_add, bounding_set().unwrap()).unwrap();
    if !not_on_host.is_empty() {
        eprintln!(
            "note: this host's capability bounding set lacks {not_on_host:?} of the manifest's \
             {:?}: no container here can hold them, so the collector runs with {granted:?}",
            ds.capabilities_add
        );
    }

    let mut cri = endpoint::connect(&containerd.socket).await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let burner = BusyboxBurner::start(&mut cri, logs.path())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", containerd.log_tail()));
    let counter = KernelCounter::start(burner.cgroup_cpu_stat());

    // Run 1: the manifest's capabilities, text logs.
    let ports = Ports::free();
    let pod = CollectorPod::start(
        &mut cri,
        &containerd,
        &ds,
        &granted,
        None,
        &ports,
        logs.path(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", containerd.log_tail()));
    let mut client = pod.connect().await;
    let summary = client
        .get_summary(GetSummaryRequest::default())
        .await
        .unwrap()
        .into_inner();
    let in_container = active_probes(&summary.probes);
    let missing: Vec<_> = host_active.difference(&in_container).collect();
    assert!(
        missing.is_empty(),
        "probes active on the host but not with the manifest's privileges: {missing:?}\n{:#?}",
        summary.probes
    );

    // The busybox pod, named through CRI, its CPU at the kernel's value of the same instant.
    let (time_ns, reported) = wait_for_pod_cpu(&mut client, &burner, MIN_CPU_NS).await;
    counter.check("gRPC", time_ns, reported);
    let (time_ns, reported) = http_pod_cpu(ports.http, &burner.identity).await;
    counter.check("HTTP /metrics/resource", time_ns, reported);

    let log = pod.log_lines();
    assert!(
        log.iter().any(|l| l.contains("collector listening")),
        "{log:#?}"
    );
    for line in &log {
        assert!(
            !line.contains('\u{1b}'),
            "escape sequence in the CRI log: {line:?}"
        );
        assert!(
            [" INFO ", " WARN ", " ERROR ", " DEBUG "]
                .iter()
                .any(|level| line.contains(level)),
            "not one event per line: {line:?}"
        );
    }
    pod.stop(&mut cri).await;

    // Run 2: without CAP_BPF, JSON logs. The probes say why; cgroupfs still flows.
    let fewer: Vec<String> = granted
        .iter()
        .filter(|c| c.as_str() != DROPPED)
        .cloned()
        .collect();
    assert!(fewer.len() < granted.len(), "the manifest has no {DROPPED}");
    let ports = Ports::free();
    let pod = CollectorPod::start(
        &mut cri,
        &containerd,
        &ds,
        &fewer,
        Some("json"),
        &ports,
        logs.path(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", containerd.log_tail()));
    let mut client = pod.connect().await;
    let summary = client
        .get_summary(GetSummaryRequest::default())
        .await
        .unwrap()
        .into_inner();
    for probe in summary.probes.iter().filter(|p| is_ebpf_probe(p)) {
        assert_eq!(probe.state(), State::Unsupported, "{probe:?}");
        assert!(
            probe.reason.contains("not permitted") && probe.reason.contains("CAP_BPF"),
            "unclear reason: {probe:?}"
        );
    }
    let (first_ns, first) = wait_for_pod_cpu(&mut client, &burner, 0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (time_ns, reported) = loop {
        let (t, v) = wait_for_pod_cpu(&mut client, &burner, 0).await;
        if t > first_ns {
            break (t, v);
        }
        assert!(
            Instant::now() < deadline,
            "the cgroupfs reading never moved on"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        reported > first,
        "CPU did not grow: {first} then {reported}"
    );
    counter.check("gRPC without CAP_BPF", time_ns, reported);

    let events = pod.log_lines();
    for line in &events {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
        assert!(event["fields"]["message"].is_string(), "{line}");
    }
    assert!(
        events
            .iter()
            .any(|l| l.contains("cgroupfs-only") && l.contains("\"WARN\"")),
        "no warning about the probes in {events:#?}"
    );
    pod.stop(&mut cri).await;
    burner.stop(&mut cri).await;
    drop(counter);
}

/// The status list also names the collector's other sources (the CRI runtime's names, its
/// filesystem figures, the disk scans), which no capability of the probes' decides.
fn is_ebpf_probe(status: &collector::proto::ProbeStatus) -> bool {
    !["cri", "cri_stats", "disk_usage"].contains(&status.name.as_str())
}

fn active_probes(probes: &[collector::proto::ProbeStatus]) -> BTreeSet<String> {
    probes
        .iter()
        .filter(|p| p.state() == State::Active && is_ebpf_probe(p))
        .map(|p| p.name.clone())
        .collect()
}
