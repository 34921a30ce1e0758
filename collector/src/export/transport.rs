//! Sending one encoded request to one receiver, and judging the answer: delivered (perhaps
//! partly, as OTLP's partial success says), worth retrying (network, timeout, 5xx, 429, the
//! gRPC codes OTLP calls retryable), or rejected for good (any other 4xx or gRPC error).

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use prost::Message as _;
use tonic::{Code, metadata::MetadataValue, transport::Channel};

use super::{
    config::{Destination, Protocol},
    remote_write,
    wire::otlp_service::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_client::MetricsServiceClient,
    },
};
use crate::net::client::{self, ClientTls};

/// How much of a receiver's answer is kept for the log.
const MAX_MESSAGE_BYTES: usize = 1024;
/// Bytes of a response body read at most (OTLP responses are tiny; errors are text).
const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted; `rejected` points were refused by an OTLP partial success, with its message.
    Delivered { rejected: u64, message: String },
    /// Not delivered this time; try again after a pause.
    Retry(String),
    /// Refused for good (the request is malformed or not allowed): drop it.
    Rejected(String),
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client for one destination.
pub enum Transport {
    Http {
        client: Box<HttpClient>,
        uri: Uri,
        protocol: Protocol,
        headers: Vec<(String, String)>,
        token: Option<PathBuf>,
    },
    Grpc {
        client: MetricsServiceClient<Channel>,
        headers: Vec<(String, String)>,
        token: Option<PathBuf>,
    },
}

impl Transport {
    /// Builds the client; it connects on first use, so a receiver that is down at start is
    /// only a retry.
    pub fn new(d: &Destination, tls: &ClientTls) -> anyhow::Result<Self> {
        Ok(match d.protocol {
            Protocol::RemoteWrite | Protocol::OtlpHttp => {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_connect_timeout(Some(Duration::from_secs(5)));
                let builder = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls.rustls_config()?)
                    .https_or_http();
                let builder = match &tls.domain {
                    Some(name) => builder.with_server_name_resolver(
                        hyper_rustls::FixedServerNameResolver::new(
                            name.clone()
                                .try_into()
                                .context("--export-tls-server-name")?,
                        ),
                    ),
                    None => builder,
                };
                let connector = builder.enable_http1().enable_http2().wrap_connector(http);
                Self::Http {
                    client: Box::new(Client::builder(TokioExecutor::new()).build(connector)),
                    uri: d.url.parse().context("destination URL")?,
                    protocol: d.protocol,
                    headers: d.headers.clone(),
                    token: d.bearer_token_file.clone(),
                }
            }
            Protocol::OtlpGrpc => {
                // The TLS flags are for https:// destinations; a plaintext one ignores them, as
                // the HTTP destinations do.
                let https = d.url.to_ascii_lowercase().starts_with("https://");
                let plain = ClientTls::default();
                let mut endpoint = client::endpoint(&d.url, if https { tls } else { &plain })?;
                if https && !tls.enabled() {
                    endpoint = endpoint
                        .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())?;
                }
                Self::Grpc {
                    client: MetricsServiceClient::new(endpoint.connect_lazy()),
                    headers: d.headers.clone(),
                    token: d.bearer_token_file.clone(),
                }
            }
        })
    }

    /// One attempt, bounded by `timeout`.
    pub async fn send(&mut self, body: Bytes, timeout: Duration) -> Outcome {
        match tokio::time::timeout(timeout, self.attempt(body)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retry(format!("no answer within {timeout:?}")),
        }
    }

    async fn attempt(&mut self, body: Bytes) -> Outcome {
        match self {
            Self::Http {
                client,
                uri,
                protocol,
                headers,
                token,
            } => {
                let token = match read_token(token.as_ref()) {
                    Ok(t) => t,
                    Err(e) => return Outcome::Retry(e),
                };
                let mut request = Request::post(uri.clone());
                let content: &[(&str, &str)] = match protocol {
                    Protocol::OtlpHttp => &[("content-type", "application/x-protobuf")],
                    _ => &remote_write::HEADERS,
                };
                for (name, value) in content {
                    request = request.header(*name, *value);
                }
                request = request.header(header::USER_AGENT, USER_AGENT);
                for (name, value) in headers.iter() {
                    request = request.header(name.as_str(), value.as_str());
                }
                if let Some(token) = token {
                    request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
                }
                let request = match request.body(Full::new(body)) {
                    Ok(r) => r,
                    Err(e) => return Outcome::Rejected(format!("building the request: {e}")),
                };
                let response = match client.request(request).await {
                    Ok(r) => r,
                    Err(e) => return Outcome::Retry(network_error(&e)),
                };
                let status = response.status();
                let body = match Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                    .collect()
                    .await
                {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return Outcome::Retry(format!("reading the answer: {e}")),
                };
                judge_http(*protocol, status, &body)
            }
            Self::Grpc {
                client,
                headers,
                token,
            } => {
                let request = match ExportMetricsServiceRequest::decode(body) {
                    Ok(r) => r,
                    Err(e) => return Outcome::Rejected(format!("re-reading the request: {e}")),
                };
                let mut request = tonic::Request::new(request);
                let token = match read_token(token.as_ref()) {
                    Ok(t) => t,
                    Err(e) => return Outcome::Retry(e),
                };
                let metadata = request.metadata_mut();
                for (name, value) in headers.iter() {
                    if let (Ok(n), Ok(v)) = (
                        name.parse::<tonic::metadata::MetadataKey<_>>(),
                        MetadataValue::try_from(value.as_str()),
                    ) {
                        metadata.insert(n, v);
                    }
                }
                if let Some(token) = token
                    && let Ok(v) = MetadataValue::try_from(format!("Bearer {token}"))
                {
                    metadata.insert("authorization", v);
                }
                match client.export(request).await {
                    Ok(response) => partial(response.into_inner()),
                    Err(status) => judge_grpc(&status),
                }
            }
        }
    }
}

