//! Merging the probes' maps and events into one pass: hierarchical totals per cgroup, one-time
//! records of removed cgroups (short-lived ones included), and OOM kills.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::hierarchy::CounterHierarchy;
use crate::{
    cgroupfs::CgroupNode,
    probes::{
        CgroupEvent, Family, NET_VALUES, NetValues, OomKillEvent, Probes, RUNQ_VALUES,
        SCHED_VALUES, SchedValues,
        sched::{CPU_NS, MAJOR_FAULTS, MINOR_FAULTS, RUNQ},
    },
};

/// A cgroup's eBPF values in one pass (hierarchical, like cgroupfs), each `None` when its probe
/// is not active.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EbpfValues {
    pub cpu_ns: Option<u64>,
    /// [minor, major].
    pub faults: Option<[u64; 2]>,
    /// Cumulative run-queue wait histogram: log2 buckets, then total wait ns, then count.
    pub runq: Option<Arc<[u64; RUNQ_VALUES]>>,
    /// OOM kills of this cgroup's own tasks seen since the collector started.
    pub oom_kills: Option<u64>,
    /// Socket traffic since the net probe attached, descendants included: rx bytes, rx packets,
    /// tx bytes, tx packets (the layout of [`crate::probes::net`]).
    pub network: Option<NetValues>,
}

/// The final eBPF counters of a cgroup that was removed, sent once.
#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    pub id: u64,
    pub path: Arc<str>,
    pub values: EbpfValues,
}

/// One OOM kill, from `mark_victim`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomKill {
    pub time: SystemTime,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// The cgroup's path when known ("" otherwise).
    pub path: Arc<str>,
}

/// Counts about the maps, for the collector's own stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MapStats {
    /// Entries of the per-cgroup map.
    pub entries: u64,
    pub read_errors: u64,
    /// Running tasks topped up from /proc in this read.
    pub live_tasks: u64,
    /// Map entries of cgroups no walk ever found, credited to the root and freed.
    pub unattributed: u64,
}

#[derive(Default)]
pub struct EbpfMerge {
    sched: CounterHierarchy<SCHED_VALUES>,
    net: CounterHierarchy<NET_VALUES>,
    /// Paths of the previous pass's nodes: removed cgroups are named by them.
    paths: HashMap<u64, Arc<str>>,
    /// Cgroups removed since the last pass that no pass ever saw (created and removed in
    /// between): added to this pass so their counts reach their parents and a terminated record.
    unseen_removed: Vec<(u64, Arc<str>)>,
    oom_own: HashMap<u64, u64>,
}

/// Cgroup creations and removals drained in one pass, for discovery without a walk.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Lifecycle {
    pub created: Vec<(u64, Arc<str>)>,
    pub removed: HashSet<u64>,
    /// An event named no usable path (cut, or not UTF-8): only a walk tells the tree now.
    pub needs_walk: bool,
}

impl EbpfMerge {
    /// Applies the drained events: remembers short-lived cgroups, returns the OOM kills and the
    /// creations/removals.
    pub fn take_events(
        &mut self,
        oom: Vec<OomKillEvent>,
        cgroups: Vec<CgroupEvent>,
        wall: SystemTime,
    ) -> (Vec<OomKill>, Lifecycle) {
        let mut lifecycle = Lifecycle::default();
        for event in cgroups {
            let Some(path) = event.path else {
                lifecycle.needs_walk = true;
                if !event.created {
                    lifecycle.removed.insert(event.cgroup_id);
                }
                continue;
            };
            if event.created {
                lifecycle.created.push((event.cgroup_id, Arc::from(path)));
            } else {
                lifecycle.removed.insert(event.cgroup_id);
                if !self.paths.contains_key(&event.cgroup_id) && !path.is_empty() {
                    self.unseen_removed.push((event.cgroup_id, Arc::from(path)));
                }
            }
        }
        let mono_now = monotonic_ns();
        let kills = oom
            .into_iter()
            .map(|k| {
                *self.oom_own.entry(k.cgroup_id).or_default() += 1;
                let age = Duration::from_nanos(mono_now.saturating_sub(k.time_ns));
                OomKill {
                    time: wall.checked_sub(age).unwrap_or(wall),
                    pid: k.pid,
                    comm: k.comm,
                    cgroup_id: k.cgroup_id,
                    path: Arc::from(""),
                }
            })
            .collect();
        (kills, lifecycle)
    }

