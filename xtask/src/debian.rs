//! Debian packages fetched, never installed: `apt-get download` + `dpkg-deb -x` into a cache
//! under `~/.cache`, so a test can run a program from a newer suite than the system's without
//! touching the system's packages or its apt sources. A suite other than the system's gets a
//! private source list, package lists and apt cache of its own.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::cmd;

/// Where apt looks for a package.
pub enum Source<'a> {
    /// The system's sources, as configured.
    System,
    /// A Debian suite (e.g. "trixie") from a private source list kept in the cache.
    Suite(&'a str),
}

/// The engines the export tests push into: the suite that has Prometheus with its
/// remote-write receiver flag and VictoriaMetrics with OTLP ingestion.
pub const ENGINE_SUITE: &str = "trixie";
pub const ENGINES: &[(&str, &str)] = &[
    ("prometheus", "usr/bin/prometheus"),
    ("victoria-metrics", "usr/bin/victoria-metrics"),
];

/// `$XDG_CACHE_HOME/<name>` or `~/.cache/<name>`, created.
pub fn cache_dir(name: &str) -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    let dir = base.join(name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The directory the export tests read the engines from (they find it the same way, or in
/// `COLLECTOR_ENGINE_DIR`).
pub fn engine_dir() -> anyhow::Result<PathBuf> {
    cache_dir(&format!("collector-debian/{ENGINE_SUITE}"))
}

/// Fetches every engine not in the cache yet; quiet when all are there.
pub fn ensure_engines() -> anyhow::Result<PathBuf> {
    let root = engine_dir()?;
    for (package, program) in ENGINES {
        let dir = root.join(package);
        if dir.join(program).exists() {
            continue;
        }
        download_and_unpack(package, &Source::Suite(ENGINE_SUITE), &dir)
            .with_context(|| format!("fetching {package} from Debian {ENGINE_SUITE}"))?;
        anyhow::ensure!(
            dir.join(program).exists(),
            "{package} from {ENGINE_SUITE} has no {program}"
        );
    }
    Ok(root)
}

/// apt's options for `source`: a private list, state and cache for a suite.
fn apt_options(source: &Source<'_>) -> anyhow::Result<Vec<String>> {
    let Source::Suite(suite) = source else {
        return Ok(Vec::new());
    };
    let dir = cache_dir(&format!("collector-debian/apt-{suite}"))?;
    let list = dir.join("debian.sources");
    fs::write(
        &list,
        format!(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )?;
    for sub in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    // No installed packages as far as this apt knows: the suite's version is the candidate,
    // not the system's.
    let status = dir.join("status");
    if !status.exists() {
        fs::write(&status, "")?;
    }
    let option = |key: &str, value: &Path| format!("{key}={}", value.display());
    Ok(vec![
        "-o".into(),
        option("Dir::Etc::sourcelist", &list),
        "-o".into(),
        "Dir::Etc::sourceparts=-".into(),
        "-o".into(),
        option("Dir::State::Lists", &dir.join("lists")),
        "-o".into(),
        option("Dir::Cache", &dir.join("cache")),
        "-o".into(),
        option("Dir::State::status", &status),
        "-o".into(),
        "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
        // The download lands in a root-owned cache that apt's sandbox user cannot write.
        "-o".into(),
        "APT::Sandbox::User=root".into(),
    ])
}

fn apt(program: &str, options: &[String], args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(options).args(args);
    c
}

fn update(options: &[String], why: &str) -> anyhow::Result<()> {
    eprintln!("==> apt-get update ({why})");
    cmd::run(&mut apt("apt-get", options, &["update", "-qq"]))
}

/// Names of the packages of `source` that match `pattern` (an `apt-cache search --names-only`
/// regex), updating the package lists first when none does.
pub fn search(pattern: &str, source: &Source<'_>) -> anyhow::Result<Vec<String>> {
    let options = apt_options(source)?;
    let names = || -> anyhow::Result<Vec<String>> {
        let output = apt("apt-cache", &options, &["search", "--names-only", pattern])
            .output()
            .context("running apt-cache")?;
        // "linux-image-6.1.0-56-amd64 - Linux 6.1 for 64-bit PCs (signed)"
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect())
    };
    let found = names()?;
    if !found.is_empty() {
        return Ok(found);
    }
    update(&options, &format!("no {pattern} in the package index"))?;
    names()
}

/// Downloads `package` and unpacks it into `root` (complete or absent: an interrupted unpack
/// is never mistaken for a cached one). Updates the package lists when apt does not know it,
/// or once when the download fails (lists older than the mirror name a file it no longer has).
pub fn download_and_unpack(package: &str, source: &Source<'_>, root: &Path) -> anyhow::Result<()> {
    let options = apt_options(source)?;
    let known = || {
        Command::new("apt-cache")
            .args(&options)
            .args(["show", "--no-all-versions", package])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    };
    let mut updated = false;
    if !known() {
        update(&options, &format!("no {package} in the package index"))?;
        updated = true;
    }
    // From that suite, whatever else apt knows of.
    let wanted = match source {
        Source::Suite(suite) => format!("{package}/{suite}"),
        Source::System => package.to_owned(),
    };
    let parent = root.parent().context("cache root")?;
    fs::create_dir_all(parent)?;
    let download = parent.join(format!(".{package}.download"));
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download)?;
    eprintln!("==> downloading {package} into {}", parent.display());
    let fetch =
        || cmd::run(apt("apt-get", &options, &["download", "-qq", &wanted]).current_dir(&download));
    if let Err(e) = fetch() {
        if updated {
            return Err(e);
        }
        update(&options, &format!("downloading {package} failed: {e:#}"))?;
        fetch()?;
    }
    let deb = fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    let partial = root.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    if let Some(name) = deb.file_name() {
        fs::write(partial.join("DEB"), name.to_string_lossy().as_bytes())?;
    }
    let _ = fs::remove_dir_all(root);
    fs::rename(&partial, root)?;
    fs::remove_dir_all(&download)?;
    Ok(())
}
