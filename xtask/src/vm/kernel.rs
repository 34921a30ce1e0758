//! The guest kernel: Debian's newest `linux-image-<series>.0-<n>-amd64`, downloaded once with
//! `apt-get download` into a cache outside the repository and unpacked there; plus the modules
//! the guest needs for its scratch disk, in load order.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cmd, debian};

pub struct Kernel {
    pub package: String,
    /// `uname -r` in the guest, e.g. 6.1.0-56-amd64.
    pub release: String,
    pub vmlinuz: PathBuf,
    modules: PathBuf,
}

/// Where downloaded kernels live: `$XDG_CACHE_HOME/collector-vm` or `~/.cache/collector-vm`.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    debian::cache_dir("collector-vm")
}

/// The newest kernel of `series` (e.g. "6.1"), from the cache or downloaded.
pub fn fetch(series: &str) -> anyhow::Result<Kernel> {
    let package = newest_package(series)?;
    let release = package
        .strip_prefix("linux-image-")
        .context("package name")?
        .to_owned();
    let root = cache_dir()?.join(&package);
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        debian::download_and_unpack(&package, &debian::Source::System, &root)?;
    } else {
        eprintln!("==> kernel {package} (cached in {})", root.display());
    }
    if !vmlinuz.exists() {
        bail!("{package} has no boot/vmlinuz-{release}");
    }
    Ok(Kernel {
        modules: root.join("lib/modules").join(&release),
        package,
        release,
        vmlinuz,
    })
}

fn newest_package(series: &str) -> anyhow::Result<String> {
    let pattern = format!(
        "^linux-image-{}\\.0-[0-9]+-amd64$",
        series.replace('.', "\\.")
    );
    let search =
        || cmd::output("apt-cache", &["search", "--names-only", &pattern]).unwrap_or_default();
    let mut listing = search();
    if listing.trim().is_empty() {
        eprintln!("==> apt-get update (no {pattern} in the package index)");
        cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
        listing = search();
    }
    // linux-image-6.1.0-56-amd64 - Linux 6.1 for 64-bit PCs (signed)
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let abi = name
                .strip_prefix(&format!("linux-image-{series}.0-"))?
                .strip_suffix("-amd64")?;
            Some((abi.parse::<u32>().ok()?, name.to_owned()))
        })
        .max()
        .map(|(_, name)| name)
        .with_context(|| {
            format!("no Debian package matches {pattern}; is this a Debian machine with apt?")
        })
}

impl Kernel {
    /// The `.ko` files of `wanted` and everything they depend on, dependencies first (read
    /// from each module's `depends=` field; the package ships no modules.dep).
    pub fn modules_in_load_order(&self, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
        let mut index = HashMap::new();
        index_modules(&self.modules.join("kernel"), &mut index)?;
        let mut order = Vec::new();
        for name in wanted {
            visit(name, &index, &mut order, &mut Vec::new())?;
        }
        Ok(order)
    }
}

fn index_modules(dir: &Path, index: &mut HashMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str()?.strip_suffix(".ko"))
        {
            index.insert(stem.replace('-', "_"), path);
        }
    }
    Ok(())
}

fn visit(
    name: &str,
    index: &HashMap<String, PathBuf>,
    order: &mut Vec<PathBuf>,
    stack: &mut Vec<String>,
) -> anyhow::Result<()> {
    let name = name.replace('-', "_");
    let path = index
        .get(&name)
        .with_context(|| format!("module {name} not in the kernel package"))?;
    if order.contains(path) || stack.contains(&name) {
        return Ok(());
    }
    stack.push(name.clone());
    for dep in depends(path)? {
        visit(&dep, index, order, stack)?;
    }
    stack.pop();
    order.push(path.clone());
    Ok(())
}

/// The `depends=a,b` string of a module's .modinfo section.
fn depends(ko: &Path) -> anyhow::Result<Vec<String>> {
    let bytes = fs::read(ko)?;
    let key = b"depends=";
    let Some(start) = bytes.windows(key.len()).position(|w| w == key) else {
        return Ok(Vec::new());
    };
    let value = &bytes[start + key.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    Ok(String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect())
}