    /// Whether map entries of cgroups unknown to the tree wait for a walk to place them.
    pub fn wants_walk(&self) -> bool {
        self.sched.has_unknown() || self.net.has_unknown()
    }

    /// Adds the removed-but-never-seen cgroups to `nodes` under their nearest present ancestor
    /// (shallowest first, so a short-lived parent is there before its child). Returns how many
    /// were added; they are the last nodes and have no cgroupfs reading.
    pub fn add_unseen(&mut self, nodes: &mut Vec<CgroupNode>) -> usize {
        let before = nodes.len();
        graft(
            nodes,
            std::mem::take(&mut self.unseen_removed),
            Parent::NearestPresent,
        );
        nodes.len() - before
    }

    /// Reads the probes' maps and merges them over `nodes` (`walked`: they come from a walk of
    /// the whole tree, not only from events). Per-node values come back in `nodes` order.
    pub fn merge(
        &mut self,
        nodes: &[CgroupNode],
        walked: bool,
        probes: &mut Probes,
        oom_kills: &mut [OomKill],
        stats: &mut MapStats,
    ) -> (Vec<EbpfValues>, Vec<Terminated>) {
        let mut values = vec![EbpfValues::default(); nodes.len()];
        let mut finals: HashMap<u64, EbpfValues> = HashMap::new();

        let read = probes.sched.as_mut().map(|reader| {
            let runq = reader.counts_runq();
            (reader.read(), runq)
        });
        match read {
            Some((Ok(read), runq)) => {
                probes.read_outcome(Family::Sched, Ok(()));
                stats.entries = read.entries as u64;
                stats.live_tasks = read.live as u64;
                let reader = probes.sched.as_mut().expect("read above");
                let t = self.sched.update(
                    nodes,
                    read.own,
                    &mut |id| reader.take(id),
                    walked,
                    Instant::now(),
                );
                stats.unattributed += t.unattributed;
                for (v, total) in values.iter_mut().zip(&t.totals) {
                    *v = sched_values(total, runq);
                }
                for (id, total) in &t.terminated {
                    finals.insert(*id, sched_values(total, runq));
                }
            }
            Some((Err(e), _)) => {
                stats.read_errors += 1;
                probes.read_outcome(Family::Sched, Err(&e));
            }
            None => {}
        }
        self.merge_net(nodes, walked, probes, &mut values, &mut finals, stats);
        if probes.oom.is_some() {
            for (node, v) in nodes.iter().zip(values.iter_mut()) {
                v.oom_kills = Some(self.oom_own.get(&node.id).copied().unwrap_or(0));
            }
        }
        let here: HashMap<u64, &Arc<str>> = if oom_kills.is_empty() {
            HashMap::new()
        } else {
            nodes.iter().map(|n| (n.id, &n.path)).collect()
        };
        for kill in oom_kills.iter_mut() {
            if let Some(path) = here
                .get(&kill.cgroup_id)
                .copied()
                .or_else(|| self.paths.get(&kill.cgroup_id))
            {
                kill.path = path.clone();
            }
        }
        let mut out: Vec<Terminated> = finals
            .into_iter()
            .filter_map(|(id, mut values)| {
                let path = self.paths.get(&id)?.clone();
                values.oom_kills = self.oom_own.remove(&id).or(values.oom_kills);
                Some(Terminated { id, path, values })
            })
            .collect();
        out.sort_by_key(|t| t.id);
        self.paths = nodes.iter().map(|n| (n.id, n.path.clone())).collect();
        (values, out)
    }
}

impl EbpfMerge {
    /// The net probe's own counts as hierarchical totals per node, and the final totals of
    /// removed cgroups (their own entries freed, their counts kept in their parents).
    fn merge_net(
        &mut self,
        nodes: &[CgroupNode],
        walked: bool,
        probes: &mut Probes,
        values: &mut [EbpfValues],
        finals: &mut HashMap<u64, EbpfValues>,
        stats: &mut MapStats,
    ) {
        let Some(reader) = probes.net.as_mut() else {
            return;
        };
        match reader.read() {
            Ok((own, _entries)) => {
                let t = self.net.update(
                    nodes,
                    own,
                    &mut |id| reader.take(id),
                    walked,
                    Instant::now(),
                );
                probes.read_outcome(Family::Net, Ok(()));
                stats.unattributed += t.unattributed;
                for (v, total) in values.iter_mut().zip(&t.totals) {
                    v.network = Some(*total);
                }
                for (id, total) in t.terminated {
                    finals.entry(id).or_default().network = Some(total);
                }
            }
            Err(e) => {
                stats.read_errors += 1;
                probes.read_outcome(Family::Net, Err(&e));
            }
        }
    }
}

