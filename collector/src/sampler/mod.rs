//! One sampling pass: walk the cgroup2 tree, read cgroupfs, read the probes, merge per cgroup.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Instant, SystemTime},
};

mod cpu_hierarchy;

use cpu_hierarchy::CpuHierarchy;

use crate::{
    cgroupfs::{self, CgroupNode, CpuStat},
    probes::Probes,
};

/// Both sources for one cgroup, as distinct fields: neither ever stands in for the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSample {
    pub id: u64,
    pub path: Arc<str>,
    /// cpu.stat; `None` when it could not be read (vanished, no permission).
    pub cgroupfs_cpu: Option<CpuStat>,
    /// sched_switch probe, hierarchical; `None` when the probe is not active.
    pub ebpf_cpu_ns: Option<u64>,
}

/// Everything one pass produced.
#[derive(Debug, Clone)]
pub struct Sample {
    pub taken_at: Instant,
    pub wall: SystemTime,
    /// Sorted by id.
    pub cgroups: Vec<CgroupSample>,
}

/// Counters about the sampler itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SamplerStats {
    pub passes: u64,
    /// Values in cgroup files that did not parse.
    pub parse_errors: u64,
    /// cgroup files that could not be read for a reason other than the cgroup vanishing.
    pub read_errors: u64,
    pub probe_read_errors: u64,
    pub ebpf_map_entries: u64,
    pub ebpf_dropped_intervals: u64,
    pub ebpf_running_read_failures: u64,
}

pub struct Sampler {
    mount: PathBuf,
    probes: Probes,
    buf: String,
    cpu: CpuHierarchy,
    pub stats: SamplerStats,
}

impl Sampler {
    pub fn new(mount: PathBuf, probes: Probes) -> Self {
        Self {
            mount,
            probes,
            buf: String::with_capacity(4096),
            cpu: CpuHierarchy::default(),
            stats: SamplerStats::default(),
        }
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    pub fn sample(&mut self) -> std::io::Result<Sample> {
        let taken_at = Instant::now();
        let wall = SystemTime::now();
        let nodes = cgroupfs::walk(&self.mount)?;
        let mut cgroups = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let cgroupfs_cpu = match self.read_cpu_stat(node) {
                CpuStatRead::Read(stat) => Some(stat),
                CpuStatRead::Unreadable => None,
                CpuStatRead::Vanished => continue,
            };
            cgroups.push(CgroupSample {
                id: node.id,
                path: node.path.clone(),
                cgroupfs_cpu,
                ebpf_cpu_ns: None,
            });
        }
        if let Some(reader) = self.probes.cpu_time.as_mut() {
            match reader.read() {
                Ok(read) => {
                    self.stats.ebpf_map_entries = read.own_ns.len() as u64;
                    (
                        self.stats.ebpf_dropped_intervals,
                        self.stats.ebpf_running_read_failures,
                    ) = reader.drop_counters();
                    // Vanished cgroups still count for the hierarchy in this pass: their time
                    // is folded into their parents on the next one.
                    let totals = self
                        .cpu
                        .update(&nodes, read.own_ns, &mut |id| reader.take(id));
                    let by_id: std::collections::HashMap<u64, u64> =
                        nodes.iter().map(|n| n.id).zip(totals).collect();
                    for sample in &mut cgroups {
                        sample.ebpf_cpu_ns = by_id.get(&sample.id).copied();
                    }
                }
                Err(e) => {
                    self.stats.probe_read_errors += 1;
                    tracing::warn!("reading the sched_switch maps failed: {e}");
                }
            }
        }
        cgroups.sort_unstable_by_key(|c| c.id);
        self.stats.passes += 1;
        Ok(Sample {
            taken_at,
            wall,
            cgroups,
        })
    }

    fn read_cpu_stat(&mut self, node: &CgroupNode) -> CpuStatRead {
        let path = self
            .mount
            .join(node.path.trim_start_matches('/'))
            .join("cpu.stat");
        match cgroupfs::read_into(&path, &mut self.buf) {
            Ok(()) => {
                let stat = CpuStat::parse(&self.buf);
                self.stats.parse_errors += u64::from(stat.malformed);
                CpuStatRead::Read(stat)
            }
            // cpu.stat is a core file of every cgroup2 directory: gone means the cgroup was
            // removed since the walk. It leaves this pass; nobody else is affected.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CpuStatRead::Vanished,
            Err(e) => {
                self.stats.read_errors += 1;
                tracing::debug!(path = %path.display(), error = %e, "cpu.stat unreadable");
                CpuStatRead::Unreadable
            }
        }
    }
}

enum CpuStatRead {
    Read(CpuStat),
    /// Present but not readable (permissions, I/O error): the cgroup stays, the field is absent.
    Unreadable,
    Vanished,
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::probes::{ProbeConfig, Probes};

    fn cgroupfs_only() -> Probes {
        Probes::load(&ProbeConfig {
            disabled: true,
            ..ProbeConfig::default()
        })
    }

    #[test]
    fn pass_over_a_fixture_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(
            root.join("cpu.stat"),
            "usage_usec 900\nuser_usec 600\nsystem_usec 300\n",
        )
        .unwrap();
        fs::create_dir(root.join("ok")).unwrap();
        fs::write(
            root.join("ok/cpu.stat"),
            "usage_usec 500\nuser_usec 400\nsystem_usec 100\n",
        )
        .unwrap();
        fs::create_dir(root.join("garbled")).unwrap();
        fs::write(root.join("garbled/cpu.stat"), "usage_usec twelve\n\0\0\0").unwrap();
        // A directory without cpu.stat is what a cgroup removed between walk and read looks like.
        fs::create_dir(root.join("vanished")).unwrap();

        let mut sampler = Sampler::new(root.to_path_buf(), cgroupfs_only());
        let sample = sampler.sample().unwrap();
        let by_path = |p: &str| sample.cgroups.iter().find(|c| &*c.path == p);

        assert_eq!(sample.cgroups.len(), 3);
        assert_eq!(
            by_path("/ok").unwrap().cgroupfs_cpu.unwrap().usage_usec,
            Some(500)
        );
        assert_eq!(
            by_path("/").unwrap().cgroupfs_cpu.unwrap().user_usec,
            Some(600)
        );
        let garbled = by_path("/garbled").unwrap().cgroupfs_cpu.unwrap();
        assert_eq!(garbled.usage_usec, None);
        assert!(by_path("/vanished").is_none());
        // cgroupfs-only: the eBPF field is absent, never filled from cgroupfs.
        assert!(sample.cgroups.iter().all(|c| c.ebpf_cpu_ns.is_none()));
        assert_eq!(sampler.stats.parse_errors, 1);
        // Sorted by id.
        assert!(sample.cgroups.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[test]
    fn missing_mount_is_an_error_not_a_panic() {
        let mut sampler = Sampler::new("/nonexistent/cgroup2".into(), cgroupfs_only());
        assert!(sampler.sample().is_err());
    }
}
