//! Filesystem blocks of the Summary, each filled as kubelet fills it: the node fs from statfs,
//! the runtime's filesystems and writable layers from CRI, logs and volumes from the du walks,
//! and a pod's ephemeral storage as their sum (`helper.go` `calcEphemeralStorage`).

use crate::{
    cri::stats::RuntimeFsUsage,
    host_scan::{logs::LogFiles, volumes::Volume},
    hostfs::{du::Usage, statfs::FsCapacity},
    proto,
    unix_time::unix_nanos,
};

/// kubelet's `RootFsStats`: the whole filesystem, used = capacity − free.
pub fn node_fs(fs: &FsCapacity) -> proto::FsStats {
    proto::FsStats {
        used_bytes: Some(fs.used_bytes()),
        inodes_used: Some(fs.inodes_used()),
        ..capacity(fs)
    }
}

/// kubelet's `rootFsInfoToFsStats`: a filesystem's size with nothing used yet.
fn capacity(fs: &FsCapacity) -> proto::FsStats {
    proto::FsStats {
        time_unix_nano: unix_nanos(fs.time),
        available_bytes: Some(fs.available_bytes),
        capacity_bytes: Some(fs.capacity_bytes),
        used_bytes: None,
        inodes_free: Some(fs.inodes_free),
        inodes: Some(fs.inodes),
        inodes_used: None,
    }
}

/// The node fs's size (or nothing, when it is unknown) as the base of a usage on it.
fn on_node_fs(node_fs: Option<&FsCapacity>) -> proto::FsStats {
    node_fs.map(capacity).unwrap_or_default()
}

/// Adds a usage measured at `time` (kubelet's `addUsage` and `maxUpdateTime`).
fn add(stats: &mut proto::FsStats, used: Usage, time: u64) {
    stats.used_bytes = Some(stats.used_bytes.unwrap_or(0) + used.bytes);
    stats.inodes_used = Some(stats.inodes_used.unwrap_or(0) + used.inodes);
    stats.time_unix_nano = stats.time_unix_nano.max(time);
}

/// What the runtime measured (image filesystem, a writable layer), with its filesystem's size
/// when statfs could see it.
pub fn runtime(usage: &RuntimeFsUsage) -> proto::FsStats {
    let mut stats = usage.capacity.as_ref().map(capacity).unwrap_or_default();
    stats.time_unix_nano = usage.time_unix_nano;
    stats.used_bytes = usage.used_bytes;
    stats.inodes_used = usage.inodes_used;
    stats
}

/// A directory of log files on the node fs: its size, plus the files' usage when it has any.
pub fn logs(node_fs: Option<&FsCapacity>, files: &LogFiles) -> proto::FsStats {
    let mut stats = on_node_fs(node_fs);
    let time = unix_nanos(files.time);
    match files.used {
        Some(used) => add(&mut stats, used, time),
        None => stats.time_unix_nano = stats.time_unix_nano.max(time),
    }
    stats
}

/// A file measured on the node fs (the pod's etc-hosts).
pub fn file(node_fs: Option<&FsCapacity>, used: Usage, time: u64) -> proto::FsStats {
    let mut stats = on_node_fs(node_fs);
    add(&mut stats, used, time);
    stats
}

/// kubelet's `VolumeStats`: every figure set, from du (or statfs) and statfs of the volume.
pub fn volume(v: &Volume) -> proto::VolumeStats {
    let fs = proto::FsStats {
        used_bytes: Some(v.used.bytes),
        inodes_used: Some(v.used.inodes),
        time_unix_nano: unix_nanos(v.time),
        ..capacity(&v.capacity)
    };
    proto::VolumeStats {
        name: v.name.clone(),
        fs: Some(fs),
        plugin: v.plugin.clone(),
        local_ephemeral: v.local_ephemeral,
    }
}

/// The parts of a pod's ephemeral storage.
pub struct EphemeralParts<'a> {
    pub node_fs: Option<&'a FsCapacity>,
    pub containers: &'a [proto::ContainerStats],
    pub volumes: &'a [proto::VolumeStats],
    pub pod_logs: Option<&'a proto::FsStats>,
    pub etc_hosts: Option<&'a proto::FsStats>,
}

