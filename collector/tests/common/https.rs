//! A plain HTTPS/1.1 client for the tests: the server's CA, an optional client certificate,
//! any headers (a front proxy's X-Remote-User, a bearer token).

use std::{net::SocketAddr, path::Path, sync::Arc};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::{TlsConnector, rustls};

use super::certs::ClientCert;

fn config(ca: &Path, client: Option<&ClientCert>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match client {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let certs = CertificateDer::pem_file_iter(&c.cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(&c.key).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
    }
}

/// GET `path` over TLS (server name "localhost"): status and body. A handshake the server
/// refuses is an `Err`.
pub async fn https_get(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&ClientCert>,
    headers: &[(&str, &str)],
    path: &str,
) -> std::io::Result<(u16, String)> {
    let connector = TlsConnector::from(Arc::new(config(ca, client)));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // A server that closes without close_notify still sent the whole response.
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad response {response:?}"),
        )
    };
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_owned()))
}
