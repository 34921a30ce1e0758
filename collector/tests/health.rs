//! Health follows freshness: a pass that hangs (here on a FIFO where a cgroup file should be,
//! as a slow cgroupfs read would) turns /healthz, /readyz and the gRPC health service
//! NOT_SERVING once the newest sample is too old, and SERVING again when passes resume.

mod common;

use std::{ffi::CString, fs, os::unix::ffi::OsStrExt as _, path::Path, time::Duration};

use collector::app::{self, ServeConfig};
use common::{eventually, http_get};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const STALE_AFTER: Duration = Duration::from_millis(1_500);

async fn grpc_health(addr: std::net::SocketAddr, service: &str) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

/// Both health surfaces agree on `serving` (HTTP 200 / SERVING or 503 / NOT_SERVING).
async fn until_health(running: &app::Running, serving: bool, what: &str) -> String {
    let http = running.http_addr.unwrap();
    let grpc = running.addr;
    eventually(Duration::from_secs(20), what, || async move {
        let (code, body) = http_get(http, "/healthz").await;
        let (ready, _) = http_get(http, "/readyz").await;
        let want = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let both = grpc_health(grpc, "").await == want
            && grpc_health(grpc, "collector.v1.Collector").await == want;
        let code_ok = if serving { 200 } else { 503 };
        (code == code_ok && ready == code_ok && both).then_some(body)
    })
    .await
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_turns_health_not_serving_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cg");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("cpu.stat"), "usage_usec 1\n").unwrap();
    let running = app::start(ServeConfig {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        stale_after: Some(STALE_AFTER),
        ..common::cgroupfs_only(&root)
    })
    .await
    .unwrap();
    until_health(&running, true, "healthy after the first sample").await;

    // The next pass blocks opening hang/cpu.stat until someone writes to it.
    let hang = root.join("hang");
    fs::create_dir(&hang).unwrap();
    let fifo = hang.join("cpu.stat");
    mkfifo(&fifo);
    let why = until_health(&running, false, "NOT_SERVING while passes hang").await;
    assert!(
        why.contains("old"),
        "the reason says the sample is stale: {why}"
    );

    // Let the blocked pass finish and the next ones read a regular file.
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path; a reader is waiting, so a non-blocking open for writing succeeds.
    let writer = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK) };
    assert!(writer >= 0, "{}", std::io::Error::last_os_error());
    fs::write(hang.join("cpu.stat.new"), "usage_usec 5\n").unwrap();
    fs::rename(hang.join("cpu.stat.new"), &fifo).unwrap();
    let line = b"usage_usec 5\n";
    // SAFETY: writing our buffer to our descriptor, then closing it.
    unsafe {
        libc::write(writer, line.as_ptr().cast(), line.len());
        libc::close(writer);
    }
    until_health(&running, true, "SERVING again once passes complete").await;
    running.stop().await.unwrap();
}
