//! Which collectors to subscribe to: a static list, and DNS names resolved to all their addresses
//! (a Kubernetes headless Service) and re-resolved periodically. One feed task per address.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use tokio::task::JoinHandle;

use super::{
    cluster::Cluster,
    feed::{self, FeedOptions},
};

pub const STATIC_SOURCE: &str = "static";

#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// host:port (or a full URL) of each collector.
    pub static_addresses: Vec<String>,
    /// name:port, resolved to every address the name has.
    pub dns_names: Vec<String>,
    pub resolve_every: Duration,
}

/// Keeps one feed per wanted address: started when it appears, stopped when it goes.
pub async fn run(targets: Targets, cluster: Arc<Cluster>, opts: FeedOptions) {
    // Aborting this task drops the map, which stops every feed.
    let mut feeds = AbortOnDrop(BTreeMap::new());
    // Last good resolution per name: a failed lookup keeps it rather than dropping every node.
    let mut resolved: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    loop {
        let mut wanted: BTreeMap<String, String> = targets
            .static_addresses
            .iter()
            .map(|a| (a.clone(), STATIC_SOURCE.to_owned()))
            .collect();
        for name in &targets.dns_names {
            match resolve(name).await {
                Ok(addresses) => {
                    if resolved.get(name) != Some(&addresses) {
                        tracing::info!(%name, count = addresses.len(), "collectors resolved");
                    }
                    resolved.insert(name.clone(), addresses);
                }
                Err(e) => tracing::warn!(%name, "cannot resolve ({e}); keeping the last addresses"),
            }
            for a in resolved.get(name).into_iter().flatten() {
                wanted.entry(a.clone()).or_insert_with(|| name.clone());
            }
        }
        feeds.0.retain(|address, task| {
            let keep = wanted.contains_key(address);
            if !keep {
                tracing::info!(%address, "collector no longer listed; unsubscribing");
                task.abort();
                cluster.remove_target(address);
            }
            keep
        });
        for (address, source) in wanted {
            if feeds.0.contains_key(&address) {
                continue;
            }
            cluster.update_target(&address, |t| t.source = source);
            feeds.0.insert(
                address.clone(),
                tokio::spawn(feed::run(address, cluster.clone(), opts.clone())),
            );
        }
        if targets.dns_names.is_empty() {
            // Nothing will change: park here, keeping the feeds.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(targets.resolve_every).await;
    }
}

/// The feeds by address; dropping it stops them.
struct AbortOnDrop(BTreeMap<String, JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in self.0.values() {
            task.abort();
        }
    }
}

/// A lookup that takes longer fails (and the last addresses are kept): a slow resolver must
/// not hold up re-resolution forever.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);

async fn resolve(name: &str) -> std::io::Result<BTreeSet<String>> {
    let addresses = tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host(name))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {DNS_TIMEOUT:?}"),
            )
        })??;
    Ok(addresses.map(|a| a.to_string()).collect())
}
