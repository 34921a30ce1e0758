//! One pod's volumes and etc-hosts under the kubelet root dir, measured as kubelet's volume
//! stats calculator does (`volume_stat_calculator.go`): du (`MetricsDu`) for the volumes kubelet
//! keeps on the node's disk or in tmpfs (emptyDir, configMap, secret, projected, downwardAPI,
//! gitRepo), statfs (`MetricsStatFS`, and what CSI drivers answer `NodeGetVolumeStats` with) for
//! mounted persistent volumes. Without the API server there is no pod spec, so a volume is known
//! by its directory: `pods/<uid>/volumes/<plugin>/<name>`.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::hostfs::{
    du::{self, Budget, Usage},
    statfs::{self, FsCapacity},
};

/// Plugins whose volumes kubelet measures with du.
const DU_PLUGINS: [&str; 6] = [
    "kubernetes.io~empty-dir",
    "kubernetes.io~configmap",
    "kubernetes.io~secret",
    "kubernetes.io~projected",
    "kubernetes.io~downward-api",
    "kubernetes.io~git-repo",
];
const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
/// kubelet's `IsLocalEphemeralVolume` besides emptyDir on disk.
const LOCAL_EPHEMERAL: [&str; 2] = ["kubernetes.io~configmap", "kubernetes.io~git-repo"];
/// CSI volumes are mounted one level down: `kubernetes.io~csi/<pv>/mount`.
const CSI: &str = "kubernetes.io~csi";

/// A measured volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub plugin: String,
    /// Counted in the pod's ephemeral storage.
    pub local_ephemeral: bool,
    /// du of the tree, or the filesystem's used bytes and inodes for a statfs-measured volume.
    pub used: Usage,
    /// statfs of the volume's path.
    pub capacity: FsCapacity,
    pub time: SystemTime,
}

