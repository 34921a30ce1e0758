//! Where a server may listen: plaintext only on loopback unless the operator says the network is
//! trusted, and binding with the address in the error.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Plaintext is for loopback; anything else needs TLS or an explicit opt-out, which is logged.
pub fn check_listen_policy(
    addr: SocketAddr,
    tls: bool,
    allow_insecure: bool,
) -> anyhow::Result<()> {
    if tls || addr.ip().is_loopback() {
        return Ok(());
    }
    anyhow::ensure!(
        allow_insecure,
        "refusing to serve plaintext gRPC on non-loopback {addr}: pass --tls-cert and --tls-key \
         (and --tls-client-ca for mutual TLS), or --allow-insecure-listen if the network is \
         trusted"
    );
    tracing::warn!(
        "serving plaintext gRPC on non-loopback {addr} (--allow-insecure-listen): anyone who can \
         reach it can read this node's metrics"
    );
    Ok(())
}

/// Binds the API address, with the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
