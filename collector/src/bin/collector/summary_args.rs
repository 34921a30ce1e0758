//! `serve`'s flags for the parts of kubelet's Summary that live outside cgroupfs: the node fs,
//! volumes, logs and etc-hosts under kubelet's directories, and the system containers.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use collector::store::SystemCgroups;

#[derive(Args, Clone)]
pub struct SummaryArgs {
    /// kubelet's root dir (kubelet's --root-dir): its filesystem is the node fs, and
    /// pods/<uid>/ holds volumes and etc-hosts. Mount it read-only in a DaemonSet ("off": none).
    #[arg(
        long,
        env = "COLLECTOR_KUBELET_ROOT_DIR",
        default_value = "/var/lib/kubelet"
    )]
    pub kubelet_root_dir: String,
    /// kubelet's pod logs dir, for container and pod log usage ("off": none).
    #[arg(long, env = "COLLECTOR_POD_LOGS_DIR", default_value = "/var/log/pods")]
    pub pod_logs_dir: String,
    /// Seconds between du walks of volumes, logs and etc-hosts (kubelet's
    /// --volume-stats-agg-period).
    #[arg(long, env = "COLLECTOR_VOLUME_STATS_INTERVAL_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub volume_stats_interval_secs: u64,
    /// The kubelet's cgroup (kubelet's --kubelet-cgroups); default: the kubelet process's.
    #[arg(long, env = "COLLECTOR_KUBELET_CGROUPS")]
    pub kubelet_cgroups: Option<String>,
    /// The runtime's cgroup (kubelet's --runtime-cgroups); default: the CRI socket peer's.
    #[arg(long, env = "COLLECTOR_RUNTIME_CGROUPS")]
    pub runtime_cgroups: Option<String>,
    /// The cgroup of the node's other daemons, kubelet's "misc" system container (kubelet's
    /// --system-cgroups); none by default.
    #[arg(long, env = "COLLECTOR_SYSTEM_CGROUPS")]
    pub system_cgroups: Option<String>,
}

impl SummaryArgs {
    pub fn kubelet_root_dir(&self) -> Option<PathBuf> {
        optional_dir(&self.kubelet_root_dir)
    }

    pub fn pod_logs_dir(&self) -> Option<PathBuf> {
        optional_dir(&self.pod_logs_dir)
    }

    pub fn volume_stats_interval(&self) -> Duration {
        Duration::from_secs(self.volume_stats_interval_secs)
    }

    pub fn system_cgroups(&self) -> SystemCgroups {
        SystemCgroups {
            kubelet: self.kubelet_cgroups.clone(),
            runtime: self.runtime_cgroups.clone(),
            misc: self.system_cgroups.clone(),
        }
    }
}

/// A directory flag: a path, or "off".
fn optional_dir(value: &str) -> Option<PathBuf> {
    (value != "off" && !value.is_empty()).then(|| PathBuf::from(value))
}
