//! Receivers for the export fault tests: a remote-write endpoint that refuses everything with
//! 400 or never answers, and an in-process OTLP gRPC receiver. Each records what it got.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use collector::export::wire::otlp_service::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    metrics_service_server::{MetricsService, MetricsServiceServer},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How the HTTP receiver answers.
#[derive(Clone, Copy)]
pub enum Answer {
    /// 400 with a message, as Prometheus answers an out-of-order sample.
    BadRequest,
    /// Reads the request and never answers.
    Never,
}

/// Bodies received, in order.
pub type Bodies = Arc<Mutex<Vec<Vec<u8>>>>;

/// An HTTP/1.1 receiver on loopback; runs until the test ends.
pub async fn http(answer: Answer) -> (SocketAddr, Bodies) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies: Bodies = Arc::default();
    let seen = bodies.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(stream, answer, seen.clone()));
        }
    });
    (addr, bodies)
}

async fn connection(mut stream: tokio::net::TcpStream, answer: Answer, bodies: Bodies) {
    let mut buf = Vec::new();
    loop {
        // Headers, then Content-Length bytes of body (keep-alive: several per connection).
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        bodies.lock().unwrap().push(body);
        match answer {
            Answer::BadRequest => {
                let message = "out of order sample";
                let response = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{message}",
                    message.len()
                );
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
            Answer::Never => std::future::pending::<()>().await,
        }
    }
}

/// What the gRPC receiver saw: each request with its `authorization` and `x-scope-orgid`.
#[derive(Default)]
pub struct Seen {
    pub requests: Vec<(ExportMetricsServiceRequest, String, String)>,
}

struct Receiver {
    seen: Arc<Mutex<Seen>>,
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (auth, tenant) = (header("authorization"), header("x-scope-orgid"));
        let mut seen = self.seen.lock().unwrap();
        let first = seen.requests.is_empty();
        seen.requests.push((request.into_inner(), auth, tenant));
        // The first answer refuses one point, as a receiver with a partial success does.
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: first.then(|| ExportMetricsPartialSuccess {
                rejected_data_points: 1,
                error_message: "one point had no name".into(),
            }),
        }))
    }
}

/// An OTLP gRPC receiver on loopback.
pub async fn otlp_grpc() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let service = MetricsServiceServer::new(Receiver { seen: seen.clone() });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, seen)
}
