//! Hierarchical, monotonic eBPF totals from per-cgroup own counts: CPU time, page faults and
//! run-queue histograms all go through here, as one fixed-size array of counters per cgroup.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use crate::cgroupfs::CgroupNode;

/// Turns a probe's per-cgroup own counts into hierarchical totals (like cpu.stat), keeps them
/// monotonic, and folds removed cgroups' final counts into their parents before freeing their
/// map entries.
pub struct CounterHierarchy<const N: usize> {
    /// Parent of every cgroup seen in the previous pass.
    parent_of: HashMap<u64, Option<u64>>,
    /// Final own counts of removed descendants, credited to the cgroup that held them.
    retired: HashMap<u64, [u64; N]>,
    /// Last reported total per cgroup: totals never go backwards.
    last_total: HashMap<u64, [u64; N]>,
    /// Map entries of ids in no pass yet: since when, and how many walks missed them.
    unknown: HashMap<u64, Unknown>,
}

#[derive(Debug, Clone, Copy)]
struct Unknown {
    since: Instant,
    walks: u32,
}

impl<const N: usize> Default for CounterHierarchy<N> {
    fn default() -> Self {
        Self {
            parent_of: HashMap::new(),
            retired: HashMap::new(),
            last_total: HashMap::new(),
            unknown: HashMap::new(),
        }
    }
}

/// How long an id may sit in the map without appearing in any pass; it must also have been
/// missed by [`UNKNOWN_ID_GRACE_WALKS`] walks of the whole tree. A new cgroup whose creation event
/// was lost is found by the next walk (the sampler walks early while unknown ids wait); one that
/// no walk finds (created and removed unseen, or outside our mount's view) has its counts
/// credited to the root and its entry freed, so node totals lose nothing and the map stays
/// bounded.
pub const UNKNOWN_ID_GRACE: Duration = Duration::from_secs(5);
pub const UNKNOWN_ID_GRACE_WALKS: u32 = 2;

/// One pass's result.
pub struct Totals<const N: usize> {
    /// Per node, in `nodes` order.
    pub totals: Vec<[u64; N]>,
    /// Cgroups present last pass and gone now, with their final hierarchical totals.
    pub terminated: Vec<(u64, [u64; N])>,
    /// Unknown ids whose counts went to the root this pass.
    pub unattributed: u64,
}

fn add<const N: usize>(into: &mut [u64; N], from: &[u64; N]) {
    for (a, b) in into.iter_mut().zip(from) {
        *a = a.saturating_add(*b);
    }
}

fn max<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x = (*x).max(*y);
    }
}

impl<const N: usize> CounterHierarchy<N> {
    /// `own` is each cgroup's own counts from the probe; `take` deletes a cgroup's map entry and
    /// returns its final counts. `walked`: `nodes` come from a walk of the whole tree.
    pub fn update(
        &mut self,
        nodes: &[CgroupNode],
        mut own: HashMap<u64, [u64; N]>,
        take: &mut dyn FnMut(u64) -> [u64; N],
        walked: bool,
        now: Instant,
    ) -> Totals<N> {
        let present: HashSet<u64> = nodes.iter().map(|n| n.id).collect();
        let terminated = self.retire_removed(&present, &mut own, take);
        let unattributed = match nodes.first() {
            Some(root) if root.parent.is_none() => {
                self.expire_unknown(&present, &own, take, walked, now, root.id)
            }
            _ => 0,
        };

        // Own + retired, then children into parents (pre-order reversed = children first).
        let mut totals: Vec<[u64; N]> = nodes
            .iter()
            .map(|n| {
                let mut t = own.get(&n.id).copied().unwrap_or([0; N]);
                if let Some(r) = self.retired.get(&n.id) {
                    add(&mut t, r);
                }
                t
            })
            .collect();
        for i in (0..nodes.len()).rev() {
            if let Some(p) = nodes[i].parent {
                let child = totals[i];
                add(&mut totals[p], &child);
            }
        }
        for (node, total) in nodes.iter().zip(totals.iter_mut()) {
            let last = self.last_total.entry(node.id).or_insert([0; N]);
            max(total, last);
            *last = *total;
        }
        self.parent_of = nodes
            .iter()
            .map(|n| (n.id, n.parent.map(|p| nodes[p].id)))
            .collect();
        Totals {
            totals,
            terminated,
            unattributed,
        }
    }

