//! Connecting to a collector or aggregator: plaintext, TLS, or mutual TLS.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use tokio_rustls::rustls;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::tls;

/// TLS settings of a client. With no CA the connection is plaintext (`http://`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA that signed the server's certificate; enables TLS.
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for servers that require mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify the server certificate against (default: the endpoint's host).
    pub domain: Option<String>,
}

impl ClientTls {
    pub fn enabled(&self) -> bool {
        self.ca.is_some()
    }

    fn config(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        let Some(ca) = &self.ca else {
            anyhow::ensure!(
                self.cert.is_none() && self.key.is_none(),
                "a client certificate needs --tls-ca too (TLS is off without a CA)"
            );
            return Ok(None);
        };
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        Ok(Some(config))
    }
}

impl ClientTls {
    /// A rustls configuration for HTTPS clients (the push exporters): the CA when given, else
    /// the system's trusted roots; the client certificate for mutual TLS.
    pub fn rustls_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for cert in tls::certificates(ca)? {
                    roots
                        .add(cert)
                        .with_context(|| format!("CA {}", ca.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // One unusable system certificate should not disable the others.
                    let _ = roots.add(cert);
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        Ok(match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(tls::certificates(cert)?, tls::private_key(key)?)
                .context("client certificate and key")?,
            (None, None) => builder.with_no_client_auth(),
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        })
    }
}

/// Turns "host:port" into a URL with the scheme TLS implies; a full URL is kept as given.
pub fn endpoint_url(address: &str, tls: &ClientTls) -> String {
    if address.contains("://") {
        address.to_owned()
    } else if tls.enabled() {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    }
}

/// An endpoint with TLS applied and sane timeouts; connect it now or lazily.
pub fn endpoint(address: &str, tls: &ClientTls) -> anyhow::Result<Endpoint> {
    let url = endpoint_url(address, tls);
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("{url:?} is not a valid endpoint"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if let Some(config) = tls.config()? {
        anyhow::ensure!(
            url.starts_with("https://"),
            "{url}: TLS settings need an https:// endpoint"
        );
        endpoint = endpoint.tls_config(config)?;
    }
    Ok(endpoint)
}

pub async fn connect(address: &str, tls: &ClientTls) -> anyhow::Result<Channel> {
    let endpoint = endpoint(address, tls)?;
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", endpoint.uri()))
}
