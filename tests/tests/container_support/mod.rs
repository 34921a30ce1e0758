//! Pods of the container test: a busybox CPU burner, the collector pod from the DaemonSet, the
//! kernel's counter sampled beside them, and the CRI log file read back.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use collector::{
    cri::{
        endpoint::Client,
        proto::{
            ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec,
            LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
            PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
            StartContainerRequest, StopPodSandboxRequest,
        },
    },
    proto::{GetSummaryRequest, collector_client::CollectorClient},
};
use collector_integration_tests::{
    cgroup2_mount,
    containerd::{Containerd, IMAGE},
    daemonset::{DaemonSet, PodIdentity},
    watch::unix_ns,
};
use tonic::transport::Channel;

/// CPU the burner must have used before its reading is compared: the collector reads a cgroup
/// a few ms into its pass, which at one core is well under 1 % of this.
pub const MIN_CPU_NS: u64 = 4_000_000_000;
const BURNER: &str = "burn";
const START_LIMIT: Duration = Duration::from_secs(60);

pub struct Ports {
    pub grpc: u16,
    pub http: u16,
}

impl Ports {
    pub fn free() -> Self {
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        Self {
            grpc: port(),
            http: port(),
        }
    }
}

async fn run_sandbox(cri: &mut Client, config: PodSandboxConfig) -> Result<String, String> {
    Ok(cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox: {e}"))?
        .into_inner()
        .pod_sandbox_id)
}

async fn start_container(
    cri: &mut Client,
    sandbox_id: &str,
    sandbox: PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String, String> {
    let id = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox),
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

async fn remove_sandbox(cri: &mut Client, id: &str) {
    let id = id.to_owned();
    let _ = cri
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await;
    let _ = cri
        .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await;
}

fn fresh_uid(salt: u64) -> String {
    let n = unix_ns(SystemTime::now()) ^ (u64::from(std::process::id()) << 40) ^ salt;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (n >> 32) as u32,
        (n >> 16) as u16,
        n & 0xfff,
        (n >> 12) & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

/// A besteffort busybox pod whose one container spins.
pub struct BusyboxBurner {
    pub identity: PodIdentity,
    sandbox_id: String,
    container_id: String,
}

impl BusyboxBurner {
    pub async fn start(cri: &mut Client, logs: &Path) -> Result<Self, String> {
        let identity = PodIdentity {
            name: "busybox-burner".into(),
            namespace: "collector-test".into(),
            uid: fresh_uid(1),
        };
        let sandbox = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: identity.name.clone(),
                uid: identity.uid.clone(),
                namespace: identity.namespace.clone(),
                attempt: 0,
            }),
            log_directory: logs.join("burner").display().to_string(),
            labels: identity.labels(None),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{}", identity.uid),
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
        };
        let sandbox_id = run_sandbox(cri, sandbox.clone()).await?;
        let container = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: BURNER.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: ["/bin/sh", "-c", "while :; do :; done"]
                .map(String::from)
                .to_vec(),
            labels: identity.labels(Some(BURNER)),
            log_path: format!("{BURNER}.log"),
            ..Default::default()
        };
        let container_id = start_container(cri, &sandbox_id, sandbox, container).await?;
        Ok(Self {
            identity,
            sandbox_id,
            container_id,
        })
    }

    /// The container cgroup's `cpu.stat` (cgroupfs driver: the pod's cgroup, then the id).
    pub fn cgroup_cpu_stat(&self) -> PathBuf {
        cgroup2_mount()
            .unwrap()
            .join(format!("kubepods/besteffort/pod{}", self.identity.uid))
            .join(&self.container_id)
            .join("cpu.stat")
    }

    pub async fn stop(self, cri: &mut Client) {
        remove_sandbox(cri, &self.sandbox_id).await;
        remove_pod_cgroups(&format!("kubepods/besteffort/pod{}", self.identity.uid));
    }
}

/// The collector's pod from the DaemonSet: its securityContext and mounts, with `capabilities`
/// added and the test's arguments.
pub struct CollectorPod {
    sandbox_id: String,
    uid: String,
    log: PathBuf,
    grpc: u16,
}

