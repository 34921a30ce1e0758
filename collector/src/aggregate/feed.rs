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
    net::client::{self, ClientTls},
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

/// Capped exponential backoff with jitter: each delay is drawn from [d/2, d], where d doubles
/// per failure up to the cap, so many aggregators (or many targets) do not retry in lockstep.
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self {
            min,
            max,
            current: min,
            seed: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        // xorshift64: enough randomness for jitter, no dependency.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fraction = (self.seed % 1000) as f64 / 1000.0;
        d.mul_f64(0.5 + 0.5 * fraction)
    }
}

/// Runs until aborted: the feed of the collector at `address`.
pub async fn run(address: String, cluster: Arc<Cluster>, opts: FeedOptions) {
    let seed = address.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) ^ SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos().into());
    let mut backoff = Backoff::new(opts.backoff_min, opts.backoff_max, seed);
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
    let mut node = NodeState::default();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(3);
        let mut b = Backoff::new(min, max, 42);
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        let mut nominal = min;
        for d in &delays {
            assert!(*d >= nominal / 2 && *d <= nominal, "{d:?} vs {nominal:?}");
            nominal = (nominal * 2).min(max);
        }
        assert!(delays[9] >= max / 2, "capped, not grown without bound");
        assert!(delays.windows(2).any(|w| w[0] != w[1] / 2), "jittered");
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
