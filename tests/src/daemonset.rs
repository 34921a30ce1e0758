//! The collector's DaemonSet from `deploy/collector.yaml`, parsed (never copied by hand) and
//! turned into the CRI requests kubelet would send for it: hostPID, the container's
//! securityContext (capabilities, seccomp, read-only root, no new privileges, user), its
//! hostPath mounts with their read-only flags, and its resource limits.

use std::{collections::HashMap, path::PathBuf};

use anyhow::{Context as _, bail};
use collector::cri::proto::{
    Capability, ContainerConfig, ContainerMetadata, ImageSpec, Int64Value, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, SecurityProfile, security_profile::ProfileType,
};
use serde_yaml::Value;

/// The manifest, relative to the workspace.
pub fn manifest_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/collector.yaml")
}

/// What the test takes from the DaemonSet's pod template.
pub struct DaemonSet {
    pub image: String,
    pub container_name: String,
    pub args: Vec<String>,
    pub host_pid: bool,
    pub env: Vec<(String, String)>,
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    pub seccomp_unconfined: bool,
    pub read_only_root: bool,
    pub allow_privilege_escalation: bool,
    pub run_as_user: Option<i64>,
    pub privileged: bool,
    /// hostPath mounts: (host path, container path, read-only).
    pub host_mounts: Vec<(String, String, bool)>,
    /// Mounts of other volume kinds (Secrets), by container path.
    pub other_mounts: Vec<String>,
    pub memory_limit_bytes: Option<i64>,
    pub cpu_limit_millis: Option<i64>,
}

