//! The name table: pod uid → name and namespace, container id → name, and which ids are sandboxes.

use std::collections::{HashMap, HashSet};

use super::proto::{Container, PodSandbox, PodSandboxState};

/// Labels kubelet sets on every sandbox (`pod.*`) and container (all four).
pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub name: String,
    pub namespace: String,
    /// The sandbox's CreatedAt, Unix ns (kubelet's pod startTime); 0 when the runtime gave none.
    pub created_unix_nano: u64,
    /// Whether that sandbox is ready: a ready one wins over a newer stopped one, as in
    /// kubelet's `removeTerminatedPods`.
    ready: bool,
}

/// A container's name and CreatedAt, Unix ns (kubelet's container startTime).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ContainerName {
    name: String,
    created_unix_nano: u64,
}

/// CRI times are int64 ns; a runtime that leaves one unset (or negative) has not said.
fn unix_nanos(created_at: i64) -> u64 {
    u64::try_from(created_at).unwrap_or(0)
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NameTable {
    pods: HashMap<String, PodName>,
    containers: HashMap<String, ContainerName>,
    /// Sandbox ("pause") containers have cgroups of their own below the pod's, but kubelet's
    /// Summary never lists them as containers.
    sandboxes: HashSet<String>,
}

impl NameTable {
    /// Builds the table from the runtime's lists. Labels come first, as kubelet reads them; the
    /// CRI metadata is the fallback for sandboxes and containers not created by kubelet.
    pub fn from_runtime(sandboxes: &[PodSandbox], containers: &[Container]) -> Self {
        let mut table = Self::default();
        for sandbox in sandboxes {
            let meta = sandbox.metadata.as_ref();
            let label = |key| sandbox.labels.get(key).filter(|v| !v.is_empty()).cloned();
            let uid = label(POD_UID_LABEL).or_else(|| meta.map(|m| m.uid.clone()));
            let name = label(POD_NAME_LABEL).or_else(|| meta.map(|m| m.name.clone()));
            let namespace =
                label(POD_NAMESPACE_LABEL).or_else(|| meta.map(|m| m.namespace.clone()));
            if let (Some(uid), Some(name)) = (uid, name)
                && !uid.is_empty()
                && !name.is_empty()
            {
                let candidate = PodName {
                    name,
                    namespace: namespace.unwrap_or_default(),
                    created_unix_nano: unix_nanos(sandbox.created_at),
                    ready: sandbox.state == PodSandboxState::SandboxReady as i32,
                };
                // A pod whose sandbox was recreated has several: the ready one, else the newest.
                let better = |old: &PodName| {
                    (candidate.ready, candidate.created_unix_nano)
                        > (old.ready, old.created_unix_nano)
                };
                if table.pods.get(&uid).is_none_or(better) {
                    table.pods.insert(uid, candidate);
                }
            }
            if !sandbox.id.is_empty() {
                table.sandboxes.insert(sandbox.id.clone());
            }
        }
        for container in containers {
            let name = container
                .labels
                .get(CONTAINER_NAME_LABEL)
                .filter(|v| !v.is_empty())
                .cloned()
                .or_else(|| container.metadata.as_ref().map(|m| m.name.clone()))
                .filter(|n| !n.is_empty());
            if let Some(name) = name
                && !container.id.is_empty()
            {
                table.containers.insert(
                    container.id.clone(),
                    ContainerName {
                        name,
                        created_unix_nano: unix_nanos(container.created_at),
                    },
                );
            }
        }
        table
    }

    pub fn pod(&self, uid: &str) -> Option<&PodName> {
        self.pods.get(uid)
    }

    pub fn container(&self, id: &str) -> Option<&str> {
        self.containers.get(id).map(|c| c.name.as_str())
    }

    /// The container's CreatedAt from the runtime, Unix ns; `None` when unknown or unset.
    pub fn container_created(&self, id: &str) -> Option<u64> {
        self.containers
            .get(id)
            .map(|c| c.created_unix_nano)
            .filter(|&t| t > 0)
    }

    /// The pod's sandbox CreatedAt, Unix ns; `None` when unknown or unset.
    pub fn pod_created(&self, uid: &str) -> Option<u64> {
        self.pods
            .get(uid)
            .map(|p| p.created_unix_nano)
            .filter(|&t| t > 0)
    }

    pub fn is_sandbox(&self, id: &str) -> bool {
        self.sandboxes.contains(id)
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn container_count(&self) -> usize {
        self.containers.len()
    }

    /// A table that knows only which ids are sandboxes (tests of what depends on that).
    #[cfg(test)]
    pub fn with_sandboxes<'a>(ids: impl IntoIterator<Item = &'a String>) -> Self {
        Self {
            sandboxes: ids.into_iter().cloned().collect(),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::proto::{ContainerMetadata, PodSandboxMetadata};

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_recreated_sandbox_the_ready_one_wins() {
        let sandbox = |id: &str, created_at, state: PodSandboxState| PodSandbox {
            id: id.into(),
            created_at,
            state: state as i32,
            labels: labels(&[(POD_NAME_LABEL, "web-0"), (POD_UID_LABEL, "uid-1")]),
            ..Default::default()
        };
        let old_ready = sandbox("a", 100, PodSandboxState::SandboxReady);
        let new_stopped = sandbox("b", 200, PodSandboxState::SandboxNotready);
        let newer_ready = sandbox("c", 300, PodSandboxState::SandboxReady);
        let t = NameTable::from_runtime(&[old_ready.clone(), new_stopped.clone()], &[]);
        assert_eq!(t.pod_created("uid-1"), Some(100));
        let t = NameTable::from_runtime(&[new_stopped, newer_ready, old_ready], &[]);
        assert_eq!(t.pod_created("uid-1"), Some(300));
    }

    #[test]
    fn names_from_kubelet_labels_with_metadata_fallback() {
        let sandboxes = [
            PodSandbox {
                id: "sb1".into(),
                created_at: 1_700_000_000_123_456_789,
                state: PodSandboxState::SandboxReady as i32,
                labels: labels(&[
                    (POD_NAME_LABEL, "web-0"),
                    (POD_NAMESPACE_LABEL, "shop"),
                    (POD_UID_LABEL, "uid-1"),
                ]),
                // Labels win over metadata, as in kubelet.
                metadata: Some(PodSandboxMetadata {
                    name: "other".into(),
                    uid: "other-uid".into(),
                    namespace: "other-ns".into(),
                    attempt: 0,
                }),
                ..Default::default()
            },
            PodSandbox {
                id: "sb2".into(),
                metadata: Some(PodSandboxMetadata {
                    name: "static".into(),
                    uid: "uid-2".into(),
                    namespace: "kube-system".into(),
                    attempt: 1,
                }),
                ..Default::default()
            },
            // Nameless: only the sandbox id is remembered.
            PodSandbox {
                id: "sb3".into(),
                ..Default::default()
            },
        ];
        let containers = [
            Container {
                id: "c1".into(),
                created_at: 1_700_000_001_000_000_000,
                labels: labels(&[(CONTAINER_NAME_LABEL, "nginx")]),
                ..Default::default()
            },
            Container {
                id: "c2".into(),
                metadata: Some(ContainerMetadata {
                    name: "sidecar".into(),
                    attempt: 0,
                }),
                ..Default::default()
            },
            Container {
                id: "c3".into(),
                ..Default::default()
            },
        ];
        let t = NameTable::from_runtime(&sandboxes, &containers);
        let web = t.pod("uid-1").unwrap();
        assert_eq!(
            (web.name.as_str(), web.namespace.as_str()),
            ("web-0", "shop")
        );
        assert_eq!(t.pod("other-uid"), None);
        assert_eq!(
            t.pod("uid-2").map(|p| p.namespace.as_str()),
            Some("kube-system")
        );
        assert_eq!(t.container("c1"), Some("nginx"));
        assert_eq!(t.pod_created("uid-1"), Some(1_700_000_000_123_456_789));
        assert_eq!(t.container_created("c1"), Some(1_700_000_001_000_000_000));
        assert_eq!(
            t.pod_created("uid-2"),
            None,
            "unset CreatedAt is unknown, not 1970"
        );
        assert_eq!(t.container_created("c2"), None);
        assert_eq!(t.container("c2"), Some("sidecar"));
        assert_eq!(t.container("c3"), None);
        assert!(t.is_sandbox("sb1") && t.is_sandbox("sb3") && !t.is_sandbox("c1"));
        assert_eq!((t.pod_count(), t.container_count()), (2, 2));
    }
}
