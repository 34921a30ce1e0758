//! One collector's feed: subscribe to its Watch stream, reduce it into a [`NodeState`] and publish
//! it; reconnect with capped exponential backoff and jitter when anything fails.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::{
    cluster::{Cluster, NodeEntry},
    node_state::NodeState,
};
use crate::{
    net::{
        backoff::{self, Backoff},
        client::{self, ClientTls},
    },
    proto::{self, collector_client::CollectorClient},
};

#[derive(Debug, Clone)]
pub struct FeedOptions {
    /// Watch interval asked of each collector.
    pub interval: Duration,
    pub tls: ClientTls,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Runs until aborted: the feed of the collector at `address`.
pub async fn run(address: String, cluster: Arc<Cluster>, opts: FeedOptions) {
    let mut backoff = Backoff::new(opts.backoff_min, opts.backoff_max, backoff::seed(&address));
    loop {
        let mut heard = false;
        let result = stream_once(&address, &cluster, &opts, &mut heard).await;
        if heard {
            backoff.reset();
        }
        let why = match result {
            Ok(()) => "the collector ended the stream".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        cluster.update_target(&address, |t| {
            t.connected = false;
            t.last_error.clone_from(&why);
            t.reconnects += 1;
        });
        let delay = backoff.next_delay();
        tracing::debug!(%address, "feed ended ({why}); reconnecting in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

/// How long a stream may stay silent before it counts as dead (a collector sends one message
/// per interval).
fn silence_limit(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(5))
}

async fn stream_once(
    address: &str,
    cluster: &Cluster,
    opts: &FeedOptions,
    heard: &mut bool,
) -> anyhow::Result<()> {
    let channel = client::connect(address, &opts.tls).await?;
    let mut client = CollectorClient::new(channel).max_decoding_message_size(64 << 20);
    let request = proto::WatchRequest {
        interval_ms: Some(u32::try_from(opts.interval.as_millis()).unwrap_or(u32::MAX)),
        only_cpu_and_memory: true,
        ..Default::default()
    };
    let mut stream = client.watch(request).await?.into_inner();
    cluster.update_target(address, |t| {
        t.connected = true;
        t.last_error.clear();
    });
    let mut node = NodeState::with_names(cluster.names.clone());
    // The name this target was refused, while it is refused (logged once).
    let mut conflict = None;
    let limit = silence_limit(opts.interval);
    loop {
        let msg = match tokio::time::timeout(limit, stream.message()).await {
            Err(_) => anyhow::bail!("no message for {limit:?}"),
            Ok(Ok(Some(msg))) => msg,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(status)) => return Err(status.into()),
        };
        *heard = true;
        if !node.apply(&msg) || node.name.is_empty() {
            continue;
        }
        if msg.snapshot {
            let name = node.name.clone();
            let mut previous = String::new();
            cluster.update_target(address, |t| previous = std::mem::replace(&mut t.node, name));
            if previous != node.name {
                cluster.release(&previous, address);
            }
        }
        let published = cluster.publish(NodeEntry {
            metrics: node.node_metrics(),
            pods: node.pod_metrics(),
            heard_at: Instant::now(),
            heard_wall: SystemTime::now(),
            address: address.to_owned(),
        });
        match published {
            Ok(()) => {
                if conflict.take().is_some() {
                    cluster.update_target(address, |t| t.last_error.clear());
                }
            }
            Err(taken) => {
                if conflict.as_ref() != Some(&taken) {
                    tracing::warn!(%address, "{taken}");
                    let why = taken.to_string();
                    cluster.update_target(address, |t| t.last_error = why);
                    conflict = Some(taken);
                }
            }
        }
    }
}
