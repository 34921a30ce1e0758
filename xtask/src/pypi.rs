//! A program shipped in a PyPI wheel, installed (never system-wide) with pip's `--target`
//! into a cache under `~/.cache`: rotel, the OTLP receiver the export tests push gRPC into.

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::{cmd, debian};

/// rotel's wheel: a Rust OpenTelemetry collector whose `rotel-agent` receives OTLP over gRPC
/// and HTTP and prints what it decoded. Pinned: its debug output is what the test reads.
const ROTEL: &str = "rotel==0.0.1a15";

/// `rotel-agent` from the cache, installed first if missing.
pub fn ensure_rotel() -> anyhow::Result<PathBuf> {
    let root = debian::cache_dir("collector-pypi")?;
    let dir = root.join(ROTEL.replace("==", "-"));
    let agent = dir.join("rotel/rotel-agent");
    if agent.exists() {
        return Ok(agent);
    }
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    eprintln!("==> pip install {ROTEL} into {}", root.display());
    cmd::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-deps", "--target"])
            .arg(&partial)
            .arg(ROTEL),
    )
    .context("installing rotel needs python3 with pip (the wheel is for CPython 3.11)")?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir)?;
    anyhow::ensure!(agent.exists(), "{ROTEL} has no rotel/rotel-agent");
    Ok(agent)
}
