//! A streaming subscriber's bounded queue, shared by the collector's and the aggregator's
//! Watch. A queue is bounded in messages and in encoded bytes, and all the queues of a server
//! share a byte budget: a subscriber whose queue is full when a message is due, or that still
//! has messages queued when the budget is spent, is dropped: its queued messages are freed at
//! once and it receives RESOURCE_EXHAUSTED telling it to resubscribe. A message into an empty
//! queue is always taken, so a subscriber that keeps up is never dropped for the others. The
//! producer never waits for a slow client.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use futures::Stream;
use tokio::sync::Notify;
use tonic::Status;

/// What a subscriber receives: its queued messages, then, if it was dropped, why.
pub type SubscriberStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What a queue holds, sized by the bytes it will send.
pub trait QueueItem {
    fn queued_bytes(&self) -> usize;
}

impl QueueItem for crate::proto::WatchResponse {
    fn queued_bytes(&self) -> usize {
        prost::Message::encoded_len(self)
    }
}

impl QueueItem for crate::proto::ClusterUpdate {
    fn queued_bytes(&self) -> usize {
        prost::Message::encoded_len(self)
    }
}

/// Encoded bytes one subscriber may have queued: room for a pause of a few seconds on a big
/// node (a message into an empty queue is always taken, whatever its size).
pub const SUBSCRIBER_QUEUE_BYTES: usize = 16 << 20;
/// Encoded bytes all the subscribers of a server may have queued together: what stalled
/// subscribers can pin at most, however many there are.
pub const QUEUE_BUDGET_BYTES: usize = 64 << 20;

/// The byte budget the queues of one server share.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: std::sync::atomic::AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Bytes queued now, over every subscriber.
    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.used.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client went away or the server is stopping.
    Closed,
    /// Dropped for falling behind.
    TooSlow,
}

/// How much a queue may hold, and the budget it shares with the server's other queues.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub messages: usize,
    pub bytes: usize,
    pub budget: Arc<Budget>,
}

struct State<T> {
    queue: VecDeque<(T, usize)>,
    bytes: usize,
    /// The status the stream ends with after the queue (dropped subscribers).
    goodbye: Option<Status>,
    /// No more messages will come: the stream ends once the queue is empty.
    finished: bool,
    /// The receiving stream is gone (the client hung up or tonic dropped the response).
    receiver_gone: bool,
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    budget: Arc<Budget>,
    /// Signalled when room frees up or the receiver goes.
    space: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // Nothing here can leave the state half-updated on a panic; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frees every queued message now.
    fn clear(&self, state: &mut State<T>) {
        state.queue.clear();
        state.queue.shrink_to_fit();
        self.budget.sub(state.bytes);
        state.bytes = 0;
    }
}

/// The sending side of one subscription.
pub struct Outbox<T> {
    shared: Arc<Shared<T>>,
    bounds: Bounds,
}

/// A queue with `bounds`, and the stream to hand to tonic.
pub fn channel<T: QueueItem + Send + 'static>(bounds: Bounds) -> (Outbox<T>, SubscriberStream<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            bytes: 0,
            goodbye: None,
            finished: false,
            receiver_gone: false,
            waker: None,
        }),
        budget: bounds.budget.clone(),
        space: Notify::new(),
    });
    let stream = Receiver {
        shared: shared.clone(),
    };
    (Outbox { shared, bounds }, Box::pin(stream))
}

impl<T: QueueItem> Outbox<T> {
    /// Queues a message now; a full queue means the client is too slow.
    pub fn try_send(&self, msg: T) -> Result<(), End> {
        let size = msg.queued_bytes();
        let mut state = self.shared.lock();
        if state.receiver_gone {
            return Err(End::Closed);
        }
        if !self.has_room(&state, size) {
            return Err(End::TooSlow);
        }
        self.push(&mut state, msg, size);
        Ok(())
    }

    /// Queues a message, waiting up to `patience` for room (the rest of a message the client is
    /// already reading).
    pub async fn send_within(&self, msg: T, patience: Duration) -> Result<(), End> {
        let size = msg.queued_bytes();
        let wait = async {
            loop {
                let room = self.shared.space.notified();
                {
                    let state = self.shared.lock();
                    if state.receiver_gone {
                        return Err(End::Closed);
                    }
                    if self.has_room(&state, size) {
                        return Ok(());
                    }
                }
                room.await;
            }
        };
        match tokio::time::timeout(patience, wait).await {
            Ok(Ok(())) => {
                self.push(&mut self.shared.lock(), msg, size);
                Ok(())
            }
            Ok(Err(end)) => Err(end),
            Err(_) => Err(End::TooSlow),
        }
    }

    fn has_room(&self, state: &State<T>, size: usize) -> bool {
        state.queue.is_empty()
            || (state.queue.len() < self.bounds.messages
                && state.bytes + size <= self.bounds.bytes
                && self.bounds.budget.used() + size <= self.bounds.budget.limit)
    }

