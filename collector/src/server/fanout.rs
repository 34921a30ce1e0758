//! Watch fan-out: subscribers that asked for the same shape (interval, filters, histograms,
//! only_cpu_and_memory, message limit) share one feed. The feed computes each update once,
//! encodes it once ([`Encoded`]) and queues the same bytes for every member; each member keeps
//! only its bounded queue and its sequence number.
//!
//! A subscriber that joins gets its own snapshot of the latest sample at once, then the feed's
//! updates. An update carries each cgroup and pod that changed since the feed's previous
//! message, complete, so a member whose snapshot is newer than that message receives some
//! values it already had (never older ones: the feed's next update is of a sample at least as
//! new as the snapshot), and possibly removals or terminated records of cgroups it never saw.
//! Each member is still dropped alone when its queue is full, as before.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc;

use super::{
    ServerStats,
    filter::Filter,
    frames::{Encoded, Frame},
    outbox::{self, End, Outbox, SubscriberStream},
    watch::{Options, SUBSCRIBER_BUFFER, SubscriberState},
};
use crate::{
    proto,
    store::{Snapshot, StoreHandle},
    unix_time::unix_nanos,
};

/// How often a feed looks for members that left while no sample came (passes failing).
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// What makes two subscriptions' messages the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Shape {
    interval: Duration,
    filter: Filter,
    histograms: bool,
    only_cpu_and_memory: bool,
    max_message_bytes: usize,
}

impl Shape {
    fn of(o: &Options) -> Self {
        Self {
            interval: o.interval,
            filter: o.filter.clone(),
            histograms: o.histograms,
            only_cpu_and_memory: o.only_cpu_and_memory,
            max_message_bytes: o.max_message_bytes,
        }
    }
}

/// One subscriber of a feed: its queue of shared messages (its stream numbers them).
type Member = Outbox<Encoded>;

/// The feeds of one server, by shape.
pub struct Fanout {
    store: StoreHandle,
    node: Arc<proto::NodeInfo>,
    stats: Arc<ServerStats>,
    budget: Arc<outbox::Budget>,
    feeds: Mutex<HashMap<Shape, mpsc::UnboundedSender<Member>>>,
}

