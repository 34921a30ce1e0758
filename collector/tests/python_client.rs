//! A client in another language and gRPC implementation: Python grpcio, with no generated code,
//! finds the API through server reflection and reads a Watch snapshot and update. grpcio is
//! installed by the test itself (pip, into the target dir, once).

mod common;

use std::{path::PathBuf, process::Command};

/// Installs grpcio, grpcio-reflection and protobuf into a directory under target/ unless they
/// are already there; returns it for PYTHONPATH.
fn python_packages() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-grpc");
    let ready = dir.join(".installed");
    if !ready.exists() {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&dir)
            .args(["grpcio", "grpcio-reflection", "protobuf"])
            .status()
            .expect(
                "python3 is needed for the cross-implementation test (apt-get install python3-pip)",
            );
        assert!(
            status.success(),
            "pip could not install grpcio/grpcio-reflection/protobuf from PyPI ({status})"
        );
        std::fs::write(&ready, "").unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_reads_a_watch_update_through_reflection() {
    let packages = python_packages();
    let dir = tempfile::tempdir().unwrap();
    let root = common::node_tree(dir.path());
    let running = common::start_collector(&root, "py-node", "127.0.0.1:0".parse().unwrap()).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/watch_once.py");
    let addr = running.addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(addr)
            .env("PYTHONPATH", packages)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python client failed: {stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(seen["snapshot"], true, "{seen}");
    assert_eq!(seen["node_name"], "py-node");
    let paths = seen["snapshot_paths"].as_array().unwrap();
    assert!(paths.iter().any(|p| p == "/"), "{seen}");
    assert!(
        paths
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("/kubepods/")),
        "{seen}"
    );
    assert_eq!(seen["update_sequence"], 1);
    assert_eq!(seen["update_snapshot"], false);
    // The update carries the node (JSON names as protobuf's JSON mapping writes them).
    assert!(
        seen["update"]["nodeStats"]["nodeName"] == "py-node",
        "{seen}"
    );
    running.stop().await.unwrap();
}
