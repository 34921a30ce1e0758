//! A minimal client of the Kubernetes API for delegated authentication and authorization:
//! POST a TokenReview or a SubjectAccessReview, as kubelet does for its own endpoints. In a
//! pod it finds the API server and its credentials where Kubernetes puts them; each can be
//! given instead (tests, out-of-cluster runs).

use std::{path::PathBuf, sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use rustls_pki_types::ServerName;
use tokio_rustls::{TlsConnector, rustls};

use super::tls::certificates;

/// Where a pod's service account credentials are mounted.
pub const IN_CLUSTER_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// A review that takes longer fails (the caller is refused, not let in).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Responses larger than this are refused (reviews are a few hundred bytes).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// How to reach the API server; unset fields take the in-cluster values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeApiConfig {
    /// https://host:port; default from KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT.
    pub server: Option<String>,
    /// CA bundle of the API server's certificate.
    pub ca: Option<PathBuf>,
    /// Bearer token file (re-read on every request: projected tokens rotate).
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "no Kubernetes API server: not in a pod (KUBERNETES_SERVICE_HOST unset) and no --kube-api-server"
    )]
    NoServer,
    #[error("Kubernetes API server {0:?} is not an https://host:port URL")]
    BadServer(String),
    #[error("Kubernetes API CA: {0}")]
    Ca(String),
    #[error("reading the API token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Kubernetes API request failed: {0}")]
    Request(String),
    #[error("Kubernetes API answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("Kubernetes API answer is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A connection recipe for the API server.
pub struct KubeApi {
    host: String,
    port: u16,
    tls: TlsConnector,
    token_file: PathBuf,
}

impl KubeApi {
    pub fn new(config: &KubeApiConfig) -> Result<Arc<Self>, KubeError> {
        let server = match &config.server {
            Some(s) => s.clone(),
            None => {
                let host =
                    std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| KubeError::NoServer)?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                // An IPv6 service address needs brackets in a URL.
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        };
        let uri: hyper::Uri = server
            .parse()
            .map_err(|_| KubeError::BadServer(server.clone()))?;
        if uri.scheme_str() != Some("https") {
            return Err(KubeError::BadServer(server));
        }
        let host = uri
            .host()
            .ok_or_else(|| KubeError::BadServer(server.clone()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let ca = config
            .ca
            .clone()
            .unwrap_or_else(|| PathBuf::from(IN_CLUSTER_DIR).join("ca.crt"));
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(&ca).map_err(|e| KubeError::Ca(e.to_string()))? {
            roots
                .add(cert)
                .map_err(|e| KubeError::Ca(format!("{}: {e}", ca.display())))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| KubeError::Ca(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(Self {
            host,
            port,
            tls: TlsConnector::from(Arc::new(tls)),
            token_file: config
                .token_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(IN_CLUSTER_DIR).join("token")),
        }))
    }

    /// POSTs `body` to `path` and returns the JSON answer.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, KubeError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.post_now(path, body))
            .await
            .map_err(|_| KubeError::Request(format!("no answer within {REQUEST_TIMEOUT:?}")))?
    }

    async fn post_now(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, KubeError> {
        let token =
            std::fs::read_to_string(&self.token_file).map_err(|source| KubeError::Token {
                path: self.token_file.clone(),
                source,
            })?;
        let request_error = |e: &dyn std::fmt::Display| KubeError::Request(e.to_string());
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| request_error(&e))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| request_error(&e))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| request_error(&e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| request_error(&e))?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, self.host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| request_error(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| request_error(&e))?;
        let status = response.status();
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| request_error(&e))?
            .to_bytes();
        driver.abort();
        if !status.is_success() {
            return Err(KubeError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
            });
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}
