//! The cluster view: the latest published state of every node, and the status of every
//! collector subscribed to.
//!
//! Each node's feeder reduces its own stream and swaps in an immutable [`NodeEntry`]; readers
//! (the APIs) clone a list of `Arc`s under a short read lock and never wait for a feeder.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use super::pods::{Interner, PodEntry};
use crate::{proto, unix_time::unix_nanos};

/// One node as last published by its feeder.
#[derive(Debug)]
pub struct NodeEntry {
    pub metrics: proto::NodeMetrics,
    /// Compact, sharing its strings with the feeder's state; see [`super::pods`].
    pub pods: Vec<PodEntry>,
    pub heard_at: Instant,
    pub heard_wall: SystemTime,
    pub address: String,
}

/// A node name that another fresh collector already reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node name {name:?} is already reported by the collector at {holder}; refusing this one \
     (set distinct --node-name values)"
)]
pub struct NameTaken {
    pub name: String,
    pub holder: String,
}

/// A node as readers see it: the entry plus whether it is stale now.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub entry: Arc<NodeEntry>,
    pub stale: bool,
}

impl NodeView {
    pub fn metrics(&self) -> proto::NodeMetrics {
        let mut m = self.entry.metrics.clone();
        m.stale = self.stale;
        m.collector_address.clone_from(&self.entry.address);
        m.last_heard_unix_nano = unix_nanos(self.entry.heard_wall);
        m
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// Silence after which a node is marked stale.
    pub stale_after: Duration,
    /// Silence after which it is forgotten.
    pub forget_after: Duration,
}

pub struct Cluster {
    nodes: RwLock<HashMap<String, Arc<NodeEntry>>>,
    targets: RwLock<BTreeMap<String, proto::CollectorTarget>>,
    pub freshness: Freshness,
    /// Namespaces and container names, one copy for every node.
    pub names: Arc<Interner>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Cluster {
    pub fn new(freshness: Freshness) -> Self {
        Self {
            nodes: RwLock::default(),
            targets: RwLock::default(),
            freshness,
            names: Arc::default(),
        }
    }

    /// Publishes a node's state. A node name belongs to the collector (target) that reported
    /// it first for as long as that one stays fresh: another target claiming the same name is
    /// refused (and told why) instead of overwriting it. A stale holder's name can be taken
    /// over (a collector restarted at a new address).
    pub fn publish(&self, entry: NodeEntry) -> Result<(), NameTaken> {
        let name = entry.metrics.name.clone();
        let mut nodes = write(&self.nodes);
        if let Some(holder) = nodes.get(&name)
            && holder.address != entry.address
            && holder.heard_at.elapsed() <= self.freshness.stale_after
        {
            return Err(NameTaken {
                name,
                holder: holder.address.clone(),
            });
        }
        nodes.insert(name, Arc::new(entry));
        Ok(())
    }

    /// Drops `name` if `address` holds it (a target that now reports another name, or went).
    pub fn release(&self, name: &str, address: &str) {
        let mut nodes = write(&self.nodes);
        if nodes.get(name).is_some_and(|e| e.address == address) {
            nodes.remove(name);
        }
    }

    /// Every known node, sorted by name.
    pub fn nodes(&self) -> Vec<NodeView> {
        let now = Instant::now();
        let mut out: Vec<NodeView> = read(&self.nodes)
            .values()
            .map(|e| NodeView {
                stale: now.saturating_duration_since(e.heard_at) > self.freshness.stale_after,
                entry: e.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.entry.metrics.name.cmp(&b.entry.metrics.name));
        out
    }

    /// Pods of fresh nodes, optionally in one namespace, sorted by namespace and name.
    pub fn pods(&self, namespace: Option<&str>) -> Vec<proto::PodMetrics> {
        let mut out: Vec<proto::PodMetrics> = self
            .nodes()
            .iter()
            .filter(|n| !n.stale)
            .flat_map(|n| {
                let node = &n.entry.metrics.name;
                (n.entry.pods.iter())
                    .filter(|p| namespace.is_none_or(|ns| *p.namespace == *ns))
                    .map(|p| p.to_proto(node))
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid)));
        out
    }

    /// Forgets nodes silent for longer than `forget_after`; returns their names.
    pub fn forget_silent(&self) -> Vec<String> {
        let limit = self.freshness.forget_after;
        let mut nodes = write(&self.nodes);
        let gone: Vec<String> = nodes
            .iter()
            .filter(|(_, e)| e.heard_at.elapsed() > limit)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            nodes.remove(name);
        }
        gone
    }

    pub fn update_target(&self, address: &str, f: impl FnOnce(&mut proto::CollectorTarget)) {
        let mut targets = write(&self.targets);
        let target = targets
            .entry(address.to_owned())
            .or_insert_with(|| proto::CollectorTarget {
                address: address.to_owned(),
                ..Default::default()
            });
        f(target);
    }

    pub fn remove_target(&self, address: &str) {
        write(&self.targets).remove(address);
    }

    pub fn targets(&self) -> Vec<proto::CollectorTarget> {
        read(&self.targets).values().cloned().collect()
    }
}

/// Forgets silent nodes once a second for as long as the aggregator runs.
pub async fn janitor(cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for name in cluster.forget_silent() {
            tracing::info!(node = %name, "forgot a node silent for {:?}", cluster.freshness.forget_after);
        }
        cluster.names.forget_unused();
    }
}