impl CollectorPod {
    pub async fn start(
        cri: &mut Client,
        containerd: &Containerd,
        ds: &DaemonSet,
        capabilities: &[String],
        log_format: Option<&str>,
        ports: &Ports,
        logs: &Path,
    ) -> Result<Self, String> {
        let identity = PodIdentity {
            name: "collector-test-node".into(),
            namespace: "collector-system".into(),
            uid: fresh_uid(u64::from(ports.grpc)),
        };
        let log_dir = logs.join(&identity.uid);
        let sandbox = ds.sandbox_config(&identity, &log_dir.display().to_string());
        let sandbox_id = run_sandbox(cri, sandbox.clone()).await?;
        // The manifest's arguments without what needs a cluster (TLS from a Secret, webhook
        // authentication against an API server) and with loopback listeners.
        let mut args: Vec<String> = ds
            .args
            .iter()
            .filter(|a| {
                ![
                    "--listen",
                    "--http-listen",
                    "--tls-",
                    "--authentication-",
                    "--authorization-",
                ]
                .iter()
                .any(|p| a.starts_with(p))
            })
            .cloned()
            .collect();
        args.push(format!("--listen=127.0.0.1:{}", ports.grpc));
        args.push(format!("--http-listen=127.0.0.1:{}", ports.http));
        if let Some(format) = log_format {
            args.push(format!("--log-format={format}"));
        }
        let mut config = ds.container_config(
            &identity,
            args,
            vec![("NODE_NAME".into(), "test-node".into())],
            &containerd.socket.display().to_string(),
            "collector.log",
        );
        if let Some(sc) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.capabilities.as_mut())
        {
            sc.add_capabilities = capabilities.to_vec();
        }
        start_container(cri, &sandbox_id, sandbox, config).await?;
        Ok(Self {
            sandbox_id,
            uid: identity.uid,
            log: log_dir.join("collector.log"),
            grpc: ports.grpc,
        })
    }

    /// A client once the collector answers GetSummary (its first sample is in).
    pub async fn connect(&self) -> CollectorClient<Channel> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Ok(mut client) =
                CollectorClient::connect(format!("http://127.0.0.1:{}", self.grpc)).await
                && client
                    .get_summary(GetSummaryRequest::default())
                    .await
                    .is_ok()
            {
                return client;
            }
            assert!(
                Instant::now() < deadline,
                "the collector container never answered; its log:\n{}",
                self.log_lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The collector's stderr as the runtime wrote it (CRI log format: time, stream, P/F tag,
    /// text; partial lines joined).
    pub fn log_lines(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let mut lines = Vec::new();
        let mut partial = String::new();
        for record in text.lines() {
            let mut parts = record.splitn(4, ' ');
            let (_time, stream, tag) = (parts.next(), parts.next(), parts.next());
            let body = parts.next().unwrap_or_default();
            assert_eq!(
                stream,
                Some("stderr"),
                "the collector wrote to stdout: {record}"
            );
            partial.push_str(body);
            if tag == Some("F") {
                lines.push(std::mem::take(&mut partial));
            }
        }
        lines
    }

    pub async fn stop(self, cri: &mut Client) {
        remove_sandbox(cri, &self.sandbox_id).await;
        remove_pod_cgroups(&format!("kubepods/burstable/pod{}", self.uid));
    }
}

/// Polls GetSummary until the burner's pod is named from CRI and its container has used at
/// least `min_ns`; returns the container's (read time, usageCoreNanoSeconds).
pub async fn wait_for_pod_cpu(
    client: &mut CollectorClient<Channel>,
    burner: &BusyboxBurner,
    min_ns: u64,
) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pods = client
            .get_summary(GetSummaryRequest::default())
            .await
            .unwrap()
            .into_inner()
            .pods;
        let found = pods.iter().find(|p| {
            p.pod_ref
                .as_ref()
                .is_some_and(|r| r.uid == burner.identity.uid)
        });
        if let Some(pod) = found {
            let r = pod.pod_ref.as_ref().unwrap();
            let named = r.name == burner.identity.name && r.namespace == burner.identity.namespace;
            let cpu = pod
                .containers
                .iter()
                .find(|c| c.name == BURNER)
                .and_then(|c| c.cpu.as_ref())
                .and_then(|cpu| Some((cpu.time_unix_nano, cpu.usage_core_nano_seconds?)));
            if let (true, Some((time, usage))) = (named, cpu)
                && usage >= min_ns
            {
                return (time, usage);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the burner pod never showed up named with {min_ns} ns of CPU: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The burner's `container_cpu_usage_seconds_total` from `/metrics/resource` (kubelet's
/// names), as (sample time in ns, value in ns).
pub async fn http_pod_cpu(port: u16, pod: &PodIdentity) -> (u64, u64) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = "GET /metrics/resource HTTP/1.0\r\nHost: collector\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    let series = format!(
        "container_cpu_usage_seconds_total{{container=\"{BURNER}\",namespace=\"{}\",pod=\"{}\"}} ",
        pod.namespace, pod.name
    );
    let line = body
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("{series} missing from /metrics/resource:\n{body}"));
    let mut fields = line.split_whitespace();
    let seconds: f64 = fields.next().unwrap().parse().unwrap();
    let ms: u64 = fields.next().expect("a timestamp").parse().unwrap();
    (ms * 1_000_000, (seconds * 1e9).round() as u64)
}

