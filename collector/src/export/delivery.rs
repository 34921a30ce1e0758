//! Delivery to one destination: a queue of encoded requests bounded in bytes (the oldest is
//! dropped, and counted, to make room), and one sender that keeps one request in flight — the
//! oldest — so every series arrives in order. A request is retried with capped, jittered
//! backoff while the receiver is unreachable or answers 5xx/429; any other refusal drops it.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::Notify;

use super::transport::{Outcome, Transport};
use crate::net::backoff::Backoff;

/// Counters of one destination, served on `/metrics`.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Samples (data points) the receiver accepted.
    pub samples: AtomicU64,
    /// Request bytes the receiver accepted, as sent (compressed for remote-write).
    pub bytes: AtomicU64,
    /// Attempts, including retries.
    pub requests: AtomicU64,
    /// Attempts that failed: network errors, timeouts, refusals.
    pub failures: AtomicU64,
    /// Samples dropped because the queue was full (the oldest went).
    pub dropped_queue_full: AtomicU64,
    /// Samples the receiver refused for good (4xx, or an OTLP partial success).
    pub dropped_rejected: AtomicU64,
    /// Samples still queued when the shutdown grace ran out.
    pub dropped_shutdown: AtomicU64,
    /// Encoded bytes waiting (including the request in flight).
    pub queued_bytes: AtomicU64,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

/// One encoded request.
#[derive(Debug, Clone)]
pub struct Request {
    pub body: Bytes,
    pub samples: usize,
}

struct Entry {
    id: u64,
    request: Request,
}

#[derive(Default)]
struct Inner {
    entries: VecDeque<Entry>,
    bytes: usize,
    next_id: u64,
    closed: bool,
}

/// The bounded queue between the exporter (producer) and the sender.
pub struct Queue {
    inner: Mutex<Inner>,
    bound: usize,
    ready: Notify,
    stats: Arc<DeliveryStats>,
}

