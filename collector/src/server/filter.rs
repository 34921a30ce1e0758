//! Watch filters: which pods and cgroups a subscriber asked for.

use std::collections::HashSet;

use tonic::Status;

use crate::proto;

/// What one Watch subscriber wants to see. The default passes everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    namespace: Option<String>,
    pod: Option<String>,
    /// Normalized: starts with '/', no trailing '/', never "/" itself (that is no filter).
    prefix: Option<String>,
}

impl Filter {
    /// Checks and normalizes a request's filters; malformed ones are the caller's error.
    pub fn from_request(req: &proto::WatchRequest) -> Result<Self, Status> {
        let namespace = non_empty(&req.namespace);
        if let Some(ns) = &namespace {
            check_dns_label("namespace", ns)?;
        }
        let pod = non_empty(&req.pod);
        if let Some(pod) = &pod {
            check_pod(pod)?;
        }
        let prefix = match non_empty(&req.cgroup_path_prefix) {
            None => None,
            Some(p) => normalize_prefix(&p)?,
        };
        Ok(Self {
            namespace,
            pod,
            prefix,
        })
    }

    /// Whether only pod cgroups can pass (a namespace or pod was asked for).
    fn pods_only(&self) -> bool {
        self.namespace.is_some() || self.pod.is_some()
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn pod_passes(&self, pod: &proto::PodStats) -> bool {
        let reference = pod.pod_ref.as_ref();
        let field = |f: fn(&proto::PodReference) -> &str| reference.map(f).unwrap_or_default();
        if let Some(ns) = &self.namespace
            && field(|r| &r.namespace) != ns
        {
            return false;
        }
        if let Some(want) = &self.pod
            && field(|r| &r.name) != want
            && field(|r| &r.uid) != want
        {
            return false;
        }
        self.path_passes(&pod.cgroup_path)
    }

    /// Whether a path is at or below the prefix (component by component).
    pub fn path_passes(&self, path: &str) -> bool {
        let Some(prefix) = &self.prefix else {
            return true;
        };
        path.strip_prefix(prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The cgroup filter for one snapshot: which pod cgroups passed decides which cgroups do.
    pub fn cgroups<'a>(&'a self, pods: &'a [proto::PodStats]) -> CgroupFilter<'a> {
        let pod_paths = self.pods_only().then(|| {
            pods.iter()
                .filter(|p| self.pod_passes(p))
                .map(|p| p.cgroup_path.as_str())
                .collect()
        });
        CgroupFilter {
            filter: self,
            pod_paths,
        }
    }
}

/// Cgroups that pass: under the prefix and, with a namespace or pod filter, inside a pod that
/// passed.
pub struct CgroupFilter<'a> {
    filter: &'a Filter,
    pod_paths: Option<HashSet<&'a str>>,
}

impl CgroupFilter<'_> {
    pub fn passes(&self, path: &str) -> bool {
        if !self.filter.path_passes(path) {
            return false;
        }
        let Some(pods) = &self.pod_paths else {
            return true;
        };
        // The path itself or any ancestor is a passing pod's cgroup.
        let mut candidate = path;
        loop {
            if pods.contains(candidate) {
                return true;
            }
            match candidate.rfind('/') {
                Some(0) | None => return false,
                Some(i) => candidate = &candidate[..i],
            }
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// RFC 1123 label: what Kubernetes allows as a namespace name.
pub fn check_dns_label(what: &str, s: &str) -> Result<(), Status> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let valid = s.len() <= 63 && s.chars().all(ok_char) && !s.starts_with('-') && !s.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{what} = {s:?} is not a DNS label (lowercase letters, digits and '-', at most 63)"
        )))
    }
}

/// A pod name (RFC 1123 subdomain, at most 253) or a uid (which has the same characters).
fn check_pod(s: &str) -> Result<(), Status> {
    let valid = s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if valid {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "pod = {s:?} is neither a pod name (RFC 1123 subdomain) nor a uid"
        )))
    }
}