/// The container cgroup's `usage_usec`, read every few ms with the wall time around each read.
pub struct KernelCounter {
    path: PathBuf,
    samples: Arc<Mutex<Vec<(u64, u64, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl KernelCounter {
    pub fn start(cpu_stat: PathBuf) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, path) = (samples.clone(), stop.clone(), cpu_stat.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let before = unix_ns(SystemTime::now());
                if let Ok(text) = fs::read_to_string(&path)
                    && let Some(usec) = text
                        .lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    let after = unix_ns(SystemTime::now());
                    s.lock().unwrap().push((before, after, usec * 1000));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            path: cpu_stat,
            samples,
            stop,
        }
    }

    /// `reported` is a value the kernel's counter had, and within 1 % of the counter at the
    /// record's own read time `at_ns` (interpolated between the two reads around it).
    pub fn check(&self, via: &str, at_ns: u64, reported: u64) {
        // A fresh record may be newer than the last read (a starved reader thread on a busy
        // machine): wait for a read after it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .samples
            .lock()
            .unwrap()
            .last()
            .is_none_or(|last| last.0 < at_ns)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let samples = self.samples.lock().unwrap().clone();
        let exact = samples
            .windows(2)
            .any(|w| w[0].2 <= reported && reported <= w[1].2);
        // The two reads around `at_ns`: from the start of one to the end of the next, since a
        // time can fall inside a read (HTTP's are whole milliseconds, a read takes ~0.1 ms).
        let around = samples
            .windows(2)
            .find(|w| w[0].0 <= at_ns && at_ns <= w[1].1)
            .unwrap_or_else(|| {
                panic!(
                    "{via}: no kernel reads around {at_ns}: {} reads of {}, from {:?} to {:?}",
                    samples.len(),
                    self.path.display(),
                    samples.first(),
                    samples.last()
                )
            });
        let (t0, v0) = (around[0].1, around[0].2 as f64);
        let (t1, v1) = (around[1].0, around[1].2 as f64);
        // Inside a read: that read's value (clamped to the gap between the two reads).
        let at = at_ns.clamp(t0, t1.max(t0));
        let kernel = v0 + (v1 - v0) * (at - t0) as f64 / (t1 - t0).max(1) as f64;
        let off = (reported as f64 - kernel) / kernel;
        eprintln!(
            "{via}: reported {:.4} s, cpu.stat at the record's time {:.4} s ({:+.3} %), a value \
             the counter had: {exact}",
            reported as f64 / 1e9,
            kernel / 1e9,
            off * 100.0
        );
        assert!(
            off.abs() <= 0.01,
            "{via}: {reported} ns vs the kernel's {kernel:.0} ns at the same instant"
        );
    }
}

impl Drop for KernelCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The image's entrypoint, command and ports are those of `deploy/Dockerfile`: the two ways
/// of building it give the same shape.
pub fn check_dockerfile_shape(archive: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let blob = |digest: &str| -> serde_json::Value {
        let hex = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&fs::read(dir.path().join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap());
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    let config = &config["config"];
    let dockerfile =
        fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile"))
            .unwrap();
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(
        last_stage.starts_with("scratch"),
        "the Dockerfile's image is not FROM scratch"
    );
    let instruction = |name: &str| -> serde_json::Value {
        let line = last_stage
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in the Dockerfile"));
        serde_json::from_str(line.trim()).unwrap()
    };
    assert_eq!(config["Entrypoint"], instruction("ENTRYPOINT "));
    assert_eq!(config["Cmd"], instruction("CMD "));
    let exposed: Vec<String> = last_stage
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| format!("{p}/tcp")))
        .collect();
    let mut in_image: Vec<String> = config["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    in_image.sort();
    let mut exposed_sorted = exposed.clone();
    exposed_sorted.sort();
    assert_eq!(in_image, exposed_sorted);
}

/// What runc leaves of a pod's cgroups (kubelet would remove them), leaves first.
fn remove_pod_cgroups(relative: &str) {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<_> = hierarchies.flatten().map(|e| e.path()).collect();
    roots.push("/sys/fs/cgroup".into());
    for root in roots {
        let pod = root.join(relative);
        if let Ok(children) = fs::read_dir(&pod) {
            for child in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = fs::remove_dir(child.path());
            }
        }
        let _ = fs::remove_dir(&pod);
    }
}