const USER_AGENT: &str = concat!("collector/", env!("CARGO_PKG_VERSION"));

fn read_token(file: Option<&PathBuf>) -> Result<Option<String>, String> {
    let Some(file) = file else {
        return Ok(None);
    };
    match std::fs::read_to_string(file) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_owned())),
        Ok(_) => Err(format!("bearer token file {} is empty", file.display())),
        Err(e) => Err(format!("reading bearer token file {}: {e}", file.display())),
    }
}

fn network_error(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_MESSAGE_BYTES)]);
    text.trim().to_owned()
}

/// Remote-write 1.0 and OTLP/HTTP: 2xx delivered, 5xx and 429 retried, other 4xx dropped.
pub fn judge_http(protocol: Protocol, status: StatusCode, body: &[u8]) -> Outcome {
    if status.is_success() {
        if protocol == Protocol::OtlpHttp
            && let Ok(response) = ExportMetricsServiceResponse::decode(body)
        {
            return partial(response);
        }
        return Outcome::Delivered {
            rejected: 0,
            message: String::new(),
        };
    }
    let message = format!("HTTP {status}: {}", excerpt(body));
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Outcome::Retry(message)
    } else {
        Outcome::Rejected(message)
    }
}

fn partial(response: ExportMetricsServiceResponse) -> Outcome {
    let (rejected, message) = response
        .partial_success
        .map(|p| (p.rejected_data_points.max(0) as u64, p.error_message))
        .unwrap_or_default();
    Outcome::Delivered { rejected, message }
}

/// The gRPC codes the OTLP specification calls retryable; every other error drops the request.
pub fn judge_grpc(status: &tonic::Status) -> Outcome {
    let message = format!("gRPC {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss
        | Code::ResourceExhausted => Outcome::Retry(message),
        _ => Outcome::Rejected(message),
    }
}
