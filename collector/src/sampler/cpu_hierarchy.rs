//! Hierarchical, monotonic eBPF CPU totals from per-cgroup own time.

use std::collections::{HashMap, HashSet};

use crate::cgroupfs::CgroupNode;

/// Turns the probe's per-cgroup own time into hierarchical totals (like cpu.stat), keeps them
/// monotonic, and folds removed cgroups' final time into their parents before freeing map entries.
#[derive(Default)]
pub struct CpuHierarchy {
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
    ///
    /// `own_ns` is each cgroup's own time from the probe; `take` deletes a cgroup's map entry and
    /// returns its final committed time.
    pub fn update(
        &mut self,
        nodes: &[CgroupNode],
        mut own_ns: HashMap<u64, u64>,
        take: &mut dyn FnMut(u64) -> u64,
    ) -> Vec<u64> {
        let present: HashSet<u64> = nodes.iter().map(|n| n.id).collect();
        self.retire_removed(&present, &mut own_ns, take);

        // Own + retired, then children into parents (pre-order reversed = children first).
        let mut totals: Vec<u64> = nodes
            .iter()
            .map(|n| {
                own_ns.get(&n.id).copied().unwrap_or(0)
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
        own_ns: &mut HashMap<u64, u64>,
        take: &mut dyn FnMut(u64) -> u64,
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
            let own = own_ns.remove(&id).map(|_| take(id)).unwrap_or(0);
            let carried = own + self.retired_ns.remove(&id).unwrap_or(0);
            if let Some(Some(parent)) = self.parent_of.get(&id) {
                *self.retired_ns.entry(*parent).or_default() += carried;
            }
        }
        for id in own_ns.keys() {
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
            take(id);
            self.unknown_passes.remove(&id);
        }
        self.unknown_passes.retain(|id, _| own_ns.contains_key(id));
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

    fn own(pairs: &[(u64, u64)]) -> HashMap<u64, u64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn totals_include_descendants_like_cpu_stat() {
        let mut h = CpuHierarchy::default();
        let totals = h.update(&tree(true), own(&[(1, 5), (3, 100), (4, 20)]), &mut |_| 0);
        assert_eq!(totals, vec![125, 120, 100, 20]);
    }

    #[test]
    fn removed_child_time_moves_into_its_parent_and_its_entry_is_freed() {
        let mut h = CpuHierarchy::default();
        h.update(&tree(true), own(&[(3, 100), (4, 20)]), &mut |_| 0);
        // /pod/b is gone; its final committed time in the map is 30.
        let mut taken = Vec::new();
        let totals = h.update(&tree(false), own(&[(3, 110), (4, 30)]), &mut |id| {
            taken.push(id);
            30
        });
        assert_eq!(taken, vec![4]);
        assert_eq!(totals, vec![140, 140, 110]);
        // And it stays there on later passes, without the map entry.
        let totals = h.update(&tree(false), own(&[(3, 120)]), &mut |_| unreachable!());
        assert_eq!(totals, vec![150, 150, 120]);
    }

    #[test]
    fn a_low_read_never_moves_a_counter_backwards() {
        let mut h = CpuHierarchy::default();
        h.update(&tree(true), own(&[(3, 100)]), &mut |_| 0);
        // A switch landed between reading the map and the running slots: this read is low.
        let totals = h.update(&tree(true), own(&[(3, 90)]), &mut |_| 0);
        assert_eq!(totals[2], 100);
    }

    #[test]
    fn ids_never_seen_in_a_walk_are_freed_after_a_grace_period() {
        let mut h = CpuHierarchy::default();
        let mut freed = Vec::new();
        for _ in 0..=UNKNOWN_ID_GRACE_PASSES {
            h.update(&tree(true), own(&[(99, 1)]), &mut |id| {
                freed.push(id);
                0
            });
        }
        assert_eq!(freed, vec![99]);
    }

    #[test]
    fn a_removed_subtree_folds_up_to_the_live_ancestor() {
        let mut h = CpuHierarchy::default();
        h.update(&tree(true), own(&[(3, 100), (4, 20)]), &mut |_| 0);
        let root_only = &tree(false)[..1];
        let totals = h.update(
            root_only,
            own(&[(2, 0), (3, 100), (4, 20)]),
            &mut |id| match id {
                3 => 100,
                4 => 20,
                _ => 0,
            },
        );
        assert_eq!(totals, vec![120]);
    }
}
