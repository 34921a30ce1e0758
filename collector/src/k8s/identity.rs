//! Pod and container identity from a cgroup path, for both kubelet cgroup drivers.
//!
//! systemd driver:
//!   /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_>.slice/cri-containerd-<id>.scope
//!   /kubepods.slice/kubepods-pod<uid>.slice/crio-<id>.scope            (guaranteed: directly under)
//! cgroupfs driver:
//!   /kubepods/besteffort/pod<uid>/<id>
//!   /kubepods/pod<uid>/<id>                                             (guaranteed)
//! The kubepods root may sit below a prefix (e.g. a kind node's /kubelet.slice/…).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// cgroupfs driver: a bare id says nothing about the runtime.
    Unknown,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Docker => "docker",
            Self::Unknown => "",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    /// With dashes, as the API server writes it.
    pub uid: String,
    pub qos: QosClass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    pub id: String,
    pub runtime: Runtime,
}

/// What a cgroup path is, in Kubernetes terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The pod-level cgroup.
    Pod(PodRef),
    /// A container's own cgroup.
    Container(PodRef, ContainerRef),
    /// Something below a pod that is not a container's cgroup: CRI-O's conmon, or a cgroup a
    /// container created inside its own. Part of the pod, not a container of its own.
    PodInternal(PodRef),
}

/// Identifies a cgroup path; `None` for anything that is not under a pod.
pub fn identify(path: &str) -> Option<Identity> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let root = segments
        .iter()
        .position(|s| *s == "kubepods.slice" || *s == "kubepods")?;
    let systemd = segments[root] == "kubepods.slice";
    let rest = &segments[root + 1..];
    let (qos, pod_segment, after) = match rest {
        [qos_seg, pod, after @ ..] if qos_of(qos_seg, systemd).is_some() => {
            (qos_of(qos_seg, systemd)?, *pod, after)
        }
        [pod, after @ ..] => (QosClass::Guaranteed, *pod, after),
        [] => return None,
    };
    let uid = pod_uid(pod_segment, systemd, qos)?;
    let pod = PodRef { uid, qos };
    match after {
        [] => Some(Identity::Pod(pod)),
        [container] => Some(match container_ref(container, systemd) {
            Some(c) => Identity::Container(pod, c),
            None => Identity::PodInternal(pod),
        }),
        _ => Some(Identity::PodInternal(pod)),
    }
}

fn qos_of(segment: &str, systemd: bool) -> Option<QosClass> {
    match (segment, systemd) {
        ("kubepods-burstable.slice", true) | ("burstable", false) => Some(QosClass::Burstable),
        ("kubepods-besteffort.slice", true) | ("besteffort", false) => Some(QosClass::BestEffort),
        _ => None,
    }
}

/// `kubepods-burstable-pod<uid_with_underscores>.slice` or `pod<uid>`.
fn pod_uid(segment: &str, systemd: bool, qos: QosClass) -> Option<String> {
    let uid = if systemd {
        let prefix = match qos {
            QosClass::Guaranteed => "kubepods-pod",
            QosClass::Burstable => "kubepods-burstable-pod",
            QosClass::BestEffort => "kubepods-besteffort-pod",
        };
        segment.strip_prefix(prefix)?.strip_suffix(".slice")?
    } else {
        segment.strip_prefix("pod")?
    };
    let valid = !uid.is_empty()
        && uid.len() <= 64
        && uid
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
    valid.then(|| uid.replace('_', "-"))
}

fn container_ref(segment: &str, systemd: bool) -> Option<ContainerRef> {
    let (id, runtime) = if systemd {
        let scope = segment.strip_suffix(".scope")?;
        if scope.starts_with("crio-conmon-") {
            return None;
        }
        if let Some(id) = scope.strip_prefix("cri-containerd-") {
            (id, Runtime::Containerd)
        } else if let Some(id) = scope.strip_prefix("crio-") {
            (id, Runtime::CriO)
        } else if let Some(id) = scope.strip_prefix("docker-") {
            (id, Runtime::Docker)
        } else {
            return None;
        }
    } else if let Some(id) = segment.strip_prefix("crio-") {
        if id.starts_with("conmon-") {
            return None;
        }
        (id, Runtime::CriO)
    } else {
        (segment, Runtime::Unknown)
    };
    let valid = (12..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| ContainerRef {
        id: id.to_owned(),
        runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "5f0f7d5c-1b2a-4c3d-9e8f-0a1b2c3d4e5f";
    const ID: &str = "3b1f9f8e2c7d6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b";

    fn pod(qos: QosClass) -> PodRef {
        PodRef {
            uid: UID.into(),
            qos,
        }
    }

    fn container(runtime: Runtime) -> ContainerRef {
        ContainerRef {
            id: ID.into(),
            runtime,
        }
    }

    #[test]
    fn systemd_driver_all_qos_classes_and_runtimes() {
        let u = UID.replace('-', "_");
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                Identity::Container(pod(QosClass::Burstable), container(Runtime::Containerd)),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope"
                ),
                Identity::Container(pod(QosClass::BestEffort), container(Runtime::CriO)),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/docker-{ID}.scope"),
                Identity::Container(pod(QosClass::Guaranteed), container(Runtime::Docker)),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice"),
                Identity::Pod(pod(QosClass::Guaranteed)),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{ID}.scope"
                ),
                Identity::PodInternal(pod(QosClass::Burstable)),
            ),
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubepods.slice/kubepods-pod{u}.slice"
                ),
                Identity::Pod(pod(QosClass::Guaranteed)),
            ),
        ];
        for (path, expected) in cases {
            assert_eq!(identify(&path), Some(expected), "{path}");
        }
    }

    #[test]
    fn cgroupfs_driver() {
        assert_eq!(
            identify(&format!("/kubepods/burstable/pod{UID}/{ID}")),
            Some(Identity::Container(
                pod(QosClass::Burstable),
                container(Runtime::Unknown)
            ))
        );
        assert_eq!(
            identify(&format!("/kubepods/pod{UID}/{ID}")),
            Some(Identity::Container(
                pod(QosClass::Guaranteed),
                container(Runtime::Unknown)
            ))
        );
        assert_eq!(
            identify(&format!("/kubepods/besteffort/pod{UID}")),
            Some(Identity::Pod(pod(QosClass::BestEffort)))
        );
        assert_eq!(
            identify(&format!("/kubepods/pod{UID}/{ID}/nested")),
            Some(Identity::PodInternal(pod(QosClass::Guaranteed)))
        );
    }

    #[test]
    fn not_pods() {
        for path in [
            "/",
            "/system.slice/containerd.service",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/burstable",
            "/kubepods/besteffort/podnot-a-uid!",
            "/user.slice/user-0.slice/session-1.scope",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod1.slice",
        ] {
            assert_eq!(identify(path), None, "{path}");
        }
    }

    #[test]
    fn unknown_leaf_under_a_pod_is_pod_internal() {
        assert_eq!(
            identify(&format!("/kubepods/pod{UID}/not-a-container-id")),
            Some(Identity::PodInternal(pod(QosClass::Guaranteed)))
        );
    }
}