/// kubelet's `calcEphemeralStorage` (CRI provider): the node fs's size; every container's rootfs
/// and, when it has a rootfs, its logs (bytes and inodes); local ephemeral volumes; the pod's
/// own log files; etc-hosts. `None` when none of them, nor the node fs, is known.
pub fn ephemeral(parts: &EphemeralParts) -> Option<proto::FsStats> {
    let mut stats = on_node_fs(parts.node_fs);
    let mut known = parts.node_fs.is_some();
    let mut add_fs = |stats: &mut proto::FsStats, part: &proto::FsStats| {
        stats.used_bytes = sum(stats.used_bytes, part.used_bytes);
        stats.inodes_used = sum(stats.inodes_used, part.inodes_used);
        stats.time_unix_nano = stats.time_unix_nano.max(part.time_unix_nano);
        known = true;
    };
    for c in parts.containers {
        if let Some(rootfs) = &c.rootfs {
            add_fs(&mut stats, rootfs);
            if let Some(logs) = &c.logs {
                add_fs(&mut stats, logs);
            }
        }
    }
    for v in parts.volumes.iter().filter(|v| v.local_ephemeral) {
        if let Some(fs) = &v.fs {
            add_fs(&mut stats, fs);
        }
    }
    for part in [parts.pod_logs, parts.etc_hosts].into_iter().flatten() {
        add_fs(&mut stats, part);
    }
    known.then_some(stats)
}

/// kubelet's `addUsage`: absent + absent stays absent.
fn sum(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn node() -> FsCapacity {
        FsCapacity {
            capacity_bytes: 1000,
            free_bytes: 400,
            available_bytes: 300,
            inodes: 100,
            inodes_free: 60,
            fs_type: 0,
            time: UNIX_EPOCH + Duration::from_secs(10),
        }
    }

    #[test]
    fn node_fs_is_the_whole_filesystem() {
        let s = node_fs(&node());
        assert_eq!(
            (s.capacity_bytes, s.available_bytes, s.used_bytes),
            (Some(1000), Some(300), Some(600))
        );
        assert_eq!(
            (s.inodes, s.inodes_free, s.inodes_used),
            (Some(100), Some(60), Some(40))
        );
    }

    #[test]
    fn ephemeral_storage_sums_as_kubelet_does() {
        let at = |s: u64| s * 1_000_000_000;
        let rootfs = proto::FsStats {
            time_unix_nano: at(20),
            used_bytes: Some(100),
            inodes_used: Some(5),
            ..Default::default()
        };
        let logs = proto::FsStats {
            time_unix_nano: at(30),
            used_bytes: Some(10),
            inodes_used: Some(1),
            ..Default::default()
        };
        let with_rootfs = proto::ContainerStats {
            rootfs: Some(rootfs),
            logs: Some(logs),
            ..Default::default()
        };
        // Logs without a rootfs are not counted (kubelet's addContainerUsage).
        let logs_only = proto::ContainerStats {
            logs: Some(logs),
            ..Default::default()
        };
        let volume = |local_ephemeral, bytes| proto::VolumeStats {
            fs: Some(proto::FsStats {
                time_unix_nano: at(15),
                used_bytes: Some(bytes),
                inodes_used: Some(2),
                ..Default::default()
            }),
            local_ephemeral,
            ..Default::default()
        };
        let volumes = [volume(true, 1000), volume(false, 50_000)];
        let etc_hosts = file(
            Some(&node()),
            Usage {
                bytes: 4096,
                inodes: 1,
            },
            at(5),
        );
        let s = ephemeral(&EphemeralParts {
            node_fs: Some(&node()),
            containers: &[with_rootfs, logs_only],
            volumes: &volumes,
            pod_logs: None,
            etc_hosts: Some(&etc_hosts),
        })
        .unwrap();
        assert_eq!(s.used_bytes, Some(100 + 10 + 1000 + 4096));
        assert_eq!(s.inodes_used, Some(5 + 1 + 2 + 1));
        assert_eq!(s.time_unix_nano, at(30), "the newest part's time");
        assert_eq!(
            (s.capacity_bytes, s.available_bytes),
            (Some(1000), Some(300))
        );
        let nothing = EphemeralParts {
            node_fs: None,
            containers: &[],
            volumes: &[],
            pod_logs: None,
            etc_hosts: None,
        };
        assert_eq!(ephemeral(&nothing), None);
    }

    #[test]
    fn an_empty_log_directory_has_size_but_no_usage() {
        let files = LogFiles {
            used: None,
            time: UNIX_EPOCH + Duration::from_secs(11),
        };
        let s = logs(Some(&node()), &files);
        assert_eq!((s.used_bytes, s.inodes_used), (None, None));
        assert_eq!(s.capacity_bytes, Some(1000));
        assert_eq!(s.time_unix_nano, 11_000_000_000);
    }
}
