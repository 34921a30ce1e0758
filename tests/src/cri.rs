//! Driving pods through CRI as kubelet does (labels, cgroupfs-driver cgroup parents, log
//! directories), and reading the collector's view of them.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use collector::{
    cri::{
        endpoint::Client,
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
use tonic::transport::Channel;

use crate::{containerd::IMAGE, watch::unix_ns};

/// kubelet's `--runtime-request-timeout`: how long a call that drives a pod may take.
pub const RUNTIME_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Tests that run a private containerd take turns: two at once on a busy 2-core machine made
/// sandboxes take longer than any sensible timeout.
pub static ONE_CONTAINERD_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Both CRI clients on `socket`, with kubelet's timeout for driving pods.
pub async fn connect(socket: &Path) -> collector::cri::endpoint::Connection {
    collector::cri::endpoint::connect_with_timeout(socket, RUNTIME_REQUEST_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()))
}

/// A pod as kubelet would ask for it: besteffort, cgroupfs driver.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// `Node` shares the host's network; `Pod` needs a CNI plugin.
    pub network: NamespaceMode,
    /// kubelet's `<pod logs dir>/<namespace>_<name>_<uid>`.
    pub log_directory: PathBuf,
}

impl PodSpec {
    /// A fresh uid; logs under the temp dir unless `logs_root` is given.
    pub fn new(
        name: &str,
        namespace: &str,
        network: NamespaceMode,
        logs_root: Option<&Path>,
    ) -> Self {
        let uid = fresh_uid();
        let log_directory = match logs_root {
            Some(root) => root.join(format!("{namespace}_{name}_{uid}")),
            None => std::env::temp_dir().join(format!("collector-cri-logs-{uid}")),
        };
        Self {
            name: name.into(),
            namespace: namespace.into(),
            uid,
            network,
            log_directory,
        }
    }

    pub fn cgroup_parent(&self) -> String {
        format!("/kubepods/besteffort/pod{}", self.uid)
    }

    fn labels(&self) -> HashMap<String, String> {
        [
            (POD_NAME_LABEL, self.name.as_str()),
            (POD_NAMESPACE_LABEL, self.namespace.as_str()),
            (POD_UID_LABEL, self.uid.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn sandbox_config(&self) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            log_directory: self.log_directory.display().to_string(),
            labels: self.labels(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: self.network as i32,
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

    /// RunPodSandbox; the sandbox id.
    pub async fn run(&self, cri: &mut Client) -> Result<String, tonic::Status> {
        fs::create_dir_all(&self.log_directory)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(self.sandbox_config()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id)
    }

    /// CreateContainer + StartContainer of `command` in the test image, logging to
    /// `<name>/0.log` under the pod's log directory as kubelet names it; the container id.
    pub async fn start_container(
        &self,
        cri: &mut Client,
        sandbox_id: &str,
        name: &str,
        command: &[&str],
    ) -> Result<String, String> {
        let mut labels = self.labels();
        labels.insert(CONTAINER_NAME_LABEL.into(), name.into());
        let id = cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox_id.into(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: name.into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: IMAGE.into(),
                        ..Default::default()
                    }),
                    command: command.iter().map(|s| s.to_string()).collect(),
                    labels,
                    log_path: format!("{name}/0.log"),
                    ..Default::default()
                }),
                sandbox_config: Some(self.sandbox_config()),
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
}

pub async fn stop_pod(cri: &mut Client, sandbox_id: &str) {
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

/// A uid shaped like the API server's, unique per call.
pub fn fresh_uid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = unix_ns(SystemTime::now())
        ^ (u64::from(std::process::id()) << 40)
        ^ CALLS.fetch_add(1, Ordering::Relaxed).rotate_left(32);
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
pub async fn wait_for(
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

/// A plain HTTP/1.1 GET on loopback: the whole response, head and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: collector\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// Removes what runc leaves of a pod's cgroups (kubelet would) in every hierarchy, leaves
/// first; a directory still in use or not empty is left alone.
pub struct PodCgroups(pub String);

impl Drop for PodCgroups {
    fn drop(&mut self) {
        let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let mut roots: Vec<_> = hierarchies.flatten().map(|e| e.path()).collect();
        roots.push("/sys/fs/cgroup".into());
        let relative = self.0.trim_start_matches('/');
        for root in roots {
            let pod = root.join(relative);
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
