//! The guest's programs: the integration test binaries and the helper binaries they start,
//! built in release mode and statically linked (the initramfs has no libc).

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::Stdio,
};

use anyhow::{Context as _, bail};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";
const PACKAGE: &str = "collector-integration-tests";
/// Host-only: they need containerd (and the image), which the guest does not have.
const HOST_ONLY_TESTS: &[&str] = &["cri_containerd", "collector_container"];

pub struct Artifacts {
    /// Test executables, each run in the guest in this order.
    pub tests: Vec<PathBuf>,
    /// Programs the tests start by their build path (`CARGO_BIN_EXE_*`).
    pub helpers: Vec<PathBuf>,
}

pub fn build() -> anyhow::Result<Artifacts> {
    eprintln!("==> building the integration tests statically for the VM ({TARGET}, release)");
    let mut child = crate::image::static_cargo("test")
        .args([
            "--no-run",
            "--release",
            "--package",
            PACKAGE,
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo")?;
    let mut artifacts = Artifacts {
        tests: Vec::new(),
        helpers: Vec::new(),
    };
    let stdout = child.stdout.take().context("cargo stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let ours = msg["package_id"]
            .as_str()
            .is_some_and(|id| id.contains(PACKAGE));
        if msg["reason"] != "compiler-artifact" || !ours {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let kinds: Vec<&str> = msg["target"]["kind"]
            .as_array()
            .map(|k| k.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        if kinds.contains(&"bin") {
            artifacts.helpers.push(exe.into());
        } else if kinds.contains(&"test") && !HOST_ONLY_TESTS.contains(&name) {
            artifacts.tests.push(exe.into());
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("building the VM test binaries failed ({status})");
    }
    if artifacts.tests.is_empty() {
        bail!("cargo built no integration test binaries for the VM");
    }
    artifacts.tests.sort();
    Ok(artifacts)
}
