//! A private apt configuration: its own source list, package lists and download cache under
//! `~/.cache/collector-vm/apt`, so kernels of other Debian releases can be fetched with
//! `apt-get download` without touching the system's sources.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;

use crate::cmd;

/// Where the guest kernels come from: Debian's bullseye (5.10), bookworm (6.1) and trixie
/// (6.12), each with its security updates.
const SOURCES: &str = "\
deb http://deb.debian.org/debian bullseye main
deb http://deb.debian.org/debian-security bullseye-security main
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian trixie main
deb http://deb.debian.org/debian-security trixie-security main
";

/// Package lists older than this are refreshed before a search that finds nothing new.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

pub struct Apt {
    root: PathBuf,
}

impl Apt {
    /// The private configuration under `cache`, created on first use.
    pub fn new(cache: &Path) -> anyhow::Result<Self> {
        let root = cache.join("apt");
        for dir in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(root.join(dir))
                .with_context(|| format!("creating {}", root.join(dir).display()))?;
        }
        let list = root.join("sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(SOURCES) {
            fs::write(&list, SOURCES)?;
            // New sources: the old lists do not describe them.
            let _ = fs::remove_file(root.join("lists/updated"));
        }
        Ok(Self { root })
    }

    fn options(&self) -> Vec<String> {
        let o = |k: &str, v: &Path| format!("{k}={}", v.display());
        [
            o("Dir::Etc::sourcelist", &self.root.join("sources.list")),
            "Dir::Etc::sourceparts=-".into(),
            o("Dir::State::Lists", &self.root.join("lists")),
            o("Dir::Cache", &self.root.join("cache")),
            // Downloads land in a root-owned cache: no _apt sandbox user to hand them to.
            "APT::Sandbox::User=root".into(),
        ]
        .into_iter()
        .flat_map(|kv| ["-o".to_owned(), kv])
        .collect()
    }

    /// Refreshes the package lists when they are missing or older than a day (or `force`).
    pub fn update(&self, force: bool) -> anyhow::Result<()> {
        let stamp = self.root.join("lists/updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() < LISTS_MAX_AGE);
        if fresh && !force {
            return Ok(());
        }
        eprintln!("==> apt-get update (private lists for bullseye, bookworm, trixie)");
        cmd::run(
            Command::new("apt-get")
                .args(self.options())
                .args(["update", "-qq"]),
        )?;
        fs::write(&stamp, b"")?;
        Ok(())
    }

    /// Package names matching `pattern` (an `apt-cache search --names-only` regex).
    pub fn search(&self, pattern: &str) -> Vec<String> {
        let mut args = self.options();
        args.extend(["search".into(), "--names-only".into(), pattern.into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cmd::output("apt-cache", &args)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// Downloads `package` into `dir` and returns the .deb.
    pub fn download(&self, package: &str, dir: &Path) -> anyhow::Result<PathBuf> {
        cmd::run(
            Command::new("apt-get")
                .args(self.options())
                .args(["download", "-qq", package])
                .current_dir(dir),
        )?;
        fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download left no {package}_*.deb"))
    }
}
