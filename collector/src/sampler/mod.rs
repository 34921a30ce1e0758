//! One sampling pass: walk the cgroup2 tree, read cgroupfs, read the probes, merge per cgroup.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

mod ebpf;
mod hierarchy;
pub mod host;
mod idle;

use ebpf::EbpfMerge;
pub use ebpf::{EbpfValues, MapStats, OomKill, Terminated};
use host::HostReader;
pub use host::{HostReading, NetworkReading};
pub use idle::DEFAULT_IDLE_MAX_AGE;
use idle::{Activity, AtReading, IdleRefresh};

use crate::{
    cgroupfs::{
        self, CgroupMounts,
        reader::{CgroupReader, ReadError},
        reading::CgroupReading,
    },
    cri::CriNames,
    k8s::identity::{self, Identity},
    probes::{Drops, Probes},
};

/// Both sources for one cgroup, as distinct fields: neither ever stands in for the other.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupSample {
    pub id: u64,
    pub path: Arc<str>,
    /// Everything cgroupfs said, each controller from where it is mounted.
    pub reading: CgroupReading,
    /// When `reading` was taken: this pass, or an earlier full pass whose reading is carried
    /// forward (see [`Sampler::with_cgroupfs_interval`]).
    pub read_at: Instant,
    pub read_wall: SystemTime,
    /// The probes' values, hierarchical; each `None` when its probe is not active.
    pub ebpf: EbpfValues,
    /// When the cgroup was first seen (its directory's ctime then), Unix ns.
    pub created_unix_nano: Option<u64>,
    /// The network namespace: the host's for the root cgroup, the pod's for a pod cgroup (read
    /// on full passes, carried forward like `reading`); `None` elsewhere or when unreadable.
    pub network: Option<Arc<NetworkReading>>,
}

/// /proc/meminfo figures the node stats need, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

/// Everything one pass produced.
#[derive(Debug, Clone)]
pub struct Sample {
    pub taken_at: Instant,
    pub wall: SystemTime,
    /// Sorted by id.
    pub cgroups: Vec<CgroupSample>,
    /// `None` when /proc/meminfo could not be read.
    pub meminfo: Option<MemInfo>,
    /// Node-wide reads of the last full pass (rlimit, the kubelet root dir's filesystem).
    pub host: HostReading,
    /// Cgroups removed since the last pass, with their final eBPF counters (sent once).
    pub terminated: Vec<Terminated>,
    /// OOM kills since the last pass.
    pub oom_kills: Vec<OomKill>,
}

/// Counters about the sampler itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SamplerStats {
    pub passes: u64,
    /// Passes that failed as a whole (the tree or a cgroup could not be read for a reason other
    /// than removal, e.g. out of file descriptors): nothing was published for them.
    pub failed_passes: u64,
    /// Values in cgroup files that did not parse.
    pub parse_errors: u64,
    /// cgroup files that could not be read for a reason other than the cgroup vanishing.
    pub read_errors: u64,
    pub probe_read_errors: u64,
    /// Entries of the per-cgroup eBPF map right now.
    pub ebpf_map_entries: u64,
    /// What the programs could not record (cumulative, from their counters).
    pub ebpf_drops: Drops,
    /// Map entries of cgroups no walk found, credited to the root (cumulative).
    pub ebpf_unattributed_cgroups: u64,
    /// Tasks on a CPU whose run so far was added from /proc at the last pass.
    pub ebpf_running_tasks: u64,
    /// Walks of the whole tree, and those made early (lost or cut events, unknown map entries).
    pub walks: u64,
    pub early_walks: u64,
    /// Reads outside cgroupfs that failed (net/dev, statfs), the process having not vanished.
    pub host_read_errors: u64,
    /// Cgroups read from cgroupfs, and those a full pass left unread because the probes saw
    /// them idle since their last reading (cumulative).
    pub cgroupfs_reads: u64,
    pub idle_carried: u64,
}

/// What the sampler remembers of a cgroup between passes.
struct Known {
    created_unix_nano: Option<u64>,
    reading: CgroupReading,
    read_at: Instant,
    read_wall: SystemTime,
    /// What the path is in Kubernetes terms, worked out once.
    identity: Option<Identity>,
    network: Option<Arc<NetworkReading>>,
    /// What the probes had counted when `reading` was taken.
    at_reading: AtReading,
}

