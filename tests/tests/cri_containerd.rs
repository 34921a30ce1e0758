//! Root: a real containerd, driven through CRI exactly as kubelet drives it (cgroupfs driver,
//! pod cgroup parent under /kubepods/besteffort), runs a pod with a CPU-burning container. The
//! collector, started before the pod exists, must name the pod and the container from the
//! runtime (on demand, not by waiting for the periodic re-list), leave the sandbox out as
//! kubelet does, and report CPU time that matches the container cgroup's own counter.

use std::{
    collections::HashMap,
    fs,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use collector::{
    app::ServeConfig,
    cri::{
        CriSetting,
        endpoint::{self, Client},
        names::{CONTAINER_NAME_LABEL, POD_NAME_LABEL, POD_NAMESPACE_LABEL, POD_UID_LABEL},
        proto::{
            ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec,
            LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
            PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
            StartContainerRequest, StopPodSandboxRequest,
        },
    },
    proto::{GetSummaryRequest, PodStats, collector_client::CollectorClient},
};
use collector_integration_tests::{
    can_run, cgroup2_mount,
    containerd::{Containerd, IMAGE},
    skip,
    watch::{start_local, unix_ns},
};
use tonic::transport::Channel;

const TEST: &str = "containerd_pod_is_named_from_cri_with_its_cpu";
const POD: &str = "cpu-burner";
const NAMESPACE: &str = "collector-test";
const CONTAINER: &str = "burn";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pod_is_named_from_cri_with_its_cpu() {
    if !can_run(TEST) {
        return;
    }
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

    let uid = fresh_uid();
    let _cgroups = PodCgroups(format!("kubepods/besteffort/pod{uid}"));
    let mut cri = endpoint::connect(&containerd.socket).await.unwrap();
    let sandbox_id = run_pod(&mut cri, &uid)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", containerd.log_tail()));
    let container_id = run_burner(&mut cri, &sandbox_id, &uid)
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

async fn run_pod(cri: &mut Client, uid: &str) -> Result<String, tonic::Status> {
    Ok(cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config(uid)),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id)
}

async fn run_burner(cri: &mut Client, sandbox_id: &str, uid: &str) -> Result<String, String> {
    let mut labels = pod_labels(uid);
    labels.insert(CONTAINER_NAME_LABEL.into(), CONTAINER.into());
    let id = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: CONTAINER.into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                command: ["/bin/sh", "-c", "while :; do :; done"]
                    .map(String::from)
                    .to_vec(),
                labels,
                log_path: format!("{CONTAINER}.log"),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config(uid)),
        })
        .await
        .map_err(|e| format!("CreateContainer: {e}"))?
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .map_err(|e| format!("StartContainer: {e}"))?;
    Ok(id)
}

async fn stop_pod(cri: &mut Client, sandbox_id: &str) {
    let id = sandbox_id.to_owned();
    cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    cri.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
}

/// What kubelet sends for a besteffort pod with the cgroupfs driver, host network (no CNI here).
fn sandbox_config(uid: &str) -> PodSandboxConfig {
    let dir = std::env::temp_dir().join(format!("collector-cri-logs-{uid}"));
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: POD.into(),
            uid: uid.into(),
            namespace: NAMESPACE.into(),
            attempt: 0,
        }),
        log_directory: dir.display().to_string(),
        labels: pod_labels(uid),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Pod as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_labels(uid: &str) -> HashMap<String, String> {
    [
        (POD_NAME_LABEL, POD),
        (POD_NAMESPACE_LABEL, NAMESPACE),
        (POD_UID_LABEL, uid),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A uid shaped like the API server's, unique per run.
fn fresh_uid() -> String {
    let n = unix_ns(SystemTime::now()) ^ (u64::from(std::process::id()) << 40);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (n >> 32) as u32,
        (n >> 16) as u16,
        n & 0xfff,
        (n >> 12) & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

/// Polls GetSummary until a pod satisfies `ok`; `Err` carries the last summary's pods.
async fn wait_for(
    collector: &mut CollectorClient<Channel>,
    limit: Duration,
    ok: impl Fn(&PodStats) -> bool,
) -> Result<PodStats, Vec<PodStats>> {
    let deadline = Instant::now() + limit;
    loop {
        let pods = collector
            .get_summary(GetSummaryRequest::default())
            .await
            .unwrap()
            .into_inner()
            .pods;
        if let Some(pod) = pods.iter().find(|p| ok(p)) {
            return Ok(pod.clone());
        }
        if Instant::now() > deadline {
            return Err(pods);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: collector\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// Removes what runc leaves of the pod's cgroups (kubelet would) in every hierarchy, leaves
/// first; a directory still in use or not empty is left alone.
struct PodCgroups(String);

impl Drop for PodCgroups {
    fn drop(&mut self) {
        let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let mut roots: Vec<_> = hierarchies.flatten().map(|e| e.path()).collect();
        roots.push("/sys/fs/cgroup".into());
        for root in roots {
            let pod = root.join(&self.0);
            if let Ok(children) = fs::read_dir(&pod) {
                for child in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = fs::remove_dir(child.path());
                }
            }
            for dir in pod.ancestors().take(3) {
                let _ = fs::remove_dir(dir);
            }
        }
    }
}
