//! Filesystem usage the runtime measures, read as kubelet's CRI stats provider reads it
//! (`cri_stats_provider.go`): `ImageFsInfo` for the image filesystem (and the container one on
//! a runtime with a split image disk), `ListContainerStats` for each container's writable layer
//! (its rootfs). Both give used bytes and inodes; capacity comes from statfs of the filesystem's
//! mountpoint, left out when that path is not visible here, as kubelet leaves it out when
//! cAdvisor does not know the device.

use std::{collections::HashMap, path::Path, time::Duration};

use super::{
    endpoint::Connection,
    proto::{FilesystemUsage, ImageFsInfoRequest, ListContainerStatsRequest},
};
use crate::hostfs::statfs::{self, FsCapacity};

/// How often the runtime is asked (kubelet's housekeeping pace; containerd refreshes its own
/// snapshot usage every 10 s too).
pub const DEFAULT_STATS_PERIOD: Duration = Duration::from_secs(10);

/// One `FilesystemUsage` and its filesystem's statfs.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeFsUsage {
    /// When the runtime measured it, Unix ns.
    pub time_unix_nano: u64,
    pub used_bytes: Option<u64>,
    pub inodes_used: Option<u64>,
    pub mountpoint: String,
    /// statfs of `mountpoint`; `None` when it is not visible from here.
    pub capacity: Option<FsCapacity>,
}

/// What the runtime last said, by container id for writable layers.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RuntimeFs {
    pub image_fs: Option<RuntimeFsUsage>,
    /// The first container filesystem when the runtime reports one, else the image filesystem
    /// (kubelet's CRI provider reports the image filesystem as both).
    pub container_fs: Option<RuntimeFsUsage>,
    pub writable_layers: HashMap<String, RuntimeFsUsage>,
}

/// Asks the runtime for both lists and statfs's every mountpoint once.
pub async fn fetch(conn: &mut Connection) -> Result<RuntimeFs, tonic::Status> {
    let info = conn
        .images
        .image_fs_info(ImageFsInfoRequest::default())
        .await?
        .into_inner();
    let stats = conn
        .runtime
        .list_container_stats(ListContainerStatsRequest::default())
        .await?
        .into_inner()
        .stats;
    let mut mountpoints: Vec<String> = info
        .image_filesystems
        .iter()
        .chain(&info.container_filesystems)
        .chain(stats.iter().filter_map(|s| s.writable_layer.as_ref()))
        .filter_map(mountpoint)
        .collect();
    mountpoints.sort();
    mountpoints.dedup();
    let capacities = tokio::task::spawn_blocking(move || {
        mountpoints
            .into_iter()
            .map(|m| {
                let capacity = statfs::statfs(Path::new(&m))
                    .inspect_err(|e| tracing::debug!(mountpoint = m, error = %e, "statfs"))
                    .ok();
                (m, capacity)
            })
            .collect::<HashMap<_, _>>()
    })
    .await
    .map_err(|e| tonic::Status::internal(format!("statfs task: {e}")))?;
    let usage = |fs: &FilesystemUsage| {
        let mountpoint = mountpoint(fs).unwrap_or_default();
        RuntimeFsUsage {
            time_unix_nano: u64::try_from(fs.timestamp).unwrap_or(0),
            used_bytes: fs.used_bytes.map(|v| v.value),
            inodes_used: fs.inodes_used.map(|v| v.value),
            capacity: capacities.get(&mountpoint).copied().flatten(),
            mountpoint,
        }
    };
    let image_fs = info.image_filesystems.first().map(usage);
    let container_fs = info
        .container_filesystems
        .first()
        .map(usage)
        .or_else(|| image_fs.clone());
    let writable_layers = stats
        .iter()
        .filter_map(|s| {
            let id = s.attributes.as_ref()?.id.clone();
            Some((id, usage(s.writable_layer.as_ref()?)))
        })
        .collect();
    Ok(RuntimeFs {
        image_fs,
        container_fs,
        writable_layers,
    })
}

fn mountpoint(fs: &FilesystemUsage) -> Option<String> {
    fs.fs_id
        .as_ref()
        .map(|id| id.mountpoint.clone())
        .filter(|m| !m.is_empty())
}
