//! The push exporters' flags (`serve --remote-write-url …`, `--otlp-endpoint …`).

use std::{path::PathBuf, time::Duration};

use clap::Args;
use collector::{
    export::{
        config::{
            self as export_config, Destination, ExportConfig, Protocol, parse_header,
            parse_otel_headers, parse_otlp_protocol,
        },
        remote_write::Histograms,
    },
    net::client::ClientTls,
};

#[derive(Args, Clone)]
pub struct ExportArgs {
    /// Prometheus remote-write 1.0 receiver to push to, a full URL with any path (Prometheus
    /// and VictoriaMetrics /api/v1/write, Mimir and Cortex /api/v1/push, Thanos
    /// /api/v1/receive). Repeatable.
    #[arg(long, env = "COLLECTOR_REMOTE_WRITE_URL", value_delimiter = ',')]
    pub remote_write_url: Vec<String>,
    /// Extra header of every remote-write request, NAME=VALUE (X-Scope-OrgID=tenant,
    /// THANOS-TENANT=…). Repeatable.
    #[arg(long, value_parser = parse_header)]
    pub remote_write_header: Vec<(String, String)>,
    /// File with a bearer token for remote-write, re-read before each request (a Secret).
    #[arg(long, env = "COLLECTOR_REMOTE_WRITE_BEARER_TOKEN_FILE")]
    pub remote_write_bearer_token_file: Option<PathBuf>,
    /// Send run-queue histograms as native histograms (schema 0, in ns: the kernel's exact
    /// buckets) instead of classic _bucket series. The receiver must accept them.
    #[arg(long, env = "COLLECTOR_REMOTE_WRITE_NATIVE_HISTOGRAMS")]
    pub remote_write_native_histograms: bool,
    /// OTLP metrics receiver: http://host:4317 for gRPC, http://host:4318/v1/metrics for
    /// HTTP. Repeatable. Default: OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/metrics for HTTP).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        value_delimiter = ','
    )]
    pub otlp_endpoint: Vec<String>,
    /// OTLP transport: grpc or http/protobuf. Default: OTEL_EXPORTER_OTLP_PROTOCOL, else
    /// http/protobuf (the OpenTelemetry default).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// Extra header (gRPC metadata) of every OTLP request, NAME=VALUE. Repeatable; added to
    /// OTEL_EXPORTER_OTLP_METRICS_HEADERS / OTEL_EXPORTER_OTLP_HEADERS.
    #[arg(long, value_parser = parse_header)]
    pub otlp_header: Vec<(String, String)>,
    /// File with a bearer token for OTLP, re-read before each request.
    #[arg(long, env = "COLLECTOR_OTLP_BEARER_TOKEN_FILE")]
    pub otlp_bearer_token_file: Option<PathBuf>,
    /// Push every this many ms; also the pace of the eBPF series (cgroupfs readings are each
    /// sent once, whatever their pace).
    #[arg(long, env = "COLLECTOR_EXPORT_INTERVAL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub export_interval_ms: u64,
    /// Bound of each destination's queue of encoded requests, in bytes; when full the oldest
    /// request is dropped (and counted on /metrics).
    #[arg(long, env = "COLLECTOR_EXPORT_QUEUE_BYTES", default_value_t = export_config::DEFAULT_QUEUE_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(65_536..=(1 << 30)))]
    pub export_queue_bytes: usize,
    /// CA of the receivers' certificates (default for https://: the system's roots).
    #[arg(long, env = "COLLECTOR_EXPORT_TLS_CA")]
    pub export_tls_ca: Option<PathBuf>,
    /// Client certificate for receivers that require mutual TLS.
    #[arg(
        long,
        env = "COLLECTOR_EXPORT_TLS_CLIENT_CERT",
        requires = "export_tls_client_key"
    )]
    pub export_tls_client_cert: Option<PathBuf>,
    #[arg(
        long,
        env = "COLLECTOR_EXPORT_TLS_CLIENT_KEY",
        requires = "export_tls_client_cert"
    )]
    pub export_tls_client_key: Option<PathBuf>,
    /// Name the receivers' certificates must carry (default: the URL's host).
    #[arg(long, env = "COLLECTOR_EXPORT_TLS_SERVER_NAME")]
    pub export_tls_server_name: Option<String>,
}

impl ExportArgs {
    /// The destinations with the OpenTelemetry environment's fallbacks applied.
    pub fn config(&self) -> anyhow::Result<ExportConfig> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut destinations = Vec::new();
        for url in &self.remote_write_url {
            destinations.push(
                Destination::new(Protocol::RemoteWrite, url)?
                    .with_headers(&self.remote_write_header)?
                    .with_bearer_token_file(self.remote_write_bearer_token_file.clone()),
            );
        }
        let protocol = match self
            .otlp_protocol
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(p) => parse_otlp_protocol(&p)?,
            None => Protocol::OtlpHttp,
        };
        let mut otlp_urls = self.otlp_endpoint.clone();
        if otlp_urls.is_empty()
            && let Some(url) = export_config::otlp_url(
                protocol,
                None,
                env("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
            )
        {
            otlp_urls.push(url);
        }
        let mut otlp_headers = match env("OTEL_EXPORTER_OTLP_METRICS_HEADERS")
            .or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS"))
        {
            Some(h) => parse_otel_headers(&h)?,
            None => Vec::new(),
        };
        otlp_headers.extend(self.otlp_header.iter().cloned());
        for url in &otlp_urls {
            destinations.push(
                Destination::new(protocol, url)?
                    .with_headers(&otlp_headers)?
                    .with_bearer_token_file(self.otlp_bearer_token_file.clone()),
            );
        }
        Ok(ExportConfig {
            destinations,
            interval: Duration::from_millis(self.export_interval_ms),
            queue_bytes: self.export_queue_bytes,
            tls: ClientTls {
                ca: self.export_tls_ca.clone(),
                cert: self.export_tls_client_cert.clone(),
                key: self.export_tls_client_key.clone(),
                domain: self.export_tls_server_name.clone(),
            },
            histograms: if self.remote_write_native_histograms {
                Histograms::Native
            } else {
                Histograms::Classic
            },
            ..ExportConfig::default()
        })
    }
}
