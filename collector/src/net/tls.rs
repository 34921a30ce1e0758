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
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig, server::WebPkiClientVerifier};

/// Certificate files of a TLS server. With `client_ca` (or `front_proxy_ca`), client
/// certificates signed by it are verified in the handshake and name the caller (mutual TLS);
/// the handshake itself lets clients without one in (kubelet's HTTPS probes have none), and
/// the server's authentication refuses their requests to anything but health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// The aggregation layer's front-proxy CA (an APIService backend's requestheader CA).
    pub front_proxy_ca: Option<PathBuf>,
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

/// What identifies a file's version: modification time, size and inode (a Secret update swaps
/// a symlink, which changes the inode even when the time does not move).
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

/// The current server configuration, swapped when the files change.
pub struct TlsReloader {
    files: ServerTlsFiles,
    protocol: Protocol,
    current: RwLock<(Stamp, Arc<ServerConfig>)>,
}

/// What the server speaks inside TLS, offered by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// The HTTP endpoints: HTTP/1.1 (what kubelet's probes, Prometheus and kubectl speak).
    Http1,
}

impl TlsReloader {
    /// Loads the files for gRPC; an error here (missing file, bad PEM, key not matching) stops
    /// startup.
    pub fn load(files: ServerTlsFiles) -> Result<Arc<Self>, TlsError> {
        Self::load_for(files, Protocol::Grpc)
    }

    /// Loads the files for a server speaking `protocol`.
    pub fn load_for(files: ServerTlsFiles, protocol: Protocol) -> Result<Arc<Self>, TlsError> {
        let stamp = stamp(&files);
        let config = build(&files, protocol)?;
        Ok(Arc::new(Self {
            files,
            protocol,
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
        let result = build(&self.files, self.protocol);
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
        files.front_proxy_ca.as_ref(),
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

fn build(files: &ServerTlsFiles, protocol: Protocol) -> Result<ServerConfig, TlsError> {
    let certs = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let cas: Vec<&PathBuf> = [&files.client_ca, &files.front_proxy_ca]
        .into_iter()
        .flatten()
        .collect();
    let builder = if cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for ca in &cas {
            for cert in certificates(ca)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: (*ca).clone(),
                    what: e.to_string(),
                })?;
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::ClientCa {
                path: cas[0].clone(),
                what: e.to_string(),
            })?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![match protocol {
        Protocol::Grpc => b"h2".to_vec(),
        Protocol::Http1 => b"http/1.1".to_vec(),
    }];
    Ok(config)
}

/// Loads the TLS files when configured; a bad file stops startup with its path in the error.
pub fn load_tls(
    files: Option<&ServerTlsFiles>,
    protocol: Protocol,
) -> anyhow::Result<Option<Arc<TlsReloader>>> {
    files
        .map(|f| TlsReloader::load_for(f.clone(), protocol).context("loading TLS certificates"))
        .transpose()
}
