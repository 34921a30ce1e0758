//! What to push where: destinations (protocol, URL, headers, bearer token file), the pace, the
//! queue bound, client TLS; parsed and checked before anything starts.

use std::{fmt, path::PathBuf, time::Duration};

use super::remote_write::Histograms;
use crate::net::client::ClientTls;

/// Default pace of pushes (kubelet's housekeeping pace, the default cgroupfs interval).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default bound of each destination's queue of encoded requests. At 1,000 containers a
/// round is ~0.2 MiB of remote-write, so this holds several minutes of an outage.
pub const DEFAULT_QUEUE_BYTES: usize = 16 << 20;
/// How long one request may take before it counts as a network failure (and is retried).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry delays: doubling from the first to the cap, each drawn from [d/2, d].
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long stopping waits for the queues to drain.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Prometheus remote-write 1.0 (protobuf + snappy) over HTTP POST.
    RemoteWrite,
    /// OTLP metrics over gRPC (`MetricsService/Export`).
    OtlpGrpc,
    /// OTLP metrics over HTTP POST, binary protobuf.
    OtlpHttp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RemoteWrite => "remote_write",
            Self::OtlpGrpc => "otlp_grpc",
            Self::OtlpHttp => "otlp_http",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{url:?} is not an http:// or https:// URL")]
    Url { url: String },
    #[error("header {0:?}: want NAME=VALUE")]
    HeaderSyntax(String),
    #[error("header {name:?}: {why}")]
    Header { name: String, why: String },
    #[error("OTLP protocol {0:?}: want grpc or http/protobuf")]
    OtlpProtocol(String),
    #[error("the export interval must be at least 100 ms")]
    Interval,
    #[error("the export queue bound must be at least 64 KiB")]
    QueueBytes,
}

/// One receiver.
#[derive(Clone, PartialEq, Eq)]
pub struct Destination {
    pub protocol: Protocol,
    pub url: String,
    /// Extra request headers (`X-Scope-OrgID`, `THANOS-TENANT`, `Authorization`, ...).
    pub headers: Vec<(String, String)>,
    /// A file holding a bearer token, read before every request (a rotated Secret is seen).
    pub bearer_token_file: Option<PathBuf>,
}

impl fmt::Debug for Destination {
    // Header values may be credentials: never in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destination")
            .field("protocol", &self.protocol)
            .field("url", &redact(&self.url))
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("bearer_token_file", &self.bearer_token_file)
            .finish()
    }
}

impl Destination {
    pub fn new(protocol: Protocol, url: &str) -> Result<Self, ConfigError> {
        let lower = url.to_ascii_lowercase();
        let ok = (lower.starts_with("http://") || lower.starts_with("https://"))
            && url.parse::<hyper::Uri>().is_ok_and(|u| u.host().is_some());
        if !ok {
            return Err(ConfigError::Url { url: redact(url) });
        }
        Ok(Self {
            protocol,
            url: url.to_owned(),
            headers: Vec::new(),
            bearer_token_file: None,
        })
    }

    /// Adds headers, each checked to be a valid HTTP (and gRPC metadata) header.
    pub fn with_headers(mut self, headers: &[(String, String)]) -> Result<Self, ConfigError> {
        for (name, value) in headers {
            check_header(name, value)?;
            self.headers
                .push((name.to_ascii_lowercase(), value.clone()));
        }
        Ok(self)
    }

    pub fn with_bearer_token_file(mut self, file: Option<PathBuf>) -> Self {
        self.bearer_token_file = file;
        self
    }

    /// The URL as shown in logs and metric labels: no user info, no query.
    pub fn label(&self) -> String {
        redact(&self.url)
    }
}

fn check_header(name: &str, value: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::Header {
        name: name.to_owned(),
        why: why.to_owned(),
    };
    hyper::header::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| bad("not a valid header name"))?;
    hyper::header::HeaderValue::from_str(value).map_err(|_| bad("not a valid header value"))?;
    if name.to_ascii_lowercase().starts_with("grpc-") {
        return Err(bad("grpc- headers are reserved"));
    }
    Ok(())
}

