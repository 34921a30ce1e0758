//! The soak's Watch subscriber: it follows the soak's subtree through restarts (resubscribing
//! with backoff), checks every announced removal against the filesystem (a removal of a
//! cgroup still there is an error), and computes the busy cgroups' eBPF CPU rates as a client
//! would, starting over when the collector's epoch (`start_time_unix_nano`) changes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use collector::proto::{WatchRequest, collector_client::CollectorClient};

use crate::churn::{SoakTree, alive};

const INTERVAL_MS: u32 = 1000;

#[derive(Clone, Default)]
pub struct Figures {
    /// Removals announced while the cgroup's directory (same inode) still existed.
    pub alive_removals: u64,
    pub removals: u64,
    pub terminated: u64,
    /// Subscriptions after the first (each one starts with a snapshot).
    pub reconnects: u64,
    /// Distinct collector epochs seen.
    pub epochs: u64,
    /// Busy-cgroup eBPF rates computed, and those below zero or above every CPU busy.
    pub rates: u64,
    pub negative_rates: u64,
    pub spiking_rates: u64,
    /// Times a busy cgroup's eBPF counter went down from one message to the next (what a
    /// client ignoring the epoch would turn into a negative rate).
    pub naive_decreases: u64,
}

pub struct Watch(Arc<Mutex<Figures>>);

impl Watch {
    pub fn figures(&self) -> Figures {
        self.0.lock().unwrap().clone()
    }
}

pub fn spawn(port: u16, tree: Arc<SoakTree>) -> Watch {
    let figures = Arc::new(Mutex::new(Figures::default()));
    let shared = figures.clone();
    tokio::spawn(async move {
        let mut last: HashMap<u64, (u64, u64, u64)> = HashMap::new();
        let mut epochs = std::collections::HashSet::new();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let mut first = true;
        loop {
            let Ok(mut client) = CollectorClient::connect(format!("http://127.0.0.1:{port}")).await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let request = WatchRequest {
                interval_ms: Some(INTERVAL_MS),
                cgroup_path_prefix: tree.relative.clone(),
                ..Default::default()
            };
            let Ok(response) = client.watch(request).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if !first {
                shared.lock().unwrap().reconnects += 1;
            }
            first = false;
            let mut stream = response.into_inner();
            let mut paths: HashMap<u64, String> = HashMap::new();
            while let Ok(Some(msg)) = stream.message().await {
                let epoch = msg.collector.as_ref().map_or(0, |c| c.start_time_unix_nano);
                epochs.insert(epoch);
                let mut f = shared.lock().unwrap();
                f.epochs = epochs.len() as u64;
                for c in &msg.cgroups {
                    paths.insert(c.cgroup_id, c.path.clone());
                }
                for id in &msg.removed_cgroup_ids {
                    f.removals += 1;
                    if let Some(path) = paths.remove(id)
                        && alive(&tree.mount, &path, *id)
                    {
                        f.alive_removals += 1;
                        eprintln!("soak: removal of {path} ({id}) announced while it exists");
                    }
                }
                f.terminated += msg.terminated.len() as u64;
                for c in msg.cgroups.iter().filter(|c| c.path.contains("/busy/")) {
                    let Some(ebpf) = c.ebpf_cpu.as_ref() else {
                        continue;
                    };
                    let now = (epoch, msg.timestamp_unix_nano, ebpf.on_cpu_nano_seconds);
                    if let Some(&(e0, t0, v0)) = last.get(&c.cgroup_id) {
                        if now.2 < v0 {
                            f.naive_decreases += 1;
                        }
                        // A new epoch is a new baseline: no rate across it.
                        if e0 == epoch && now.1 > t0 {
                            let cores = (now.2 as f64 - v0 as f64) / (now.1 - t0) as f64;
                            f.rates += 1;
                            if cores < 0.0 {
                                f.negative_rates += 1;
                            } else if cores > cpus * 1.05 {
                                f.spiking_rates += 1;
                            }
                        }
                    }
                    last.insert(c.cgroup_id, now);
                }
            }
            // The stream ended (the collector was killed): resubscribe.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Watch(figures)
}