/// A cgroup's hierarchical sched totals as the fields of [`EbpfValues`]; no run-queue part when
/// the kernel does not time waits.
fn sched_values(total: &SchedValues, runq: bool) -> EbpfValues {
    EbpfValues {
        cpu_ns: Some(total[CPU_NS]),
        faults: Some([total[MINOR_FAULTS], total[MAJOR_FAULTS]]),
        runq: runq.then(|| {
            let mut h = [0; RUNQ_VALUES];
            h.copy_from_slice(&total[RUNQ..]);
            Arc::new(h)
        }),
        oom_kills: None,
        network: None,
    }
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns()` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The previous pass's nodes updated by creation/removal events, in pre-order with parent
/// indices, as a walk would give them: removed cgroups (and anything below them) leave, created
/// ones join under their parent (found by path) after it. A created cgroup whose parent is
/// unknown is left for the next walk.
pub fn apply_lifecycle(previous: Vec<CgroupNode>, events: &Lifecycle) -> Vec<CgroupNode> {
    // Most passes remove nothing: keep the tree as it is then.
    let mut nodes = if previous.iter().any(|n| events.removed.contains(&n.id)) {
        without_removed(previous, &events.removed)
    } else {
        previous
    };
    let created = events
        .created
        .iter()
        .filter(|(id, _)| !events.removed.contains(id))
        .cloned()
        .collect();
    graft(&mut nodes, created, Parent::Direct);
    nodes
}

/// `previous` without the removed cgroups and their subtrees, parent indices renumbered.
fn without_removed(previous: Vec<CgroupNode>, removed: &HashSet<u64>) -> Vec<CgroupNode> {
    let mut nodes: Vec<CgroupNode> = Vec::with_capacity(previous.len());
    let mut new_index: Vec<Option<usize>> = vec![None; previous.len()];
    for (i, node) in previous.into_iter().enumerate() {
        if removed.contains(&node.id) {
            continue;
        }
        let parent = match node.parent {
            None => None,
            // A parent that left takes its subtree with it.
            Some(p) => match new_index[p] {
                Some(np) => Some(np),
                None => continue,
            },
        };
        new_index[i] = Some(nodes.len());
        nodes.push(CgroupNode { parent, ..node });
    }
    nodes
}

/// Where a grafted cgroup attaches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parent {
    /// Its direct parent; without it the cgroup is left out (the next walk finds it).
    Direct,
    /// The nearest ancestor present (for removed cgroups, whose parents may be gone too).
    NearestPresent,
}

/// Appends `new` cgroups to `nodes` under their parents, found by path, shallowest first so a
/// new parent precedes its children. Paths or ids already present are skipped.
fn graft(nodes: &mut Vec<CgroupNode>, mut new: Vec<(u64, Arc<str>)>, attach: Parent) {
    if new.is_empty() {
        return;
    }
    new.sort_by_key(|(_, p)| p.matches('/').count());
    let mut by_path: HashMap<Arc<str>, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.path.clone(), i))
        .collect();
    let ids: HashSet<u64> = nodes.iter().map(|n| n.id).collect();
    for (id, path) in new {
        if by_path.contains_key(&path) || ids.contains(&id) {
            continue;
        }
        let parent = {
            let mut up = ancestors(&path);
            match attach {
                Parent::Direct => match up.next().and_then(|p| by_path.get(p).copied()) {
                    Some(p) => Some(p),
                    None => continue,
                },
                Parent::NearestPresent => up.find_map(|a| by_path.get(a).copied()),
            }
        };
        by_path.insert(path.clone(), nodes.len());
        nodes.push(CgroupNode { id, path, parent });
    }
}

/// `/a/b/c` -> `/a/b`, `/a`, `/`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(path);
    std::iter::from_fn(move || {
        let current = rest?;
        let parent = match current.rfind('/') {
            Some(0) if current.len() > 1 => "/",
            Some(0) | None => {
                rest = None;
                return None;
            }
            Some(i) => &current[..i],
        };
        rest = Some(parent);
        Some(parent)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_walk_up_to_the_root() {
        assert_eq!(ancestors("/a/b/c").collect::<Vec<_>>(), ["/a/b", "/a", "/"]);
        assert_eq!(ancestors("/a").collect::<Vec<_>>(), ["/"]);
        assert!(ancestors("/").next().is_none());
    }

    fn node(id: u64, path: &str, parent: Option<usize>) -> CgroupNode {
        CgroupNode {
            id,
            path: Arc::from(path),
            parent,
        }
    }

    #[test]
    fn a_cgroup_removed_before_any_pass_saw_it_joins_under_its_parent_once() {
        let mut merge = EbpfMerge::default();
        let mut nodes = vec![node(1, "/", None), node(2, "/pod", Some(0))];
        merge.paths = nodes.iter().map(|n| (n.id, n.path.clone())).collect();
        let event = |created, cgroup_id, path: &str| CgroupEvent {
            created,
            cgroup_id,
            path: Some(path.into()),
        };
        let _ = merge.take_events(
            Vec::new(),
            vec![
                event(true, 9, "/pod/short/inner"),
                event(false, 9, "/pod/short/inner"),
                event(false, 8, "/pod/short"),
                // Seen by an earlier pass: the ordinary removal path handles it.
                event(false, 2, "/pod"),
            ],
            SystemTime::now(),
        );
        assert_eq!(merge.add_unseen(&mut nodes), 2);
        assert_eq!(nodes[2], node(8, "/pod/short", Some(1)));
        assert_eq!(nodes[3], node(9, "/pod/short/inner", Some(2)));
        let mut again = nodes.clone();
        assert_eq!(merge.add_unseen(&mut again), 0, "added once only");
    }

    #[test]
    fn lifecycle_events_update_the_tree_like_a_walk() {
        let previous = vec![
            node(1, "/", None),
            node(2, "/a", Some(0)),
            node(3, "/a/x", Some(1)),
            node(4, "/b", Some(0)),
        ];
        let events = Lifecycle {
            created: vec![
                (6, Arc::from("/b/y/z")),
                (5, Arc::from("/b/y")),
                (7, Arc::from("/gone")),
                (8, Arc::from("/orphan/child")),
            ],
            removed: [3, 2, 7].into_iter().collect(),
            needs_walk: false,
        };
        let nodes = apply_lifecycle(previous, &events);
        assert_eq!(
            nodes,
            vec![
                node(1, "/", None),
                node(4, "/b", Some(0)),
                node(5, "/b/y", Some(1)),
                node(6, "/b/y/z", Some(2)),
            ]
        );
    }

    #[test]
    fn an_event_without_a_usable_path_asks_for_a_walk() {
        let mut merge = EbpfMerge::default();
        let (_, lifecycle) = merge.take_events(
            Vec::new(),
            vec![
                CgroupEvent {
                    created: true,
                    cgroup_id: 4,
                    path: None,
                },
                CgroupEvent {
                    created: false,
                    cgroup_id: 5,
                    path: None,
                },
            ],
            SystemTime::now(),
        );
        assert!(lifecycle.needs_walk);
        assert!(
            lifecycle.created.is_empty(),
            "never grafted at a guessed place"
        );
        assert!(
            lifecycle.removed.contains(&5),
            "a removal is still a removal"
        );
    }

    #[test]
    fn oom_kills_are_counted_per_cgroup_and_dated_from_the_monotonic_clock() {
        let mut merge = EbpfMerge::default();
        let wall = SystemTime::now();
        let (kills, _) = merge.take_events(
            vec![OomKillEvent {
                time_ns: monotonic_ns() - 2_000_000_000,
                pid: 7,
                comm: "hog".into(),
                cgroup_id: 5,
            }],
            Vec::new(),
            wall,
        );
        assert_eq!(kills.len(), 1);
        let age = wall.duration_since(kills[0].time).unwrap();
        assert!(
            age >= Duration::from_secs(2) && age < Duration::from_secs(3),
            "{age:?}"
        );
        assert_eq!(merge.oom_own.get(&5), Some(&1));
    }
}
