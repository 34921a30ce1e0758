//! Accepting connections for every server (gRPC and HTTP, collector and aggregator): a cap on
//! open connections, backoff when `accept` fails (out of file descriptors, which would otherwise
//! spin the loop at 100 % of a CPU), TLS handshakes off the accept loop, an idle timeout, and the
//! peer's address and verified certificate chain for authentication.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use rustls_pki_types::CertificateDer;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::{Instant, Sleep},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;

use super::tls::{RELOAD_CHECK, TlsReloader};

/// Open connections a server accepts by default; more are closed at once (and counted).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// A connection from which nothing was read for this long is closed. gRPC clients answer the
/// server's keepalive pings well within it, so only dead peers and idle HTTP/1 keep-alive
/// connections reach it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A client that has not finished its TLS handshake by then is disconnected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 128;
/// First and longest pause after a failed `accept` (doubling in between).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The client certificate chain rustls verified against the client CA (leaf first); `None`
    /// on plaintext or when the client sent none.
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// Counters of a listener, for /metrics.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// `accept` failures (e.g. EMFILE), each followed by a pause.
    pub accept_errors: AtomicU64,
}

/// Accepted connections of one listener, as tonic (a stream) and axum (a `Listener`) take them.
pub struct Incoming {
    rx: mpsc::Receiver<Conn>,
    local: SocketAddr,
}

/// Starts accepting on `listener`: at most `max_connections` open at once (those past it are
/// closed as soon as they are accepted), TLS when `tls` is set.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    max_connections: usize,
    stats: Arc<ConnectionStats>,
) -> io::Result<Incoming> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    tokio::spawn(accept_loop(listener, tls, slots, stats, tx));
    Ok(Incoming { rx, local })
}

impl Incoming {
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// For tonic's `serve_with_incoming`.
    pub fn into_stream(self) -> impl Stream<Item = io::Result<Conn>> {
        futures::StreamExt::map(ReceiverStream::new(self.rx), Ok)
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        match self.rx.recv().await {
            Some(conn) => {
                let peer = conn.peer.clone();
                (conn, peer)
            }
            // The accept loop only ends when this side is gone; never reached while serving.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: self.local,
            certs: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Incoming>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Incoming>) -> Self {
        stream.remote_addr().clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    slots: Arc<Semaphore>,
    stats: Arc<ConnectionStats>,
    tx: mpsc::Sender<Conn>,
) {
    // New connections get the current certificates; the files are checked while accepting.
    let watcher = tls.clone().map(|t| t.watch_files(RELOAD_CHECK));
    let _stop_watching = scopeguard(watcher);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut refusals_logged = false;
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    // Out of fds and the like: the socket stays readable, so retrying at once
                    // would spin. Pause, longer each time in a row.
                    if backoff == ACCEPT_BACKOFF_MIN {
                        tracing::warn!("accept failed: {e}; pausing accepts");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
            _ = tx.closed() => return,
        };
        backoff = ACCEPT_BACKOFF_MIN;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if !refusals_logged {
                tracing::warn!(
                    %addr,
                    "connection limit reached ({} open); closing new connections until some end \
                     (raise --max-connections if this is expected)",
                    slots.available_permits()
                );
                refusals_logged = true;
            }
            drop(tcp);
            continue;
        };
        refusals_logged = false;
        let _ = tcp.set_nodelay(true);
        match &tls {
            None => {
                let conn = Conn::new(Io::Plain(tcp), addr, None, slot);
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
            Some(tls) => {
                let acceptor = TlsAcceptor::from(tls.config());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let certs = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .map(|c| Arc::new(c.to_vec()));
                            let conn = Conn::new(Io::Tls(Box::new(stream)), addr, certs, slot);
                            let _ = tx.send(conn).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Aborts the certificate watcher when the accept loop ends.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

fn scopeguard(task: Option<tokio::task::JoinHandle<()>>) -> AbortOnDrop {
    AbortOnDrop(task)
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection: its stream, who it is, its slot under the connection cap (freed
/// when the server drops it) and its idle timer.
pub struct Conn {
    io: Io,
    peer: Peer,
    idle: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    fn new(
        io: Io,
        addr: SocketAddr,
        certs: Option<Arc<Vec<CertificateDer<'static>>>>,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            io,
            peer: Peer { addr, certs },
            idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
            _slot: slot,
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match result {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.idle.as_mut().reset(Instant::now() + IDLE_TIMEOUT);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing received for {IDLE_TIMEOUT:?}"),
                ))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_and_a_slot_frees_on_drop() {
        use tokio::io::AsyncReadExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ConnectionStats::default());
        let incoming = incoming(listener, None, 2, stats.clone()).unwrap();
        let mut stream = Box::pin(incoming.into_stream());
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = futures::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap();
        let _second = futures::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap();
        // The third is accepted and closed at once: the client reads EOF.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut byte))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        // Dropping a connection frees its slot.
        drop(first);
        let _d = TcpStream::connect(addr).await.unwrap();
        let fourth = tokio::time::timeout(
            Duration::from_secs(5),
            futures::StreamExt::next(&mut stream),
        )
        .await
        .expect("a freed slot admits the next connection");
        assert!(fourth.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
        use tokio::io::AsyncReadExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = incoming(listener, None, 4, Arc::default()).unwrap();
        let mut stream = Box::pin(incoming.into_stream());
        let _client = TcpStream::connect(addr).await.unwrap();
        let mut conn = futures::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        // The paused clock jumps to the idle deadline: the read ends with a timeout then.
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= IDLE_TIMEOUT);
    }
}