impl Fanout {
    pub fn new(
        store: StoreHandle,
        node: Arc<proto::NodeInfo>,
        stats: Arc<ServerStats>,
        budget: Arc<outbox::Budget>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            node,
            stats,
            budget,
            feeds: Mutex::new(HashMap::new()),
        })
    }

    fn feeds(&self) -> std::sync::MutexGuard<'_, HashMap<Shape, mpsc::UnboundedSender<Member>>> {
        // Nothing here can leave the map half-updated on a panic; keep going.
        self.feeds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes with `opts`: joins the feed of that shape, starting it if there is none.
    pub fn subscribe(self: &Arc<Self>, opts: Options) -> SubscriberStream<Frame> {
        let (out, stream) = outbox::channel(outbox::Bounds {
            messages: SUBSCRIBER_BUFFER,
            bytes: outbox::SUBSCRIBER_QUEUE_BYTES,
            budget: self.budget.clone(),
        });
        let shape = Shape::of(&opts);
        let mut member = out;
        self.stats.watch_subscribers.fetch_add(1, Ordering::Relaxed);
        let mut feeds = self.feeds();
        if let Some(feed) = feeds.get(&shape) {
            match feed.send(member) {
                Ok(()) => return frames(stream),
                // That feed has ended: start another.
                Err(mpsc::error::SendError(m)) => member = m,
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(member).expect("the receiver is right here");
        feeds.insert(shape.clone(), tx);
        tokio::spawn(feed(self.clone(), shape, opts, rx));
        frames(stream)
    }

    /// Ends a feed that has no members, unless a subscriber joined meanwhile (`Some`: go on
    /// with it). Under the registry's lock, so no subscriber can join a feed that is ending.
    fn end_feed(
        &self,
        shape: &Shape,
        joiners: &mut mpsc::UnboundedReceiver<Member>,
    ) -> Option<Member> {
        let mut feeds = self.feeds();
        if let Ok(member) = joiners.try_recv() {
            return Some(member);
        }
        feeds.remove(shape);
        None
    }
}

/// A member's queue as tonic's stream: each queued message as its frames.
fn frames(stream: SubscriberStream<Encoded>) -> SubscriberStream<Frame> {
    use futures::StreamExt as _;
    let mut sequence = 0u64;
    Box::pin(stream.flat_map(move |item| {
        let out: Vec<Result<Frame, tonic::Status>> = match item {
            Ok(msg) => {
                let frames = msg.frames(sequence).map(Ok).collect();
                sequence += 1;
                frames
            }
            Err(status) => vec![Err(status)],
        };
        futures::stream::iter(out)
    }))
}

/// One feed: runs while it has members.
async fn feed(
    fanout: Arc<Fanout>,
    shape: Shape,
    opts: Options,
    mut joiners: mpsc::UnboundedReceiver<Member>,
) {
    let mut sub = fanout.store.subscribe(opts.interval);
    let mut members: Vec<Member> = Vec::new();
    // Joined before the first sample: they get their snapshot when it comes.
    let mut waiting: Vec<Member> = Vec::new();
    // The feed's view of what its members were last sent; from the first member's snapshot.
    let mut state: Option<SubscriberState> = None;
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A sample that lands a little early still counts as this interval's.
    let slack = opts.interval / 4;
    loop {
        let mut sampled = false;
        tokio::select! {
            Some(member) = joiners.recv() => waiting.push(member),
            changed = sub.snapshots.changed() => {
                if changed.is_err() {
                    break; // the store stopped
                }
                sampled = true;
            }
            _ = prune.tick() => {}
        }
        let latest = sub.snapshots.borrow_and_update().clone();
        if let Some(snap) = &latest {
            for member in waiting.drain(..) {
                if let Some(member) = fanout.welcome(member, snap, &opts, &mut state) {
                    members.push(member);
                }
            }
        }
        if sampled
            && let (Some(snap), Some(state)) = (&latest, state.as_mut())
            && snap
                .sample
                .taken_at
                .saturating_duration_since(state.last_at())
                + slack
                >= opts.interval
        {
            let msg = Encoded::new(update(state, snap, &fanout.stats), opts.max_message_bytes);
            fanout.sweep(&mut members, |m| m.try_send(msg.clone()));
        }
        let gone = |m: &Member| {
            if m.is_closed() {
                Err(End::Closed)
            } else {
                Ok(())
            }
        };
        fanout.sweep(&mut members, gone);
        fanout.sweep(&mut waiting, gone);
        if members.is_empty() && waiting.is_empty() {
            match fanout.end_feed(&shape, &mut joiners) {
                Some(member) => waiting.push(member),
                None => return,
            }
        }
    }
    for member in members.into_iter().chain(waiting) {
        fanout.leave(member, End::Closed);
    }
}

impl Fanout {
    /// A new member's own snapshot of `snap` (the feed's state starts from the first one).
    /// `None` when it could not take it (gone, or its queue refused it).
    fn welcome(
        &self,
        member: Member,
        snap: &Arc<Snapshot>,
        opts: &Options,
        state: &mut Option<SubscriberState>,
    ) -> Option<Member> {
        let mut own = SubscriberState::new(opts.clone());
        let mut msg = own.snapshot(snap, &self.node);
        msg.collector = Some(self.stats.collector_stats(snap));
        own.pods_snapshot(snap, &mut msg);
        msg.sent_unix_nano = unix_nanos(SystemTime::now());
        let encoded = Encoded::new(msg, opts.max_message_bytes);
        if state.is_none() {
            *state = Some(own);
        }
        match member.try_send(encoded) {
            Ok(()) => Some(member),
            Err(end) => {
                self.leave(member, end);
                None
            }
        }
    }

    /// Runs `step` on every member; those it fails for leave (counted when too slow).
    fn sweep(&self, members: &mut Vec<Member>, mut step: impl FnMut(&Member) -> Result<(), End>) {
        let mut i = 0;
        while i < members.len() {
            match step(&members[i]) {
                Ok(()) => i += 1,
                Err(end) => self.leave(members.swap_remove(i), end),
            }
        }
    }

    fn leave(&self, member: Member, end: End) {
        if member.finish(end, "Watch") == End::TooSlow {
            self.stats
                .dropped_subscribers
                .fetch_add(1, Ordering::Relaxed);
        }
        self.stats.watch_subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The feed's next update: what changed since its previous message, node and pods, events.
fn update(
    state: &mut SubscriberState,
    snap: &Snapshot,
    stats: &ServerStats,
) -> proto::WatchResponse {
    let mut msg = state.update(snap);
    msg.collector = Some(stats.collector_stats(snap));
    state.events_since(snap, &mut msg);
    state.pods_update(snap, &mut msg);
    msg.sent_unix_nano = unix_nanos(SystemTime::now());
    msg
}