/// The shortest gap between two early walks (made for lost events or unknown map entries): a
/// walk costs about as much as reading one file per cgroup, so a flood of events cannot turn
/// every pass into one.
const EARLY_WALK_GAP: Duration = Duration::from_secs(1);

/// Default pace of full cgroupfs reads while the eBPF CPU probe is active (kubelet's
/// housekeeping pace).
pub const DEFAULT_CGROUPFS_INTERVAL: Duration = Duration::from_secs(10);

pub struct Sampler {
    mount: PathBuf,
    probes: Probes,
    reader: CgroupReader,
    ebpf: EbpfMerge,
    known: HashMap<u64, Known>,
    cgroupfs_interval: Duration,
    idle_max_age: Duration,
    /// When idle cgroups are read again; `None` reads every cgroup on every full pass.
    idle_refresh: Option<IdleRefresh>,
    last_full: Option<Instant>,
    last_walk: Option<Instant>,
    /// The tree as of the last pass (walked or updated from lifecycle events).
    last_nodes: Vec<cgroupfs::CgroupNode>,
    host: HostReader,
    /// The last full pass's node-wide reads, carried forward like cgroup readings.
    last_host: HostReading,
    /// Which containers are sandboxes (whose process a pod's network is read through).
    names: Option<Arc<CriNames>>,
    /// OOM kills drained and removals recorded by a pass that then failed: the next pass
    /// reports them.
    pending_oom_kills: Vec<OomKill>,
    pending_terminated: Vec<Terminated>,
    pub stats: SamplerStats,
}

impl Sampler {
    /// Reads the cgroup2 tree at `mount`, v1 controllers from `mounts`.
    pub fn new(mount: PathBuf, mounts: &CgroupMounts, probes: Probes) -> Self {
        Self {
            reader: CgroupReader::new(mount.clone(), mounts),
            mount,
            probes,
            ebpf: EbpfMerge::default(),
            known: HashMap::new(),
            cgroupfs_interval: DEFAULT_CGROUPFS_INTERVAL,
            idle_max_age: DEFAULT_IDLE_MAX_AGE,
            idle_refresh: IdleRefresh::new(
                DEFAULT_IDLE_MAX_AGE,
                DEFAULT_CGROUPFS_INTERVAL,
                Instant::now(),
            ),
            last_full: None,
            last_walk: None,
            last_nodes: Vec::new(),
            host: HostReader::new(PathBuf::from("/proc"), None),
            last_host: HostReading::default(),
            names: None,
            pending_oom_kills: Vec::new(),
            pending_terminated: Vec::new(),
            stats: SamplerStats::default(),
        }
    }

    /// Reads meminfo, rlimit and network namespaces from `proc_root` instead of /proc
    /// (fixtures).
    pub fn with_proc_root(mut self, proc_root: PathBuf) -> Self {
        self.host.set_proc_root(proc_root);
        self
    }

    /// The kubelet root dir, whose filesystem is kubelet's node fs (statfs on full passes).
    pub fn with_kubelet_root(mut self, kubelet_root: Option<PathBuf>) -> Self {
        self.host.set_kubelet_root(kubelet_root);
        self
    }

    /// Names from the runtime, to read each pod's network through its sandbox's process.
    pub fn with_names(mut self, names: Arc<CriNames>) -> Self {
        self.names = Some(names);
        self
    }

    /// How often every cgroupfs file is read while the eBPF CPU probe is active. Passes in
    /// between read only the eBPF maps, and keep the tree current from the lifecycle events when
    /// those probes run (a walk otherwise); new cgroups get a full read at once, and each cgroup
    /// keeps its last reading with the time it was taken. Without the probe every
    /// pass is a full read, since CPU time must then come from cgroupfs.
    pub fn with_cgroupfs_interval(mut self, interval: Duration) -> Self {
        self.cgroupfs_interval = interval;
        self.idle_refresh = IdleRefresh::new(self.idle_max_age, interval, Instant::now());
        self
    }

