//! Which runtime socket to ask, and connecting to it.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::proto::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};

/// Default sockets, in the order kubelet's documentation lists the runtimes.
pub const DEFAULT_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/run/cri-dockerd.sock",
];

/// Large nodes list thousands of containers with their labels and annotations; kubelet allows
/// 16 MiB for the same calls.
const MAX_MESSAGE_BYTES: usize = 16 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// `--cri-socket`: `auto`, `off`, a path or `unix://` + path (kubelet's
/// `--container-runtime-endpoint` form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CriSetting {
    /// The first of [`DEFAULT_SOCKETS`] that exists, looked up again while none does.
    Auto,
    Off,
    Socket(PathBuf),
}

impl CriSetting {
    /// Sockets to try, in order.
    pub fn candidates(&self) -> Vec<PathBuf> {
        match self {
            Self::Auto => DEFAULT_SOCKETS.iter().map(PathBuf::from).collect(),
            Self::Off => Vec::new(),
            Self::Socket(path) => vec![path.clone()],
        }
    }
}

impl FromStr for CriSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "off" | "none" => Ok(Self::Off),
            other => {
                let path = other.strip_prefix("unix://").unwrap_or(other);
                if other.contains("://") && !other.starts_with("unix://") {
                    return Err(format!(
                        "{other:?}: only unix sockets are supported (unix:///path or /path)"
                    ));
                }
                if !path.starts_with('/') {
                    return Err(format!(
                        "{other:?}: expected auto, off, or an absolute socket path"
                    ));
                }
                Ok(Self::Socket(PathBuf::from(path)))
            }
        }
    }
}

impl fmt::Display for CriSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Off => f.write_str("off"),
            Self::Socket(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

pub type Client = RuntimeServiceClient<Channel>;
pub type ImageClient = ImageServiceClient<Channel>;

/// Both CRI services of one runtime, over one connection.
pub struct Connection {
    pub runtime: Client,
    pub images: ImageClient,
    /// The runtime's process, from the socket's peer credentials (SO_PEERCRED): which cgroup
    /// the runtime runs in, for kubelet's "runtime" system container.
    pub peer_pid: Option<u32>,
}

/// A client on `socket`, with per-call timeouts so a wedged runtime cannot stall the refresher.
pub async fn connect(socket: &Path) -> Result<Client, tonic::transport::Error> {
    Ok(connect_both(socket).await?.runtime)
}

/// The RuntimeService and ImageService clients on `socket`, and who serves it.
pub async fn connect_both(socket: &Path) -> Result<Connection, tonic::transport::Error> {
    connect_with_timeout(socket, CALL_TIMEOUT).await
}

/// [`connect_both`] with another per-call timeout: what drives pods, as kubelet does, needs
/// kubelet's (`--runtime-request-timeout`, 2 min): a sandbox can take long to start on a busy
/// node, where the collector's reads of names and usage must not wait.
pub async fn connect_with_timeout(
    socket: &Path,
    call_timeout: Duration,
) -> Result<Connection, tonic::transport::Error> {
    let socket = socket.to_owned();
    let peer = Arc::new(Mutex::new(None));
    let seen = peer.clone();
    // The URI is required by the API and ignored by the connector.
    let channel = Endpoint::from_static("http://cri.invalid")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(call_timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            let seen = seen.clone();
            async move {
                let stream = UnixStream::connect(socket).await?;
                let pid = stream.peer_cred().ok().and_then(|c| c.pid());
                *seen.lock().unwrap_or_else(|e| e.into_inner()) =
                    pid.and_then(|p| u32::try_from(p).ok());
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await?;
    let peer_pid = *peer.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Connection {
        runtime: RuntimeServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        images: ImageServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
        peer_pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubelet_style_endpoints() {
        assert_eq!("auto".parse(), Ok(CriSetting::Auto));
        assert_eq!("off".parse(), Ok(CriSetting::Off));
        let sock = CriSetting::Socket("/run/k3s/containerd/containerd.sock".into());
        assert_eq!(
            "unix:///run/k3s/containerd/containerd.sock".parse(),
            Ok(sock.clone())
        );
        assert_eq!(
            "/run/k3s/containerd/containerd.sock".parse(),
            Ok(sock.clone())
        );
        assert_eq!(
            sock.to_string(),
            "unix:///run/k3s/containerd/containerd.sock"
        );
        let tcp = "tcp://127.0.0.1:1234".parse::<CriSetting>().unwrap_err();
        assert!(tcp.contains("only unix sockets"), "{tcp}");
        assert!("relative.sock".parse::<CriSetting>().is_err());
        assert_eq!(CriSetting::Auto.candidates().len(), DEFAULT_SOCKETS.len());
        assert!(CriSetting::Off.candidates().is_empty());
    }
}