    fn push(&self, state: &mut State<T>, msg: T, size: usize) {
        state.queue.push_back((msg, size));
        state.bytes += size;
        self.bounds.budget.add(size);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

impl<T> Outbox<T> {
    /// Whether the client has gone away.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().receiver_gone
    }

    /// Completes when the client has gone away.
    pub async fn closed(&self) {
        loop {
            let gone = self.shared.space.notified();
            if self.shared.lock().receiver_gone {
                return;
            }
            gone.await;
        }
    }

    /// Ends the subscription. A too-slow subscriber's queued messages are freed now, and it
    /// is told why; otherwise the stream ends after what is queued.
    pub fn finish(self, end: End, what: &str) -> End {
        let mut state = self.shared.lock();
        if end == End::TooSlow {
            self.shared.clear(&mut state);
            state.goodbye = Some(Status::resource_exhausted(format!(
                "subscriber fell behind (its queue reached {} messages, {} KiB, or the \
                 server's {} MiB for every subscriber) and was dropped; resubscribe for a fresh \
                 snapshot",
                self.bounds.messages,
                self.bounds.bytes >> 10,
                self.bounds.budget.limit >> 20
            )));
            tracing::info!("dropped a slow {what} subscriber");
        }
        state.finished = true;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        end
    }
}

/// The stream tonic sends from.
struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Stream for Receiver<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.shared.lock();
        if let Some((msg, size)) = state.queue.pop_front() {
            state.bytes -= size;
            self.shared.budget.sub(size);
            drop(state);
            self.shared.space.notify_one();
            return Poll::Ready(Some(Ok(msg)));
        }
        if let Some(status) = state.goodbye.take() {
            return Poll::Ready(Some(Err(status)));
        }
        if state.finished {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        // Nobody will read them.
        self.shared.clear(&mut state);
        drop(state);
        self.shared.space.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;
    use crate::proto::WatchResponse;

    fn msg(cgroups: usize) -> WatchResponse {
        WatchResponse {
            removed_cgroup_ids: (0..cgroups as u64).map(|i| i + 1_000_000).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_queue_full_in_bytes_drops_the_subscriber_and_frees_what_it_held() {
        let one = msg(10_000);
        let size = one.queued_bytes();
        let budget = Budget::new(usize::MAX);
        let (out, mut stream) = channel::<WatchResponse>(Bounds {
            messages: 100,
            bytes: size * 3,
            budget: budget.clone(),
        });
        for _ in 0..3 {
            out.try_send(one.clone()).unwrap();
        }
        assert_eq!(out.try_send(one.clone()), Err(End::TooSlow), "bytes bound");
        let shared = out.shared.clone();
        assert_eq!(out.finish(End::TooSlow, "test"), End::TooSlow);
        assert_eq!(
            shared.lock().bytes,
            0,
            "freed at once, before the client reads"
        );
        assert!(shared.lock().queue.is_empty());
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("resubscribe"), "{status}");
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_big_message_into_an_empty_queue_is_taken_and_a_closed_client_is_seen() {
        let (out, stream) = channel::<WatchResponse>(Bounds {
            messages: 4,
            bytes: 16,
            budget: Budget::new(usize::MAX),
        });
        out.try_send(msg(1_000)).unwrap();
        assert_eq!(out.try_send(msg(1)), Err(End::TooSlow));
        drop(stream);
        tokio::time::timeout(Duration::from_secs(1), out.closed())
            .await
            .expect("closed() sees the receiver go");
        assert_eq!(out.try_send(msg(1)), Err(End::Closed));
    }

    #[tokio::test]
    async fn a_spent_budget_drops_subscribers_with_a_backlog_but_not_those_keeping_up() {
        let one = msg(1_000);
        let size = one.queued_bytes();
        let budget = Budget::new(size * 4);
        let bounds = Bounds {
            messages: 100,
            bytes: usize::MAX,
            budget: budget.clone(),
        };
        let (stalled, _stalled_stream) = channel::<WatchResponse>(bounds.clone());
        let (reader, mut reader_stream) = channel::<WatchResponse>(bounds);
        for _ in 0..4 {
            stalled.try_send(one.clone()).unwrap();
        }
        assert_eq!(budget.used(), size * 4);
        // The stalled one has a backlog: with the budget spent it is too slow.
        assert_eq!(stalled.try_send(one.clone()), Err(End::TooSlow));
        // One that reads what it gets always has room for its next message.
        for _ in 0..3 {
            reader.try_send(one.clone()).unwrap();
            reader_stream.next().await.unwrap().unwrap();
        }
        stalled.finish(End::TooSlow, "test");
        assert_eq!(budget.used(), 0);
    }
}