impl DaemonSet {
    pub fn load() -> anyhow::Result<Self> {
        let path = manifest_path();
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let doc = serde_yaml::Deserializer::from_str(text)
            .map(Value::deserialize)
            .filter_map(Result::ok)
            .find(|d| d["kind"] == "DaemonSet")
            .context("no DaemonSet in the manifest")?;
        let pod = &doc["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let strings = |v: &Value| -> Vec<String> {
            v.as_sequence()
                .map(|s| {
                    s.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let security = &container["securityContext"];
        let volumes: HashMap<&str, &Value> = pod["volumes"]
            .as_sequence()
            .context("no volumes")?
            .iter()
            .filter_map(|v| Some((v["name"].as_str()?, v)))
            .collect();
        let mut host_mounts = Vec::new();
        let mut other_mounts = Vec::new();
        for mount in container["volumeMounts"]
            .as_sequence()
            .context("no volumeMounts")?
        {
            let name = mount["name"].as_str().context("volumeMount without name")?;
            let target = mount["mountPath"].as_str().context("no mountPath")?;
            let volume = volumes
                .get(name)
                .with_context(|| format!("no volume {name}"))?;
            match volume["hostPath"]["path"].as_str() {
                Some(host) => host_mounts.push((
                    host.to_owned(),
                    target.to_owned(),
                    mount["readOnly"].as_bool().unwrap_or(false),
                )),
                None => other_mounts.push(target.to_owned()),
            }
        }
        let env = container["env"]
            .as_sequence()
            .map(|s| {
                s.iter()
                    .filter_map(|e| {
                        let name = e["name"].as_str()?.to_owned();
                        // Downward-API values (the node name) have no literal.
                        Some((name, e["value"].as_str().unwrap_or_default().to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let limits = &container["resources"]["limits"];
        Ok(Self {
            image: container["image"].as_str().context("no image")?.to_owned(),
            container_name: container["name"].as_str().context("no name")?.to_owned(),
            args: strings(&container["args"]),
            host_pid: pod["hostPID"].as_bool().unwrap_or(false),
            env,
            capabilities_add: strings(&security["capabilities"]["add"]),
            capabilities_drop: strings(&security["capabilities"]["drop"]),
            seccomp_unconfined: security["seccompProfile"]["type"] == "Unconfined",
            read_only_root: security["readOnlyRootFilesystem"]
                .as_bool()
                .unwrap_or(false),
            allow_privilege_escalation: security["allowPrivilegeEscalation"]
                .as_bool()
                .unwrap_or(true),
            run_as_user: security["runAsUser"].as_i64(),
            privileged: security["privileged"].as_bool().unwrap_or(false),
            host_mounts,
            other_mounts,
            memory_limit_bytes: limits["memory"].as_str().map(quantity_bytes).transpose()?,
            cpu_limit_millis: limits["cpu"].as_str().map(quantity_millis).transpose()?,
        })
    }

    /// The sandbox kubelet would ask for: hostPID from the manifest. The network is the
    /// node's, since the private containerd has no CNI (the manifest leaves it to the pod
    /// network); that is also how the test reaches the collector's loopback listeners.
    pub fn sandbox_config(&self, pod: &PodIdentity, log_directory: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                namespace: pod.namespace.clone(),
                attempt: 0,
            }),
            log_directory: log_directory.to_owned(),
            labels: pod.labels(None),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/burstable/pod{}", pod.uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        pid: if self.host_pid {
                            NamespaceMode::Node
                        } else {
                            NamespaceMode::Pod
                        } as i32,
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

    /// The container kubelet would create: the manifest's image, securityContext, mounts and
    /// limits; `args` replace the manifest's (TLS and webhook authentication need a cluster);
    /// `cri_socket` is the host side of the manifest's CRI socket mount (the private
    /// containerd's), every other hostPath is the manifest's own.
    pub fn container_config(
        &self,
        pod: &PodIdentity,
        args: Vec<String>,
        env: Vec<(String, String)>,
        cri_socket: &str,
        log_path: &str,
    ) -> ContainerConfig {
        let mounts = self
            .host_mounts
            .iter()
            .map(|(host, target, readonly)| Mount {
                container_path: target.clone(),
                host_path: if target.ends_with(".sock") {
                    cri_socket.to_owned()
                } else {
                    host.clone()
                },
                readonly: *readonly,
                ..Default::default()
            })
            .collect();
        let mut envs: Vec<(String, String)> = self.env.clone();
        envs.extend(env);
        let limit_millis = self.cpu_limit_millis.unwrap_or(0);
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: self.container_name.clone(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            args,
            envs: envs
                .into_iter()
                .map(|(key, value)| KeyValue {
                    key,
                    value: value.into(),
                })
                .collect(),
            mounts,
            labels: pod.labels(Some(&self.container_name)),
            log_path: log_path.to_owned(),
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    cpu_period: if limit_millis > 0 { 100_000 } else { 0 },
                    cpu_quota: limit_millis * 100,
                    memory_limit_in_bytes: self.memory_limit_bytes.unwrap_or(0),
                    ..Default::default()
                }),
                security_context: Some(LinuxContainerSecurityContext {
                    capabilities: Some(Capability {
                        add_capabilities: self.capabilities_add.clone(),
                        drop_capabilities: self.capabilities_drop.clone(),
                        ..Default::default()
                    }),
                    privileged: self.privileged,
                    namespace_options: self.sandbox_namespace_options(),
                    run_as_user: self.run_as_user.map(|value| Int64Value { value }),
                    readonly_rootfs: self.read_only_root,
                    no_new_privs: !self.allow_privilege_escalation,
                    seccomp: Some(SecurityProfile {
                        profile_type: if self.seccomp_unconfined {
                            ProfileType::Unconfined
                        } else {
                            ProfileType::RuntimeDefault
                        } as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    fn sandbox_namespace_options(&self) -> Option<NamespaceOption> {
        Some(NamespaceOption {
            network: NamespaceMode::Node as i32,
            pid: if self.host_pid {
                NamespaceMode::Node
            } else {
                NamespaceMode::Container
            } as i32,
            ipc: NamespaceMode::Pod as i32,
            ..Default::default()
        })
    }
}

/// A pod's names, and the `io.kubernetes.*` labels kubelet puts on its sandbox and containers.
pub struct PodIdentity {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

impl PodIdentity {
    pub fn labels(&self, container: Option<&str>) -> HashMap<String, String> {
        use collector::cri::names::{
            CONTAINER_NAME_LABEL, POD_NAME_LABEL, POD_NAMESPACE_LABEL, POD_UID_LABEL,
        };
        let mut labels: HashMap<String, String> = [
            (POD_NAME_LABEL, self.name.as_str()),
            (POD_NAMESPACE_LABEL, self.namespace.as_str()),
            (POD_UID_LABEL, self.uid.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if let Some(c) = container {
            labels.insert(CONTAINER_NAME_LABEL.into(), c.into());
        }
        labels
    }
}

/// `256Mi`, `1Gi`, `500M`, `1024` in bytes.
fn quantity_bytes(q: &str) -> anyhow::Result<i64> {
    let units: [(&str, i64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return Ok(n.parse::<i64>()? * factor);
        }
    }
    q.parse().with_context(|| format!("memory quantity {q}"))
}

/// `500m` or `2` in millicores.
fn quantity_millis(q: &str) -> anyhow::Result<i64> {
    match q.strip_suffix('m') {
        Some(m) => Ok(m.parse()?),
        None => match q.parse::<f64>() {
            Ok(cores) => Ok((cores * 1000.0).round() as i64),
            Err(_) => bail!("cpu quantity {q}"),
        },
    }
}

use serde::Deserialize as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_parses_into_least_privilege() {
        let ds = DaemonSet::load().unwrap();
        assert!(ds.host_pid);
        assert_eq!(ds.capabilities_drop, ["ALL"]);
        assert!(!ds.capabilities_add.is_empty());
        assert!(
            ds.host_mounts
                .iter()
                .any(|m| m.1 == "/sys/fs/cgroup" && m.2)
        );
        assert_eq!(quantity_bytes("256Mi").unwrap(), 256 << 20);
        assert_eq!(quantity_millis("500m").unwrap(), 500);
    }
}