    /// Whether map entries wait for a walk to place them.
    pub fn has_unknown(&self) -> bool {
        !self.unknown.is_empty()
    }

    /// Tracks ids in the map but in no pass; credits those past the grace to the root (whose
    /// totals include every descendant anyway) and frees their entries.
    fn expire_unknown(
        &mut self,
        present: &HashSet<u64>,
        own: &HashMap<u64, [u64; N]>,
        take: &mut dyn FnMut(u64) -> [u64; N],
        walked: bool,
        now: Instant,
        root: u64,
    ) -> u64 {
        self.unknown
            .retain(|id, _| own.contains_key(id) && !present.contains(id));
        for id in own.keys().filter(|id| !present.contains(id)) {
            let u = self.unknown.entry(*id).or_insert(Unknown {
                since: now,
                walks: 0,
            });
            if walked {
                u.walks += 1;
            }
        }
        let expired: Vec<u64> = self
            .unknown
            .iter()
            .filter(|(_, u)| {
                u.walks >= UNKNOWN_ID_GRACE_WALKS && now.duration_since(u.since) >= UNKNOWN_ID_GRACE
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            let last = take(*id);
            add(self.retired.entry(root).or_insert([0; N]), &last);
            self.unknown.remove(id);
        }
        expired.len() as u64
    }

    fn retire_removed(
        &mut self,
        present: &HashSet<u64>,
        own: &mut HashMap<u64, [u64; N]>,
        take: &mut dyn FnMut(u64) -> [u64; N],
    ) -> Vec<(u64, [u64; N])> {
        // Children are removed before parents, so walk deepest first: a removed child's counts
        // move into its (removed) parent's retired bucket, then on up to a live ancestor.
        let mut removed: Vec<u64> = self
            .parent_of
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        removed.sort_by_key(|id| std::cmp::Reverse(self.depth(*id)));
        let mut terminated = Vec::with_capacity(removed.len());
        for id in removed {
            let mut last = own.remove(&id).map(|_| take(id)).unwrap_or([0; N]);
            if let Some(r) = self.retired.remove(&id) {
                add(&mut last, &r);
            }
            if let Some(Some(parent)) = self.parent_of.get(&id) {
                add(self.retired.entry(*parent).or_insert([0; N]), &last);
            }
            let mut total = last;
            if let Some(reported) = self.last_total.remove(&id) {
                max(&mut total, &reported);
            }
            terminated.push((id, total));
        }
        terminated
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// `/` (1) -> `/pod` (2) -> `/pod/a` (3), `/pod/b` (4).
    fn tree(with_b: bool) -> Vec<CgroupNode> {
        let node = |id, path: &str, parent| CgroupNode {
            id,
            path: Arc::from(path),
            parent,
        };
        let mut nodes = vec![
            node(1, "/", None),
            node(2, "/pod", Some(0)),
            node(3, "/pod/a", Some(1)),
        ];
        if with_b {
            nodes.push(node(4, "/pod/b", Some(1)));
        }
        nodes
    }

    fn own(pairs: &[(u64, u64)]) -> HashMap<u64, [u64; 1]> {
        pairs.iter().map(|&(id, v)| (id, [v])).collect()
    }

    fn flat(t: Totals<1>) -> Vec<u64> {
        t.totals.into_iter().map(|[v]| v).collect()
    }

    #[test]
    fn totals_include_descendants_like_cpu_stat() {
        let mut h = CounterHierarchy::<1>::default();
        let totals = flat(h.update(
            &tree(true),
            own(&[(1, 5), (3, 100), (4, 20)]),
            &mut |_| [0],
            true,
            Instant::now(),
        ));
        assert_eq!(totals, vec![125, 120, 100, 20]);
    }

    #[test]
    fn removed_child_time_moves_into_its_parent_and_its_entry_is_freed() {
        let mut h = CounterHierarchy::<1>::default();
        h.update(
            &tree(true),
            own(&[(3, 100), (4, 20)]),
            &mut |_| [0],
            true,
            Instant::now(),
        );
        // /pod/b is gone; its final committed time in the map is 30.
        let mut taken = Vec::new();
        let update = h.update(
            &tree(false),
            own(&[(3, 110), (4, 30)]),
            &mut |id| {
                taken.push(id);
                [30]
            },
            true,
            Instant::now(),
        );
        // Its one-time terminated record carries its final total.
        assert_eq!(update.terminated, vec![(4, [30])]);
        let totals = flat(update);
        assert_eq!(taken, vec![4]);
        assert_eq!(totals, vec![140, 140, 110]);
        // And it stays there on later passes, without the map entry.
        let totals = flat(h.update(
            &tree(false),
            own(&[(3, 120)]),
            &mut |_| unreachable!(),
            true,
            Instant::now(),
        ));
        assert_eq!(totals, vec![150, 150, 120]);
    }

    #[test]
    fn a_low_read_never_moves_a_counter_backwards() {
        let mut h = CounterHierarchy::<1>::default();
        h.update(
            &tree(true),
            own(&[(3, 100)]),
            &mut |_| [0],
            true,
            Instant::now(),
        );
        // A switch landed between reading the map and the running slots: this read is low.
        let totals = flat(h.update(
            &tree(true),
            own(&[(3, 90)]),
            &mut |_| [0],
            true,
            Instant::now(),
        ));
        assert_eq!(totals[2], 100);
    }

    #[test]
    fn ids_no_walk_finds_go_to_the_root_after_the_grace_in_time_and_walks() {
        let mut h = CounterHierarchy::<1>::default();
        let t0 = Instant::now();
        let mut freed = Vec::new();
        let mut take = |id| {
            freed.push(id);
            [7]
        };
        // Many quick passes (a 100 ms pace) without walks: nothing is given up.
        for i in 0..20 {
            let t = h.update(
                &tree(true),
                own(&[(99, 7)]),
                &mut take,
                false,
                t0 + i * Duration::from_millis(100),
            );
            assert_eq!(t.unattributed, 0);
        }
        assert!(h.has_unknown(), "the sampler walks early while ids wait");
        // Two walks later but before the grace: still waiting.
        h.update(
            &tree(true),
            own(&[(99, 7)]),
            &mut take,
            true,
            t0 + Duration::from_secs(3),
        );
        h.update(
            &tree(true),
            own(&[(99, 7)]),
            &mut take,
            true,
            t0 + Duration::from_secs(4),
        );
        let t = h.update(
            &tree(true),
            own(&[(1, 5), (99, 7)]),
            &mut take,
            false,
            t0 + UNKNOWN_ID_GRACE,
        );
        assert_eq!(t.unattributed, 1);
        assert_eq!(freed, vec![99]);
        // Its 7 ns are the root's from now on (the root's total holds every descendant's).
        assert_eq!(flat(t)[0], 12);
        let totals = flat(h.update(
            &tree(true),
            own(&[(1, 5)]),
            &mut |_| [0],
            true,
            t0 + UNKNOWN_ID_GRACE,
        ));
        assert_eq!(totals[0], 12);
        assert!(!h.has_unknown());
    }

    #[test]
    fn an_id_a_walk_finds_is_never_given_up() {
        let mut h = CounterHierarchy::<1>::default();
        let t0 = Instant::now();
        h.update(
            &tree(false),
            own(&[(4, 3)]),
            &mut |_| unreachable!(),
            true,
            t0,
        );
        let totals = flat(h.update(
            &tree(true),
            own(&[(4, 3)]),
            &mut |_| unreachable!(),
            true,
            t0 + UNKNOWN_ID_GRACE * 2,
        ));
        assert_eq!(totals, vec![3, 3, 0, 3]);
    }

    #[test]
    fn a_removed_subtree_folds_up_to_the_live_ancestor() {
        let mut h = CounterHierarchy::<1>::default();
        h.update(
            &tree(true),
            own(&[(3, 100), (4, 20)]),
            &mut |_| [0],
            true,
            Instant::now(),
        );
        let root_only = &tree(false)[..1];
        let totals = flat(h.update(
            root_only,
            own(&[(2, 0), (3, 100), (4, 20)]),
            &mut |id| match id {
                3 => [100],
                4 => [20],
                _ => [0],
            },
            true,
            Instant::now(),
        ));
        assert_eq!(totals, vec![120]);
    }
}