fn normalize_prefix(p: &str) -> Result<Option<String>, Status> {
    let bad = |why: &str| {
        Err(Status::invalid_argument(format!(
            "cgroup_path_prefix = {p:?} {why}"
        )))
    };
    if !p.starts_with('/') {
        return bad("must start with '/' (paths are relative to the cgroup2 mount)");
    }
    if p.contains('\0') || p.split('/').any(|c| c == "." || c == "..") {
        return bad("must not contain '.', '..' or NUL");
    }
    let trimmed = p.trim_end_matches('/');
    // Collapse "//" so the prefix compares like the collector's own paths.
    let parts: Vec<&str> = trimmed.split('/').filter(|c| !c.is_empty()).collect();
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!("/{}", parts.join("/"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(namespace: &str, pod: &str, prefix: &str) -> Result<Filter, Status> {
        Filter::from_request(&proto::WatchRequest {
            namespace: namespace.into(),
            pod: pod.into(),
            cgroup_path_prefix: prefix.into(),
            ..Default::default()
        })
    }

    fn pod(ns: &str, name: &str, uid: &str, path: &str) -> proto::PodStats {
        proto::PodStats {
            pod_ref: Some(proto::PodReference {
                name: name.into(),
                namespace: ns.into(),
                uid: uid.into(),
            }),
            cgroup_path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn malformed_filters_are_invalid_argument() {
        for (ns, pod, prefix) in [
            ("Default", "", ""),
            ("-x", "", ""),
            (&"a".repeat(64), "", ""),
            ("", "UPPER", ""),
            ("", "a..b", ""),
            ("", "", "kubepods"),
            ("", "", "/kubepods/../etc"),
            ("", "", "/a/./b"),
        ] {
            let err = filter(ns, pod, prefix).unwrap_err();
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{ns} {pod} {prefix}"
            );
        }
        assert!(
            filter("", "", "/").unwrap().is_empty(),
            "root prefix is no filter"
        );
        assert!(filter("", "", "").unwrap().is_empty());
    }

    #[test]
    fn prefixes_match_whole_components() {
        let f = filter("", "", "/kubepods//burstable/").unwrap();
        assert!(f.path_passes("/kubepods/burstable"));
        assert!(f.path_passes("/kubepods/burstable/pod1/c1"));
        assert!(!f.path_passes("/kubepods/burstable2"));
        assert!(!f.path_passes("/kubepods"));
        assert!(!f.path_passes("/"));
    }

    #[test]
    fn namespace_and_pod_select_pods_and_the_cgroups_inside_them() {
        let pods = [
            pod("web", "front", "uid-1", "/kubepods/pod1"),
            pod("db", "pg", "uid-2", "/kubepods/burstable/pod2"),
        ];
        let f = filter("web", "", "").unwrap();
        assert!(f.pod_passes(&pods[0]) && !f.pod_passes(&pods[1]));
        let cg = f.cgroups(&pods);
        assert!(cg.passes("/kubepods/pod1"));
        assert!(cg.passes("/kubepods/pod1/c1"));
        assert!(!cg.passes("/kubepods/pod10"));
        assert!(!cg.passes("/kubepods/burstable/pod2/c"));
        assert!(!cg.passes("/system.slice"), "non-pod cgroups are out");

        let by_uid = filter("", "uid-2", "").unwrap();
        assert!(by_uid.pod_passes(&pods[1]) && !by_uid.pod_passes(&pods[0]));
        let by_name = filter("", "front", "").unwrap();
        assert!(by_name.pod_passes(&pods[0]));

        // A prefix alone lets non-pod cgroups through.
        let f = filter("", "", "/system.slice").unwrap();
        assert!(f.cgroups(&pods).passes("/system.slice/cron.service"));
        assert!(!f.pod_passes(&pods[0]));
    }
}
