//! Pod and container logs under the pod logs dir (`/var/log/pods`), measured as kubelet's host
//! stats provider does (`host_stats_provider.go`): in `<namespace>_<pod>_<uid>/` the files (not
//! directories) of the pod directory itself are the pod's own log usage, and the files of each
//! `<container>/` subdirectory that container's logs; each file counts its du (blocks × 512, one
//! inode). A directory with no files has no used figures; a missing one, no stats at all.

use std::{collections::BTreeMap, fs, io, path::Path, time::SystemTime};

use super::volumes::{VolumeError, sorted_dirs};
use crate::hostfs::du::{self, Budget, Usage};

/// The log files of one directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogFiles {
    /// `None` when the directory holds no files (kubelet's used fields stay unset).
    pub used: Option<Usage>,
    pub time: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodLogs {
    /// Files directly in the pod's log directory.
    pub pod: Option<LogFiles>,
    /// By container name (the subdirectory).
    pub containers: BTreeMap<String, LogFiles>,
}

/// The uid at the end of a pod log directory's name (`<namespace>_<pod>_<uid>`). Names and
/// namespaces cannot hold `_`, so the last one starts the uid.
pub fn uid_of(dir_name: &str) -> Option<&str> {
    let (_, uid) = dir_name.rsplit_once('_')?;
    (!uid.is_empty()).then_some(uid)
}

/// Every pod's logs under `root`, by uid.
pub fn all_pods(
    root: &Path,
    budget: &mut Budget,
    errors: &mut Vec<VolumeError>,
) -> BTreeMap<String, PodLogs> {
    let mut pods = BTreeMap::new();
    for (name, dir) in sorted_dirs(root, errors) {
        let Some(uid) = uid_of(&name) else { continue };
        let mut logs = PodLogs::default();
        match files(&dir, budget) {
            Ok(f) => logs.pod = Some(f),
            Err(e) => errors.push(e),
        }
        for (container, sub) in sorted_dirs(&dir, errors) {
            match files(&sub, budget) {
                Ok(f) => {
                    logs.containers.insert(container, f);
                }
                Err(e) => errors.push(e),
            }
        }
        pods.insert(uid.to_owned(), logs);
    }
    pods
}

/// The summed du of the files (not directories) in `dir`.
fn files(dir: &Path, budget: &mut Budget) -> Result<LogFiles, VolumeError> {
    let io_err = |source| VolumeError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut used: Option<Usage> = None;
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(e)),
        };
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let file = match du::disk_usage(&entry.path(), budget) {
            Ok(u) => u,
            // Rotated away between the listing and the stat.
            Err(du::DuError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let total = used.get_or_insert_with(Usage::default);
        total.bytes += file.bytes;
        total.inodes += file.inodes;
    }
    Ok(LogFiles {
        used,
        time: SystemTime::now(),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn pod_and_container_files_as_kubelet_splits_them() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir
            .path()
            .join("shop_web-0_1b4e28ba-2fa1-11d2-883f-0016d3cca427");
        fs::create_dir_all(pod.join("nginx")).unwrap();
        fs::create_dir_all(pod.join("sidecar")).unwrap();
        fs::write(pod.join("nginx/0.log"), vec![b'x'; 10_000]).unwrap();
        fs::write(pod.join("nginx/0.log.20260101-000000"), vec![b'x'; 5000]).unwrap();
        fs::write(pod.join("extra.log"), "pod-level\n").unwrap();
        fs::create_dir_all(dir.path().join("not-a-pod")).unwrap();
        let mut errors = Vec::new();
        let pods = all_pods(dir.path(), &mut Budget::new(u64::MAX, 1.0), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(pods.len(), 1, "a directory without a uid is not a pod");
        let logs = &pods["1b4e28ba-2fa1-11d2-883f-0016d3cca427"];
        let blocks = |p: &str| fs::metadata(pod.join(p)).unwrap().blocks() * 512;
        let nginx = logs.containers["nginx"].used.unwrap();
        assert_eq!(nginx.inodes, 2);
        assert_eq!(
            nginx.bytes,
            blocks("nginx/0.log") + blocks("nginx/0.log.20260101-000000")
        );
        assert_eq!(
            logs.containers["sidecar"].used, None,
            "no files: no used figures"
        );
        let own = logs.pod.unwrap().used.unwrap();
        assert_eq!((own.inodes, own.bytes), (1, blocks("extra.log")));
    }

    #[test]
    fn uids_from_directory_names() {
        assert_eq!(
            uid_of("kube-system_coredns-5d78c9869d-abcde_0f9e"),
            Some("0f9e")
        );
        assert_eq!(uid_of("nounderscore"), None);
        assert_eq!(uid_of("ns_name_"), None);
    }
}
