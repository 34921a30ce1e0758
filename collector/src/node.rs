//! Facts about this node that every snapshot carries.

use crate::cgroupfs::CgroupMounts;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The Kubernetes node name (`--node-name`, in a DaemonSet from `spec.nodeName`); the
    /// hostname when not given.
    pub node_name: String,
    pub hostname: String,
    pub kernel_release: String,
    pub mounts: CgroupMounts,
    pub online_cpus: u32,
    /// Boot time (btime of /proc/stat), Unix ns; 0 when unknown.
    pub boot_time_unix_nano: u64,
}

impl NodeInfo {
    pub fn discover(mounts: CgroupMounts, node_name: Option<String>) -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        // SAFETY: sysconf has no memory-safety preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let hostname = read("/proc/sys/kernel/hostname");
        Self {
            node_name: node_name
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| hostname.clone()),
            hostname,
            kernel_release: read("/proc/sys/kernel/osrelease"),
            mounts,
            online_cpus: u32::try_from(online).unwrap_or(0),
            boot_time_unix_nano: procfs::boot_time_secs().map_or(0, |s| s * 1_000_000_000),
        }
    }
}
