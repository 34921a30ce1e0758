//! The guest kernel: Debian's newest `linux-image-<series>…-amd64` (5.10 from bullseye, 6.1 from
//! bookworm, 6.12 from trixie), downloaded once with `apt-get download` through that suite's
//! private apt configuration ([`crate::debian`]) into a cache outside the repository and
//! unpacked there; plus
//! the modules the guest needs for its scratch disk, in load order (decompressed where the
//! package ships them as `.ko.xz`).

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::{cmd, debian};

pub struct Kernel {
    pub package: String,
    /// `uname -r` in the guest, e.g. 6.1.0-56-amd64.
    pub release: String,
    pub vmlinuz: PathBuf,
    modules: PathBuf,
    /// Where compressed modules are unpacked for the initramfs.
    decompressed: PathBuf,
}

/// Where downloaded kernels live: `$XDG_CACHE_HOME/collector-vm` or `~/.cache/collector-vm`.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    debian::cache_dir("collector-vm")
}

/// The Debian suite that ships each kernel series the VM suite knows.
const SUITES: &[(&str, &str)] = &[
    ("5.10", "bullseye"),
    ("6.1", "bookworm"),
    ("6.12", "trixie"),
];

fn suite(series: &str) -> anyhow::Result<&'static str> {
    SUITES
        .iter()
        .find(|(s, _)| *s == series)
        .map(|(_, suite)| *suite)
        .with_context(|| {
            let known: Vec<&str> = SUITES.iter().map(|(s, _)| *s).collect();
            format!(
                "no Debian suite ships kernel {series}; known: {}",
                known.join(", ")
            )
        })
}

/// The newest kernel of `series` (e.g. "6.1"), from the cache or downloaded.
pub fn fetch(series: &str) -> anyhow::Result<Kernel> {
    let cache = cache_dir()?;
    let suite = suite(series)?;
    let package = newest_package(suite, series)?;
    let release = package
        .strip_prefix("linux-image-")
        .context("package name")?
        .to_owned();
    let root = cache.join(&package);
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        debian::download_and_unpack(&package, &debian::Source::Suite(suite), &root)?;
    } else {
        eprintln!("==> kernel {package} (cached in {})", root.display());
    }
    if !vmlinuz.exists() {
        bail!("{package} has no boot/vmlinuz-{release}");
    }
    // Debian moved the modules from /lib to /usr/lib (trixie).
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|dir| root.join(dir).join(&release))
        .find(|dir| dir.is_dir())
        .with_context(|| format!("{package} has no lib/modules/{release}"))?;
    Ok(Kernel {
        decompressed: root.join("decompressed-modules"),
        modules,
        package,
        release,
        vmlinuz,
    })
}

/// The newest generic amd64 image of `series`: `linux-image-5.10.0-46-amd64`,
/// `linux-image-6.12.117+deb13-amd64` (the cloud, rt and debug flavours are not it).
fn newest_package(suite: &str, series: &str) -> anyhow::Result<String> {
    let pattern = format!(
        "^linux-image-{}\\.[0-9].*-amd64$",
        series.replace('.', "\\.")
    );
    debian::search(&pattern, &debian::Source::Suite(suite))?
        .into_iter()
        .filter_map(|name| Some((version_key(&name, series)?, name)))
        .max()
        .map(|(_, name)| name)
        .with_context(|| format!("no Debian package matches {pattern}"))
}

/// The numbers after `linux-image-<series>` of a generic image, for ordering; `None` for other
/// flavours.
fn version_key(name: &str, series: &str) -> Option<Vec<u32>> {
    let rest = name
        .strip_prefix(&format!("linux-image-{series}."))?
        .strip_suffix("-amd64")?;
    if rest.contains(|c: char| c.is_ascii_alphabetic() && c != 'd' && c != 'e' && c != 'b') {
        return None; // cloud-amd64, rt-amd64, unsigned, dbg
    }
    Some(
        rest.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.parse().ok())
            .collect(),
    )
}

impl Kernel {
    /// The `.ko` files of `wanted` and everything they depend on, dependencies first (read
    /// from each module's `depends=` field; the package ships no modules.dep).
    pub fn modules_in_load_order(&self, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
        let mut index = HashMap::new();
        index_modules(&self.modules.join("kernel"), &mut index)?;
        // Drivers this kernel has built in (trixie's 6.12 builds virtio_pci in) need no module.
        let builtin: Vec<String> = fs::read_to_string(self.modules.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| Some(module_name(l.rsplit('/').next()?.strip_suffix(".ko")?)))
            .collect();
        let mut order = Vec::new();
        for name in wanted {
            if index.contains_key(&module_name(name)) || !builtin.contains(&module_name(name)) {
                visit(name, &index, &mut order, &mut Vec::new())?;
            }
        }
        order.into_iter().map(|ko| self.uncompressed(&ko)).collect()
    }

    /// `ko` itself, or its `.ko.xz` unpacked once into the kernel's cache (busybox's insmod
    /// takes plain modules).
    fn uncompressed(&self, ko: &Path) -> anyhow::Result<PathBuf> {
        let Some(name) = ko.file_name().and_then(|n| n.to_str()?.strip_suffix(".xz")) else {
            return Ok(ko.to_owned());
        };
        let out = self.decompressed.join(name);
        if !out.exists() {
            fs::create_dir_all(&self.decompressed)?;
            let plain = cmd::output_bytes("xz", &["-dc", path_str(ko)?]).with_context(|| {
                format!("xz -dc {} (Debian: apt-get install xz-utils)", ko.display())
            })?;
            fs::write(&out, plain)?;
        }
        Ok(out)
    }
}

fn index_modules(dir: &Path, index: &mut HashMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(stem) = path.file_name().and_then(|n| {
            let n = n.to_str()?;
            n.strip_suffix(".ko").or_else(|| n.strip_suffix(".ko.xz"))
        }) {
            index.insert(stem.replace('-', "_"), path);
        }
    }
    Ok(())
}

/// Module names compare with `-` and `_` alike (`crc32c-intel` is `crc32c_intel`).
fn module_name(name: &str) -> String {
    name.replace('-', "_")
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
    let bytes = if ko.extension().is_some_and(|e| e == "xz") {
        cmd::output_bytes("xz", &["-dc", path_str(ko)?])
            .with_context(|| format!("xz -dc {}", ko.display()))?
    } else {
        fs::read(ko)?
    };
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

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::version_key;

    #[test]
    fn generic_images_are_ordered_by_their_numbers() {
        assert_eq!(
            version_key("linux-image-5.10.0-46-amd64", "5.10"),
            Some(vec![0, 46])
        );
        assert_eq!(
            version_key("linux-image-6.12.117+deb13-amd64", "6.12"),
            Some(vec![117, 13])
        );
        assert!(
            version_key("linux-image-6.12.117+deb13-amd64", "6.12")
                > version_key("linux-image-6.12.57+deb12-amd64", "6.12")
        );
        assert_eq!(
            version_key("linux-image-6.12.117+deb13-cloud-amd64", "6.12"),
            None
        );
        assert_eq!(version_key("linux-image-6.1.0-56-rt-amd64", "6.1"), None);
        assert_eq!(version_key("linux-image-6.10.0-1-amd64", "6.1"), None);
    }
}