/// `NAME=VALUE` (flags).
pub fn parse_header(s: &str) -> Result<(String, String), ConfigError> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| ConfigError::HeaderSyntax(s.to_owned()))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(ConfigError::HeaderSyntax(s.to_owned()));
    }
    check_header(name, value.trim())?;
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// `OTEL_EXPORTER_OTLP_HEADERS` / `_METRICS_HEADERS`: `k1=v1,k2=v2`, values percent-encoded
/// (the W3C Baggage format the OpenTelemetry specification names).
pub fn parse_otel_headers(s: &str) -> Result<Vec<(String, String)>, ConfigError> {
    s.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (name, value) = parse_header(pair)?;
            Ok((name, percent_decode(&value)))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`: `grpc` or `http/protobuf` (JSON is not offered).
pub fn parse_otlp_protocol(s: &str) -> Result<Protocol, ConfigError> {
    match s.trim() {
        "grpc" => Ok(Protocol::OtlpGrpc),
        "http/protobuf" => Ok(Protocol::OtlpHttp),
        other => Err(ConfigError::OtlpProtocol(other.to_owned())),
    }
}

/// The OTLP metrics URL from the OpenTelemetry environment's rules: a signal-specific endpoint
/// is used as is; the generic one gets `/v1/metrics` appended for HTTP.
pub fn otlp_url(
    protocol: Protocol,
    metrics_endpoint: Option<&str>,
    generic: Option<&str>,
) -> Option<String> {
    if let Some(url) = metrics_endpoint.filter(|u| !u.is_empty()) {
        return Some(url.to_owned());
    }
    let base = generic.filter(|u| !u.is_empty())?;
    Some(match protocol {
        Protocol::OtlpHttp => format!("{}/v1/metrics", base.trim_end_matches('/')),
        _ => base.to_owned(),
    })
}

/// Drops user info and query from a URL for display.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// The exporters' configuration; no destination means no exporter.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    pub destinations: Vec<Destination>,
    /// Pace of pushes, and of the per-pass series (eBPF values).
    pub interval: Duration,
    /// Bound of each destination's queue, in encoded bytes; the oldest requests go first.
    pub queue_bytes: usize,
    pub tls: ClientTls,
    pub histograms: Histograms,
    pub timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub shutdown_grace: Duration,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            destinations: Vec::new(),
            interval: DEFAULT_INTERVAL,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            tls: ClientTls::default(),
            histograms: Histograms::default(),
            timeout: DEFAULT_TIMEOUT,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl ExportConfig {
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.interval < Duration::from_millis(100) {
            return Err(ConfigError::Interval);
        }
        if self.queue_bytes < 64 << 10 {
            return Err(ConfigError::QueueBytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_redacted() {
        assert!(
            Destination::new(Protocol::RemoteWrite, "http://127.0.0.1:9090/api/v1/write").is_ok()
        );
        assert!(Destination::new(Protocol::RemoteWrite, "127.0.0.1:9090").is_err());
        assert!(Destination::new(Protocol::OtlpGrpc, "ftp://x").is_err());
        assert_eq!(
            redact("https://user:secret@mimir.example/api/v1/push?token=x"),
            "https://mimir.example/api/v1/push"
        );
        let d = Destination::new(Protocol::RemoteWrite, "https://u:p@h/x").unwrap();
        assert!(!format!("{d:?}").contains("u:p@"), "{d:?}");
    }

    #[test]
    fn headers_parse_and_reject_nonsense() {
        assert_eq!(
            parse_header("X-Scope-OrgID=tenant-1").unwrap(),
            ("X-Scope-OrgID".into(), "tenant-1".into())
        );
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("bad header=x").is_err());
        assert!(parse_header("x=line\nbreak").is_err());
        assert_eq!(
            parse_otel_headers("api-key=a%20b,X-Scope-OrgID=t").unwrap(),
            [
                ("api-key".to_owned(), "a b".to_owned()),
                ("X-Scope-OrgID".to_owned(), "t".to_owned())
            ]
        );
    }

    #[test]
    fn otlp_environment_rules() {
        assert_eq!(
            otlp_url(Protocol::OtlpHttp, None, Some("http://c:4318/")).as_deref(),
            Some("http://c:4318/v1/metrics")
        );
        assert_eq!(
            otlp_url(
                Protocol::OtlpHttp,
                Some("http://c:4318/custom"),
                Some("http://x")
            )
            .as_deref(),
            Some("http://c:4318/custom")
        );
        assert_eq!(
            otlp_url(Protocol::OtlpGrpc, None, Some("http://c:4317")).as_deref(),
            Some("http://c:4317")
        );
        assert_eq!(parse_otlp_protocol("grpc"), Ok(Protocol::OtlpGrpc));
        assert!(parse_otlp_protocol("http/json").is_err());
    }
}
