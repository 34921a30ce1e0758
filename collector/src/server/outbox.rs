//! A streaming subscriber's bounded queue, shared by the collector's and the aggregator's
//! Watch: a subscriber whose queue is full when a message is due is dropped; it still receives
//! what was queued, then RESOURCE_EXHAUSTED telling it to resubscribe. The producer never waits
//! for a slow client.

use std::{pin::Pin, time::Duration};

use futures::{Stream, StreamExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// What a subscriber receives: its queued messages, then, if it was dropped, why.
pub type SubscriberStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client went away or the server is stopping.
    Closed,
    /// Dropped for falling behind.
    TooSlow,
}

/// The sending side of one subscription.
pub struct Outbox<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    goodbye: Option<oneshot::Sender<Status>>,
    buffer: usize,
}

/// A queue of `buffer` messages, and the stream to hand to tonic.
pub fn channel<T: Send + 'static>(buffer: usize) -> (Outbox<T>, SubscriberStream<T>) {
    let (tx, rx) = mpsc::channel(buffer);
    let (goodbye_tx, goodbye_rx) = oneshot::channel();
    // The goodbye comes after what is already queued: the client sees every message it was sent,
    // then the reason, and no slot of the buffer has to be kept free for it.
    let goodbye = futures::stream::once(goodbye_rx).filter_map(|r| async move { r.ok().map(Err) });
    let stream = ReceiverStream::new(rx).chain(goodbye);
    let outbox = Outbox {
        tx,
        goodbye: Some(goodbye_tx),
        buffer,
    };
    (outbox, Box::pin(stream))
}

impl<T> Outbox<T> {
    /// Queues a message now; a full queue means the client is too slow.
    pub fn try_send(&self, msg: T) -> Result<(), End> {
        self.tx.try_send(Ok(msg)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => End::TooSlow,
            mpsc::error::TrySendError::Closed(_) => End::Closed,
        })
    }

    /// Queues a message, waiting up to `patience` for room (the rest of a message the client is
    /// already reading).
    pub async fn send_within(&self, msg: T, patience: Duration) -> Result<(), End> {
        match tokio::time::timeout(patience, self.tx.reserve()).await {
            Ok(Ok(permit)) => {
                permit.send(Ok(msg));
                Ok(())
            }
            Ok(Err(_)) => Err(End::Closed),
            Err(_) => Err(End::TooSlow),
        }
    }

    /// Completes when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Ends the subscription; a too-slow subscriber is told why after its queued messages.
    pub fn finish(mut self, end: End, what: &str) -> End {
        if end == End::TooSlow
            && let Some(goodbye) = self.goodbye.take()
        {
            let _ = goodbye.send(Status::resource_exhausted(format!(
                "subscriber fell {} messages behind and was dropped; resubscribe for a fresh \
                 snapshot",
                self.buffer
            )));
            tracing::info!("dropped a slow {what} subscriber");
        }
        end
    }
}
