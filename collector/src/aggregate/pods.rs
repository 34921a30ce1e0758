//! Compact per-pod state of the cluster view: what metrics.k8s.io needs of each pod, with its
//! strings shared instead of copied. A node's published pods and its feed's tracking state hold
//! the same `Arc<str>`s (uid, name), and namespaces and container names are interned across
//! the cluster, so 5,000 nodes x 110 pods keep one copy of each string; protobuf `PodMetrics`
//! are built only when an API call asks for them.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use crate::proto;

/// One pod as published: every container has a rate and a working set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    pub uid: Arc<str>,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub timestamp_unix_nano: u64,
    pub window_nano_seconds: u64,
    pub containers: Box<[ContainerEntry]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEntry {
    pub name: Arc<str>,
    pub cpu_nano_cores: u64,
    pub memory_working_set_bytes: u64,
}

impl PodEntry {
    /// The metrics.k8s.io message, on the node named `node`.
    pub fn to_proto(&self, node: &str) -> proto::PodMetrics {
        proto::PodMetrics {
            name: self.name.to_string(),
            namespace: self.namespace.to_string(),
            uid: self.uid.to_string(),
            node: node.to_owned(),
            timestamp_unix_nano: self.timestamp_unix_nano,
            window_nano_seconds: self.window_nano_seconds,
            containers: self
                .containers
                .iter()
                .map(|c| proto::ContainerMetrics {
                    name: c.name.to_string(),
                    cpu_nano_cores: c.cpu_nano_cores,
                    memory_working_set_bytes: c.memory_working_set_bytes,
                })
                .collect(),
        }
    }
}

/// Strings many pods share (namespaces, container names), one copy each for the cluster.
/// Entries nobody else holds any more are dropped by [`Interner::forget_unused`].
#[derive(Debug, Default)]
pub struct Interner {
    names: Mutex<HashSet<Arc<str>>>,
}

impl Interner {
    pub fn intern(&self, s: &str) -> Arc<str> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = names.get(s) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(s);
        names.insert(name.clone());
        name
    }

    /// Drops the names only the interner holds (their pods are gone).
    pub fn forget_unused(&self) {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.retain(|n| Arc::strong_count(n) > 1);
    }

    pub fn len(&self) -> usize {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `s` as an `Arc<str>`, reusing `current` when it already says the same (no allocation for
/// the unchanged name of every update).
pub fn same_or_new(current: &mut Arc<str>, s: &str, intern: Option<&Interner>) {
    if &**current != s {
        *current = match intern {
            Some(names) => names.intern(s),
            None => Arc::from(s),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_names_are_one_copy_until_unused() {
        let names = Interner::default();
        let a = names.intern("kube-system");
        let b = names.intern("kube-system");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(names.len(), 1);
        drop((a, b));
        names.forget_unused();
        assert!(names.is_empty());
    }

    #[test]
    fn an_unchanged_name_keeps_its_allocation() {
        let mut name: Arc<str> = Arc::from("app");
        let before = name.clone();
        same_or_new(&mut name, "app", None);
        assert!(Arc::ptr_eq(&name, &before));
        same_or_new(&mut name, "sidecar", None);
        assert_eq!(&*name, "sidecar");
    }

    #[test]
    fn the_proto_names_the_node() {
        let pod = PodEntry {
            uid: Arc::from("u"),
            name: Arc::from("p"),
            namespace: Arc::from("ns"),
            timestamp_unix_nano: 5,
            window_nano_seconds: 10,
            containers: vec![ContainerEntry {
                name: Arc::from("c"),
                cpu_nano_cores: 7,
                memory_working_set_bytes: 9,
            }]
            .into(),
        };
        let m = pod.to_proto("node-1");
        assert_eq!((m.node.as_str(), m.uid.as_str()), ("node-1", "u"));
        assert_eq!(m.containers[0].memory_working_set_bytes, 9);
    }
}
