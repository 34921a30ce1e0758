//! The name table: pod uid → name and namespace, container id → name, and which ids are sandboxes.

use std::collections::{HashMap, HashSet};

use super::proto::{Container, PodSandbox};

/// Labels kubelet sets on every sandbox (`pod.*`) and container (all four).
pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NameTable {
    pods: HashMap<String, PodName>,
    containers: HashMap<String, String>,
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
                table.pods.insert(
                    uid,
                    PodName {
                        name,
                        namespace: namespace.unwrap_or_default(),
                    },
                );
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
                table.containers.insert(container.id.clone(), name);
            }
        }
        table
    }

    pub fn pod(&self, uid: &str) -> Option<&PodName> {
        self.pods.get(uid)
    }

    pub fn container(&self, id: &str) -> Option<&str> {
        self.containers.get(id).map(String::as_str)
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
    fn names_from_kubelet_labels_with_metadata_fallback() {
        let sandboxes = [
            PodSandbox {
                id: "sb1".into(),
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
        let web = PodName {
            name: "web-0".into(),
            namespace: "shop".into(),
        };
        assert_eq!(t.pod("uid-1"), Some(&web));
        assert_eq!(t.pod("other-uid"), None);
        assert_eq!(
            t.pod("uid-2").map(|p| p.namespace.as_str()),
            Some("kube-system")
        );
        assert_eq!(t.container("c1"), Some("nginx"));
        assert_eq!(t.container("c2"), Some("sidecar"));
        assert_eq!(t.container("c3"), None);
        assert!(t.is_sandbox("sb1") && t.is_sandbox("sb3") && !t.is_sandbox("c1"));
        assert_eq!((t.pod_count(), t.container_count()), (2, 2));
    }
}
