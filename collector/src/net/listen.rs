//! Where a server may listen: plaintext only on loopback unless the operator says the network is
//! trusted, and binding with the address in the error.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Loopback may serve anything; any other address needs TLS and authenticated callers, or an
/// explicit opt-out, which is logged.
pub fn check_listen_policy(
    addr: SocketAddr,
    tls: bool,
    authenticated: bool,
    allow_insecure: bool,
) -> anyhow::Result<()> {
    if addr.ip().is_loopback() || (tls && authenticated) {
        return Ok(());
    }
    let missing = match (tls, authenticated) {
        (false, _) => "plaintext",
        (true, _) => "TLS without authenticating callers",
    };
    anyhow::ensure!(
        allow_insecure,
        "refusing to serve {missing} on non-loopback {addr}: pass --tls-cert and --tls-key, and \
         authenticate callers (--tls-client-ca, --authentication-token-webhook), or \
         --allow-insecure-listen if the network is trusted"
    );
    tracing::warn!(
        "serving {missing} on non-loopback {addr} (--allow-insecure-listen): anyone who can \
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