/// A file or tree measured by du, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    pub used: Usage,
    pub time: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Du(#[from] du::DuError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Every measurable volume of the pod whose directory is `pod_dir`, sorted by plugin and name.
/// A volume that cannot be measured is left out (as kubelet leaves it out) and its error pushed
/// to `errors`.
pub fn pod_volumes(
    pod_dir: &Path,
    budget: &mut Budget,
    errors: &mut Vec<VolumeError>,
) -> Vec<Volume> {
    let root = pod_dir.join("volumes");
    let Ok(root_meta) = fs::metadata(&root) else {
        return Vec::new(); // a pod without volumes has no directory
    };
    let mut volumes = Vec::new();
    for (plugin, plugin_dir) in sorted_dirs(&root, errors) {
        for (name, dir) in sorted_dirs(&plugin_dir, errors) {
            match measure(&plugin, &dir, root_meta.dev(), budget) {
                Ok(Some((used, capacity, mounted))) => volumes.push(Volume {
                    local_ephemeral: (plugin == EMPTY_DIR && !mounted)
                        || LOCAL_EPHEMERAL.contains(&plugin.as_str()),
                    name,
                    plugin: plugin.clone(),
                    used,
                    capacity,
                    time: SystemTime::now(),
                }),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    volumes
}

/// (used, capacity, whether the volume is a mount of its own), or `None` for a volume kubelet
/// has no usage for (an unmounted persistent volume).
fn measure(
    plugin: &str,
    dir: &Path,
    volumes_dev: u64,
    budget: &mut Budget,
) -> Result<Option<(Usage, FsCapacity, bool)>, VolumeError> {
    let io_err = |source| VolumeError::Io {
        path: dir.to_owned(),
        source,
    };
    if DU_PLUGINS.contains(&plugin) {
        let mounted = fs::metadata(dir).map_err(io_err)?.dev() != volumes_dev;
        let used = du::disk_usage(dir, budget)?;
        let capacity = statfs::statfs(dir).map_err(io_err)?;
        return Ok(Some((used, capacity, mounted)));
    }
    let mount = if plugin == CSI {
        dir.join("mount")
    } else {
        dir.to_owned()
    };
    // Persistent volumes: only a mounted one has a filesystem of its own to report.
    let Ok(meta) = fs::metadata(&mount) else {
        return Ok(None);
    };
    let parent_dev = mount
        .parent()
        .and_then(|p| fs::metadata(p).ok())
        .map_or(volumes_dev, |m| m.dev());
    if meta.dev() == parent_dev {
        return Ok(None);
    }
    let capacity = statfs::statfs(&mount).map_err(io_err)?;
    let used = Usage {
        bytes: capacity.used_bytes(),
        inodes: capacity.inodes_used(),
    };
    Ok(Some((used, capacity, true)))
}

/// `pods/<uid>/etc-hosts`, which kubelet writes for every pod that does not mount its own;
/// `None` when absent.
pub fn etc_hosts(pod_dir: &Path, budget: &mut Budget) -> Result<Option<Measured>, du::DuError> {
    let path = pod_dir.join("etc-hosts");
    if fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    let used = du::disk_usage(&path, budget)?;
    Ok(Some(Measured {
        used,
        time: SystemTime::now(),
    }))
}

/// The subdirectories of `dir` (name, path), sorted; unreadable ones reported.
pub(super) fn sorted_dirs(dir: &Path, errors: &mut Vec<VolumeError>) -> Vec<(String, PathBuf)> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(source) => {
            errors.push(VolumeError::Io {
                path: dir.to_owned(),
                source,
            });
            return Vec::new();
        }
    };
    let mut dirs: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    dirs.sort();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unbounded() -> Budget {
        Budget::new(u64::MAX, 1.0)
    }

    #[test]
    fn local_volumes_by_du_with_kubelets_ephemeral_rule() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("pods/uid-1");
        let vol = |plugin: &str, name: &str| pod.join("volumes").join(plugin).join(name);
        for (plugin, name, bytes) in [
            (EMPTY_DIR, "cache", 50_000),
            ("kubernetes.io~configmap", "config", 300),
            ("kubernetes.io~secret", "token", 100),
        ] {
            fs::create_dir_all(vol(plugin, name)).unwrap();
            fs::write(vol(plugin, name).join("data"), vec![0u8; bytes]).unwrap();
        }
        // An unmounted CSI volume (its driver detached it): nothing to report.
        fs::create_dir_all(vol(CSI, "pvc-1234")).unwrap();
        let mut errors = Vec::new();
        let volumes = pod_volumes(&pod, &mut unbounded(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let summary: Vec<(&str, bool)> = volumes
            .iter()
            .map(|v| (v.name.as_str(), v.local_ephemeral))
            .collect();
        assert_eq!(
            summary,
            [("config", true), ("cache", true), ("token", false)],
            "secrets are tmpfs in kubelet's world: not local ephemeral"
        );
        let cache = &volumes[1];
        let expected = du::disk_usage(&vol(EMPTY_DIR, "cache"), &mut unbounded()).unwrap();
        assert_eq!(cache.used, expected);
        assert_eq!(cache.used.inodes, 2);
        assert_eq!(
            cache.capacity.capacity_bytes,
            statfs::statfs(dir.path()).unwrap().capacity_bytes
        );
        assert!(
            pod_volumes(&dir.path().join("pods/none"), &mut unbounded(), &mut errors).is_empty()
        );
    }

    #[test]
    fn etc_hosts_is_one_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(etc_hosts(dir.path(), &mut unbounded()).unwrap(), None);
        fs::write(dir.path().join("etc-hosts"), "127.0.0.1 localhost\n").unwrap();
        let m = etc_hosts(dir.path(), &mut unbounded()).unwrap().unwrap();
        assert_eq!(m.used.inodes, 1);
        assert_eq!(
            m.used.bytes,
            fs::metadata(dir.path().join("etc-hosts")).unwrap().blocks() * 512
        );
    }
}