impl Queue {
    pub fn new(bound: usize, stats: Arc<DeliveryStats>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            bound,
            ready: Notify::new(),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent queue; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `request`, first dropping the oldest requests (the one in flight included)
    /// until it fits. A request larger than the whole bound is dropped itself.
    pub fn push(&self, request: Request) {
        let mut q = self.lock();
        if q.closed {
            add(&self.stats.dropped_shutdown, request.samples);
            return;
        }
        let size = request.body.len();
        if size > self.bound {
            add(&self.stats.dropped_queue_full, request.samples);
            return;
        }
        while q.bytes + size > self.bound {
            let Some(old) = q.entries.pop_front() else {
                break;
            };
            q.bytes -= old.request.body.len();
            add(&self.stats.dropped_queue_full, old.request.samples);
        }
        q.bytes += size;
        let id = q.next_id;
        q.next_id += 1;
        q.entries.push_back(Entry { id, request });
        self.stats
            .queued_bytes
            .store(q.bytes as u64, Ordering::Relaxed);
        drop(q);
        self.ready.notify_one();
    }

    /// The oldest request, waiting for one; `None` once closed and empty.
    async fn front(&self) -> Option<(u64, Request)> {
        loop {
            let notified = self.ready.notified();
            {
                let q = self.lock();
                if let Some(e) = q.entries.front() {
                    return Some((e.id, e.request.clone()));
                }
                if q.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Whether request `id` is still queued (overflow may have dropped it while in flight).
    fn holds(&self, id: u64) -> bool {
        self.lock().entries.front().is_some_and(|e| e.id == id)
    }

    /// Removes request `id` if it is still the oldest.
    fn done(&self, id: u64) {
        let mut q = self.lock();
        if q.entries.front().is_some_and(|e| e.id == id)
            && let Some(e) = q.entries.pop_front()
        {
            q.bytes -= e.request.body.len();
        }
        self.stats
            .queued_bytes
            .store(q.bytes as u64, Ordering::Relaxed);
    }

    /// No more requests: the sender finishes what is queued and stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Drops everything left (the shutdown grace ran out), counting it.
    pub fn abandon(&self) {
        let mut q = self.lock();
        let samples: usize = q.entries.drain(..).map(|e| e.request.samples).sum();
        q.bytes = 0;
        add(&self.stats.dropped_shutdown, samples);
        self.stats.queued_bytes.store(0, Ordering::Relaxed);
    }
}

/// Retry pacing and per-attempt timeout of a sender.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Sends the queue's requests one at a time, oldest first, until the queue is closed and empty.
pub async fn run(
    queue: Arc<Queue>,
    mut transport: Transport,
    label: String,
    pacing: Pacing,
    seed: u64,
) {
    let stats = queue.stats.clone();
    let mut backoff = Backoff::new(pacing.backoff_min, pacing.backoff_max, seed);
    // Failures of the request in flight, for one log line when it fails first and one when it
    // gets through, rather than one per attempt.
    let mut failing: Option<u32> = None;
    while let Some((id, request)) = queue.front().await {
        add(&stats.requests, 1);
        match transport.send(request.body.clone(), pacing.timeout).await {
            Outcome::Delivered { rejected, message } => {
                add(
                    &stats.samples,
                    request.samples.saturating_sub(rejected as usize),
                );
                add(&stats.bytes, request.body.len());
                if rejected > 0 {
                    add(&stats.dropped_rejected, rejected as usize);
                    tracing::warn!(endpoint = %label, "receiver rejected {rejected} points: {message}");
                }
                if let Some(n) = failing.take() {
                    tracing::info!(endpoint = %label, "delivered again after {n} failed attempts");
                }
                queue.done(id);
                backoff.reset();
            }
            Outcome::Rejected(message) => {
                add(&stats.failures, 1);
                add(&stats.dropped_rejected, request.samples);
                tracing::warn!(
                    endpoint = %label,
                    "receiver refused a request of {} samples, dropped: {message}",
                    request.samples
                );
                failing = None;
                queue.done(id);
            }
            Outcome::Retry(message) => {
                add(&stats.failures, 1);
                let n = failing.get_or_insert(0);
                *n += 1;
                if *n == 1 {
                    tracing::warn!(endpoint = %label, "push failed, retrying with backoff: {message}");
                } else {
                    tracing::debug!(endpoint = %label, "push attempt {n} failed: {message}");
                }
                tokio::time::sleep(backoff.next_delay()).await;
                if !queue.holds(id) {
                    // Dropped for room while we waited; the next one starts afresh.
                    backoff.reset();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(bytes: usize, samples: usize) -> Request {
        Request {
            body: Bytes::from(vec![0u8; bytes]),
            samples,
        }
    }

    #[test]
    fn the_oldest_requests_make_room_and_are_counted() {
        let stats = Arc::new(DeliveryStats::default());
        let q = Queue::new(100, stats.clone());
        q.push(request(40, 1));
        q.push(request(40, 2));
        q.push(request(40, 3)); // drops the first
        assert_eq!(stats.dropped_queue_full.load(Ordering::Relaxed), 1);
        assert_eq!(stats.queued_bytes.load(Ordering::Relaxed), 80);
        q.push(request(101, 7)); // larger than the bound: dropped itself
        assert_eq!(stats.dropped_queue_full.load(Ordering::Relaxed), 8);
        let samples: Vec<usize> = q.lock().entries.iter().map(|e| e.request.samples).collect();
        assert_eq!(samples, [2, 3]);
        q.abandon();
        assert_eq!(stats.dropped_shutdown.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn a_request_dropped_in_flight_is_not_removed_twice() {
        let stats = Arc::new(DeliveryStats::default());
        let q = Queue::new(100, stats);
        q.push(request(60, 1));
        let (id, _) = q.front().await.unwrap();
        q.push(request(60, 2)); // the one in flight goes
        assert!(!q.holds(id));
        q.done(id); // a late success must not remove the newer one
        assert_eq!(q.lock().entries.len(), 1);
        q.close();
        let (id2, r) = q.front().await.unwrap();
        assert_eq!(r.samples, 2);
        q.done(id2);
        assert!(
            q.front().await.is_none(),
            "closed and empty ends the sender"
        );
    }
}
