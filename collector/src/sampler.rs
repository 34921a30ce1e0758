//! One sampling pass: walk the cgroup2 tree, read cgroupfs, read the probes, merge per cgroup.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Instant, SystemTime},
};

use crate::{
    cgroupfs::{self, CgroupNode, CpuStat},
    probes::{CpuTimeRead, Probes},
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
            let cgroupfs_cpu = self.read_cpu_stat(node);
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
                    self.stats.ebpf_map_entries = read.map_entries as u64;
                    let totals = self.cpu.update(&nodes, read, reader);
                    for (sample, total) in cgroups.iter_mut().zip(totals) {
                        sample.ebpf_cpu_ns = Some(total);
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

    fn read_cpu_stat(&mut self, node: &CgroupNode) -> Option<CpuStat> {
        let path = self
            .mount
            .join(node.path.trim_start_matches('/'))
            .join("cpu.stat");
        match cgroupfs::read_into(&path, &mut self.buf) {
            Ok(()) => {
                let stat = CpuStat::parse(&self.buf);
                self.stats.parse_errors += u64::from(stat.malformed);
                Some(stat)
            }
            // Removed since the walk: dropped from this pass, not an error for anyone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                self.stats.read_errors += 1;
                tracing::debug!(path = %path.display(), error = %e, "cpu.stat unreadable");
                None
            }
        }
    }
}

/// Turns the probe's per-cgroup own time into hierarchical totals (like cpu.stat), keeps them
/// monotonic, and folds removed cgroups' final time into their parents before freeing map entries.
#[derive(Default)]
struct CpuHierarchy {
    /// Parent of every cgroup seen in the previous walk.
    parent_of: HashMap<u64, Option<u64>>,
    /// Final own time of removed descendants, credited to the cgroup that held them.
    retired_ns: HashMap<u64, u64>,
    /// Last reported total per cgroup: totals never go backwards.
    last_total: HashMap<u64, u64>,
    /// Map entries of ids never seen in a walk, and for how many passes.
    unknown_passes: HashMap<u64, u8>,
}

/// Passes an id may sit in the map without appearing in any walk before its entry is freed
/// (cgroups outside our mount's view, or created and removed between two walks).
const UNKNOWN_ID_GRACE_PASSES: u8 = 3;

impl CpuHierarchy {
    /// Returns the total for each node, in `nodes` order.
    fn update(
        &mut self,
        nodes: &[CgroupNode],
        mut read: CpuTimeRead,
        reader: &mut crate::probes::CpuTimeReader,
    ) -> Vec<u64> {
        let present: HashSet<u64> = nodes.iter().map(|n| n.id).collect();
        self.retire_removed(&present, &mut read, reader);

        // Own + retired, then children into parents (pre-order reversed = children first).
        let mut totals: Vec<u64> = nodes
            .iter()
            .map(|n| {
                read.own_ns.get(&n.id).copied().unwrap_or(0)
                    + self.retired_ns.get(&n.id).copied().unwrap_or(0)
            })
            .collect();
        for i in (0..nodes.len()).rev() {
            if let Some(p) = nodes[i].parent {
                totals[p] += totals[i];
            }
        }
        for (node, total) in nodes.iter().zip(totals.iter_mut()) {
            let last = self.last_total.entry(node.id).or_insert(0);
            *total = (*total).max(*last);
            *last = *total;
        }
        self.last_total.retain(|id, _| present.contains(id));
        self.parent_of = nodes
            .iter()
            .map(|n| (n.id, n.parent.map(|p| nodes[p].id)))
            .collect();
        totals
    }

    fn retire_removed(
        &mut self,
        present: &HashSet<u64>,
        read: &mut CpuTimeRead,
        reader: &mut crate::probes::CpuTimeReader,
    ) {
        // Children are removed before parents, so walk deepest first: a removed child's time
        // moves into its (removed) parent's retired bucket, then on up to a live ancestor.
        let mut removed: Vec<u64> = self
            .parent_of
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        removed.sort_by_key(|id| std::cmp::Reverse(self.depth(*id)));
        for id in removed {
            let own = read
                .own_ns
                .remove(&id)
                .map(|_| reader.take(id))
                .unwrap_or(0);
            let carried = own + self.retired_ns.remove(&id).unwrap_or(0);
            if let Some(Some(parent)) = self.parent_of.get(&id) {
                *self.retired_ns.entry(*parent).or_default() += carried;
            }
        }
        for id in read.own_ns.keys() {
            if present.contains(id) {
                self.unknown_passes.remove(id);
            } else {
                *self.unknown_passes.entry(*id).or_default() += 1;
            }
        }
        let expired: Vec<u64> = self
            .unknown_passes
            .iter()
            .filter(|(_, n)| **n > UNKNOWN_ID_GRACE_PASSES)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            reader.take(id);
            self.unknown_passes.remove(&id);
        }
        self.unknown_passes
            .retain(|id, _| read.own_ns.contains_key(id));
    }

    fn depth(&self, mut id: u64) -> usize {
        let mut depth = 0;
        while let Some(Some(parent)) = self.parent_of.get(&id) {
            id = *parent;
            depth += 1;
        }
        depth
    }
}