    /// How old a reading a cgroup the probes saw idle may keep on a full pass (see
    /// [`idle`]); zero (or no more than the cgroupfs interval) reads every cgroup on every
    /// full pass. Without the sched probe every cgroup is read on every pass regardless.
    pub fn with_idle_max_age(mut self, max_age: Duration) -> Self {
        self.idle_max_age = max_age;
        self.idle_refresh = IdleRefresh::new(max_age, self.cgroupfs_interval, Instant::now());
        self
    }

    /// Whether this pass reads every cgroupfs file.
    fn full_pass(&self, now: Instant) -> bool {
        // A pass that lands a little early still counts (passes drift by scheduling jitter).
        let slack = self.cgroupfs_interval / 20;
        self.probes.sched.is_none()
            || self
                .last_full
                .is_none_or(|t| now.saturating_duration_since(t) + slack >= self.cgroupfs_interval)
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    pub fn sample(&mut self) -> std::io::Result<Sample> {
        let taken_at = Instant::now();
        let wall = SystemTime::now();
        // Events first: a cgroup removed after the drain is still in this walk.
        let oom = self
            .probes
            .oom
            .as_mut()
            .map(|r| r.drain())
            .unwrap_or_default();
        let created_removed = (self.probes.lifecycle.as_mut())
            .map(|r| r.drain())
            .unwrap_or_default();
        let (mut oom_kills, lifecycle) = self.ebpf.take_events(oom, created_removed, wall);
        oom_kills.splice(0..0, std::mem::take(&mut self.pending_oom_kills));
        let drops = self.probes.drops();
        let lost_events = drops.lifecycle_events > self.stats.ebpf_drops.lifecycle_events
            || drops.truncated_paths > self.stats.ebpf_drops.truncated_paths;
        self.stats.ebpf_drops = drops;
        let full = self.full_pass(taken_at);
        // Between full passes, creation/removal events keep the tree current; a walk is the
        // safety net: on full passes, and at once when events were lost or named no usable
        // path, or when map entries wait for a walk to place them (at most once a second).
        let walk_due = self
            .last_walk
            .is_none_or(|t| taken_at.duration_since(t) >= EARLY_WALK_GAP);
        let early = lifecycle.needs_walk || lost_events || (self.ebpf.wants_walk() && walk_due);
        let events_suffice = !full && !early && self.probes.lifecycle_active();
        let walked_tree = !events_suffice || self.last_nodes.is_empty();
        let mut nodes = if walked_tree {
            self.stats.walks += 1;
            self.stats.early_walks += u64::from(early && !full);
            self.last_walk = Some(taken_at);
            match cgroupfs::walk(&self.mount) {
                Ok(nodes) => nodes,
                Err(e) => return Err(self.failed_pass(oom_kills, e)),
            }
        } else {
            ebpf::apply_lifecycle(std::mem::take(&mut self.last_nodes), &lifecycle)
        };
        let walked = nodes.len();
        self.ebpf.add_unseen(&mut nodes);
        if full {
            self.reader.refresh_controllers();
            self.last_full = Some(taken_at);
        }
        // The probes first: their values tell which cgroups did anything since their last
        // reading, and activity after this point is in the cgroupfs reading too.
        let mut map_stats = MapStats::default();
        let (mut values, mut terminated) = self.ebpf.merge(
            &nodes,
            walked_tree,
            &mut self.probes,
            &mut oom_kills,
            &mut map_stats,
        );
        self.record_probe_stats(map_stats);
        terminated.splice(0..0, std::mem::take(&mut self.pending_terminated));
        let mut cgroups = Vec::with_capacity(nodes.len());
        // Rebuilt each pass from the last one, so ids of removed cgroups drop out in O(n).
        // Sized up front: growing a map of large entries pass after pass is all memcpy.
        let mut seen_before = std::mem::replace(&mut self.known, HashMap::with_capacity(walked));
        for (node, values) in nodes[..walked].iter().zip(values.iter_mut()) {
            let activity = Activity::of(values);
            let carry = |known: &Known| {
                !full
                    || self.idle_refresh.is_some_and(|refresh| {
                        known.at_reading.idle(activity)
                            && !refresh.due(node.id, known.read_at, taken_at)
                    })
            };
            let known = match seen_before.remove(&node.id) {
                Some(known) if carry(&known) => {
                    self.stats.idle_carried += u64::from(full);
                    known
                }
                earlier => {
                    let reading = match self.reader.read(&node.path) {
                        Ok(reading) => reading,
                        // Removed since the walk: it leaves this pass; nobody else is affected.
                        Err(ReadError::Vanished) => continue,
                        // We could not look: fail the pass rather than announce a removal.
                        Err(ReadError::Fault { what, source }) => {
                            self.known.extend(seen_before);
                            if let Some(earlier) = earlier {
                                self.known.insert(node.id, earlier);
                            }
                            // The tree and the full read are retried from scratch.
                            self.last_full = None;
                            let e = std::io::Error::new(source.kind(), format!("{what}: {source}"));
                            self.pending_terminated = terminated;
                            return Err(self.failed_pass(oom_kills, e));
                        }
                    };
                    self.stats.cgroupfs_reads += 1;
                    self.stats.parse_errors += u64::from(reading.malformed);
                    self.stats.read_errors += u64::from(reading.read_errors);
                    let before = earlier
                        .as_ref()
                        .map(|k| (k.at_reading, k.reading.cpu.usage_ns));
                    let at_reading = AtReading::after_read(before, activity, reading.cpu.usage_ns);
                    let (created_unix_nano, identity, network) = match earlier {
                        Some(k) => (k.created_unix_nano, k.identity, k.network),
                        None => (
                            dir_ctime(&self.mount, &node.path),
                            identity::identify(&node.path),
                            None,
                        ),
                    };
                    Known {
                        created_unix_nano,
                        reading,
                        read_at: taken_at,
                        read_wall: wall,
                        identity,
                        network,
                        at_reading,
                    }
                }
            };
            cgroups.push(CgroupSample {
                id: node.id,
                path: node.path.clone(),
                reading: known.reading.clone(),
                read_at: known.read_at,
                read_wall: known.read_wall,
                ebpf: std::mem::take(values),
                created_unix_nano: known.created_unix_nano,
                network: known.network.clone(),
            });
            self.known.insert(node.id, known);
        }
        if full {
            self.read_networks(&mut cgroups);
            self.last_host = self.host.node();
            self.stats.host_read_errors = self.host.errors;
        }
        // The next pass starts from this tree, without the removed cgroups added for one pass.
        nodes.truncate(walked);
        self.last_nodes = nodes;
        cgroups.sort_unstable_by_key(|c| c.id);
        self.stats.passes += 1;
        let meminfo = read_meminfo(&self.host.proc_root().join("meminfo"));
        if meminfo.is_none() {
            self.stats.read_errors += 1;
        }
        Ok(Sample {
            taken_at,
            wall,
            cgroups,
            meminfo,
            host: self.last_host,
            terminated,
            oom_kills,
        })
    }

    /// The host's network namespace for the root cgroup, each pod's for its cgroup, in the
    /// samples and remembered for the passes until the next full one.
    fn read_networks(&mut self, cgroups: &mut [CgroupSample]) {
        let table = self.names.as_ref().map(|n| n.table()).unwrap_or_default();
        let known = &self.known;
        let pids = host::pod_pids(
            cgroups.iter().map(|c| {
                let identity = known.get(&c.id).and_then(|k| k.identity.as_ref());
                (identity, c.reading.first_pid)
            }),
            &table,
        );
        let mut networks = host::pod_networks(&mut self.host, pids);
        let host_network = self.host.network(1).map(Arc::new);
        for c in cgroups.iter_mut() {
            let Some(known) = self.known.get_mut(&c.id) else {
                continue;
            };
            let network = match &known.identity {
                Some(Identity::Pod(pod)) => networks.remove(&pod.uid),
                _ if &*c.path == "/" => host_network.clone(),
                _ => continue,
            };
            c.network.clone_from(&network);
            known.network = network;
        }
    }

    /// Counts a pass that could not complete and keeps what it already took from the kernel.
    /// A pass that fails keeps its OOM kills for the next one; that one walks the tree, since
    /// this pass's creation and removal events were drained and are gone.
    fn failed_pass(&mut self, oom_kills: Vec<OomKill>, e: std::io::Error) -> std::io::Error {
        self.pending_oom_kills = oom_kills;
        self.last_nodes.clear();
        self.stats.failed_passes += 1;
        e
    }

    fn record_probe_stats(&mut self, maps: MapStats) {
        let s = &mut self.stats;
        s.probe_read_errors += maps.read_errors;
        s.ebpf_map_entries = maps.entries;
        s.ebpf_running_tasks = maps.live_tasks;
        s.ebpf_unattributed_cgroups += maps.unattributed;
    }
}

/// ctime of a cgroup directory, Unix ns: its creation time for a cgroup seen soon after birth.
fn dir_ctime(mount: &Path, relative: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let relative = cgroupfs::name::to_os_string(relative.trim_start_matches('/'));
    let meta = std::fs::metadata(mount.join(relative)).ok()?;
    let secs = u64::try_from(meta.ctime()).ok()?;
    let nanos = u64::try_from(meta.ctime_nsec()).ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

fn read_meminfo(path: &Path) -> Option<MemInfo> {
    use procfs::FromRead as _;
    let m = procfs::Meminfo::from_file(path)
        .inspect_err(|e| tracing::debug!(path = %path.display(), error = %e, "meminfo unreadable"))
        .ok()?;
    Some(MemInfo {
        total: m.mem_total,
        swap_total: m.swap_total,
        swap_free: m.swap_free,
    })
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

        let mut sampler = Sampler::new(
            root.to_path_buf(),
            &CgroupMounts::default(),
            cgroupfs_only(),
        );
        let sample = sampler.sample().unwrap();
        let by_path = |p: &str| sample.cgroups.iter().find(|c| &*c.path == p);

        assert_eq!(sample.cgroups.len(), 3);
        let cpu = |p: &str| by_path(p).unwrap().reading.cpu;
        assert_eq!(cpu("/ok").usage_ns, Some(500_000));
        assert_eq!(cpu("/").user_ns, Some(600_000));
        assert_eq!(cpu("/garbled").usage_ns, None);
        assert!(by_path("/vanished").is_none());
        // cgroupfs-only: the eBPF field is absent, never filled from cgroupfs.
        assert!(
            sample
                .cgroups
                .iter()
                .all(|c| c.ebpf == EbpfValues::default())
        );
        assert_eq!(sampler.stats.parse_errors, 1);
        // Sorted by id.
        assert!(sample.cgroups.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[test]
    fn unreadable_files_are_counted_and_hide_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("cpu.stat"), "usage_usec 900\n").unwrap();
        for name in ["a", "denied", "b"] {
            fs::create_dir(root.join(name)).unwrap();
            fs::write(root.join(name).join("cpu.stat"), "usage_usec 100\n").unwrap();
            fs::write(root.join(name).join("memory.current"), "4096\n").unwrap();
        }
        // A file that exists but cannot be read (EISDIR here; EACCES on a real host behaves
        // the same): that field is absent and counted, the cgroup and its siblings stay.
        fs::remove_file(root.join("denied/memory.current")).unwrap();
        fs::create_dir(root.join("denied/memory.current")).unwrap();

        let mut sampler = Sampler::new(
            root.to_path_buf(),
            &CgroupMounts::default(),
            cgroupfs_only(),
        );
        let sample = sampler.sample().unwrap();
        let by_path = |p: &str| {
            &sample
                .cgroups
                .iter()
                .find(|c| &*c.path == p)
                .unwrap()
                .reading
        };
        assert_eq!(by_path("/denied").memory.and_then(|m| m.usage_bytes), None);
        assert_eq!(by_path("/denied").cpu.usage_ns, Some(100_000));
        assert_eq!(by_path("/a").memory.and_then(|m| m.usage_bytes), Some(4096));
        assert_eq!(by_path("/b").memory.and_then(|m| m.usage_bytes), Some(4096));
        assert_eq!(sampler.stats.read_errors, 1);
        assert_eq!(sampler.stats.parse_errors, 0);
    }

    #[test]
    fn missing_mount_is_an_error_not_a_panic() {
        let mut sampler = Sampler::new(
            "/nonexistent/cgroup2".into(),
            &CgroupMounts::default(),
            cgroupfs_only(),
        );
        assert!(sampler.sample().is_err());
    }
}
