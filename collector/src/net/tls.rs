//! Optional TLS and mutual TLS for the gRPC server (rustls), with certificates reloaded when their
//! files change: a rotated certificate (cert-manager, a Secret update) is picked up by new
//! connections without a restart, and a broken rotation keeps the last good configuration.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use futures::Stream;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{self, RootCertStore, ServerConfig, server::WebPkiClientVerifier},
    server::TlsStream,
};
use tokio_stream::wrappers::ReceiverStream;

/// Certificate files of a TLS server. With `client_ca`, clients must present a certificate
/// signed by it (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {path}: {what}")]
    ClientCa { path: PathBuf, what: String },
}

/// How often the certificate files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);
/// A client that has not finished its handshake by then is disconnected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 128;

/// What identifies a file's version: modification time, size and inode (a Secret update swaps
/// a symlink, which changes the inode even when the time does not move).
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

/// The current server configuration, swapped when the files change.
pub struct TlsReloader {
    files: ServerTlsFiles,
    current: RwLock<(Stamp, Arc<ServerConfig>)>,
}

impl TlsReloader {
    /// Loads the files; an error here (missing file, bad PEM, key not matching) stops startup.
    pub fn load(files: ServerTlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamp = stamp(&files);
        let config = build(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new((stamp, Arc::new(config))),
        }))
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Rebuilds the configuration if a file changed. `Ok(true)` when it was replaced; on error
    /// the previous configuration stays in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        if self.current.read().unwrap_or_else(|e| e.into_inner()).0 == now {
            return Ok(false);
        }
        let result = build(&self.files);
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        // Remember the stamp either way: a bad file is reported once, not every check.
        current.0 = now;
        current.1 = Arc::new(result?);
        Ok(true)
    }

    /// Checks the files every `period` for as long as the server runs.
    pub fn watch_files(self: Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match self.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!(cert = %self.files.cert.display(), "reloaded TLS certificates")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        "TLS files changed but cannot be used ({e}); keeping the previous certificates"
                    ),
                }
            }
        })
    }
}

fn stamp(files: &ServerTlsFiles) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len(), m.ino()))
    })
    .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no PEM certificate in the file".into(),
        });
    }
    Ok(certs)
}

pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: format!("no usable private key ({e})"),
    })
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(files: &ServerTlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    what: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    what: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts TCP connections and completes TLS handshakes off the accept loop, so one slow or
/// failing client never holds up the others. Failed handshakes (a client without the CA, no
/// client certificate under mTLS) are logged at debug and dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<TlsReloader>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of fds and the like: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let acceptor = TlsAcceptor::from(tls.config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Loads the TLS files when configured; a bad file stops startup with its path in the error.
pub fn load_tls(files: Option<&ServerTlsFiles>) -> anyhow::Result<Option<Arc<TlsReloader>>> {
    files
        .map(|f| TlsReloader::load(f.clone()).context("loading TLS certificates"))
        .transpose()
}
