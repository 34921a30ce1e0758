//! Checks the build prerequisites and installs what is missing: nightly + rust-src (for the
//! eBPF target) and bpf-linker built against the system LLVM. Quiet when all is present.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::cmd::{self, find, output};

const NIGHTLY: &str = "nightly";

pub fn ensure() -> anyhow::Result<()> {
    let rustup = find("rustup").context(
        "rustup not found: install it from your distribution (Debian: apt-get install rustup) \
         or rustup.rs; the eBPF programs need a nightly toolchain",
    )?;
    ensure_nightly(&rustup)?;
    ensure_bpf_linker()?;
    Ok(())
}

fn ensure_nightly(rustup: &Path) -> anyhow::Result<()> {
    let toolchains = output(rustup, &["toolchain", "list"]).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("==> installing the nightly toolchain with rust-src (for the eBPF target)");
        cmd::run(Command::new(rustup).args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
        return Ok(());
    }
    let components = output(
        rustup,
        &["component", "list", "--toolchain", NIGHTLY, "--installed"],
    )
    .unwrap_or_default();
    if !components.lines().any(|l| l.trim().starts_with("rust-src")) {
        eprintln!("==> adding rust-src to nightly (needed for -Z build-std=core)");
        cmd::run(Command::new(rustup).args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    Ok(())
}

/// LLVM major of nightly rustc: bpf-linker must be built against an LLVM at least this new.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let version = output("rustc", &["+nightly", "-vV"]).context("rustc +nightly -vV failed")?;
    version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next()?.trim().parse().ok())
        .context("no LLVM version in `rustc +nightly -vV`")
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if find("bpf-linker").is_some() {
        return Ok(());
    }
    let major = nightly_llvm_major()?;
    let llvm_bin = format!("/usr/lib/llvm-{major}/bin");
    if !Path::new(&llvm_bin).join("llvm-config").exists() {
        install_llvm_dev(major)?;
    }
    eprintln!("==> building bpf-linker against LLVM {major} (once; takes about a minute)");
    let path = format!("{llvm_bin}:{}", std::env::var("PATH").unwrap_or_default());
    cmd::run(
        Command::new("cargo")
            .env("PATH", path)
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}")),
    )
}

fn install_llvm_dev(major: u32) -> anyhow::Result<()> {
    let package = format!("llvm-{major}-dev");
    let debian = Path::new("/etc/debian_version").exists() && find("apt-get").is_some();
    if !debian {
        bail!(
            "bpf-linker is missing and this is not a Debian/Ubuntu host. Install the LLVM \
             {major} development files (llvm-config and libLLVM; Fedora: llvm-devel, Arch: \
             llvm), then run:\n  PATH=<llvm {major} bin dir>:$PATH cargo install bpf-linker \
             --no-default-features --features llvm-{major}"
        );
    }
    apt_install(&[&package], "LLVM for bpf-linker")
        .with_context(|| format!("installing {package}; is an LLVM {major} repository configured?"))
}

/// Installs a Debian package with apt-get (through sudo when not root).
fn apt_install(packages: &[&str], why: &str) -> anyhow::Result<()> {
    let list = packages.join(" ");
    let sudo: &[&str] = if cmd::is_root() {
        &[]
    } else if find("sudo").is_some() {
        &["sudo"]
    } else {
        bail!("{list} needed ({why}); run as root: apt-get update && apt-get install -y {list}")
    };
    eprintln!("==> installing {list} ({why})");
    let apt = |args: &[&str]| {
        let mut all: Vec<&str> = sudo.to_vec();
        all.push("apt-get");
        all.extend_from_slice(args);
        let mut c = Command::new(all[0]);
        c.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        cmd::run(&mut c)
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend_from_slice(packages);
    apt(&install)
}

/// What the tests run besides cargo, by Debian package: the program that tells it is there,
/// and what needs it.
const TEST_TOOLS: &[(&str, &str, &str)] = &[
    (
        "prometheus",
        "promtool",
        "promtool and a Prometheus server check and scrape our exposition",
    ),
    (
        "containerd",
        "containerd",
        "the CRI test runs pods through a real containerd",
    ),
    ("runc", "runc", "containerd's OCI runtime"),
    (
        "busybox-static",
        "busybox",
        "the CRI test's image and the VM's userland",
    ),
];
/// What `cargo xtask test --vm` adds.
const VM_TOOLS: &[(&str, &str, &str)] = &[
    (
        "qemu-system-x86",
        "qemu-system-x86_64",
        "the VM suite boots another kernel under TCG",
    ),
    ("e2fsprogs", "mkfs.ext4", "the VM's scratch disk"),
    (
        "xz-utils",
        "xz",
        "newer Debian kernels ship their modules xz-compressed",
    ),
];

/// Installs the missing [`TEST_TOOLS`] (and [`VM_TOOLS`] with `vm`) in one apt run (Debian),
/// or says which are missing.
pub fn ensure_test_tools(vm: bool) -> anyhow::Result<()> {
    let tools: Vec<(&str, &str, &str)> = TEST_TOOLS
        .iter()
        .chain(if vm { VM_TOOLS } else { &[] })
        .copied()
        .collect();
    let debian = Path::new("/etc/debian_version").exists() && find("dpkg-query").is_some();
    if !debian {
        let missing: Vec<&str> = tools
            .iter()
            .filter(|(_, program, _)| find(program).is_none())
            .map(|(package, _, _)| *package)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        bail!(
            "the tests need these packages (Debian names): {}; install your distribution's \
             equivalents",
            missing.join(", ")
        );
    }
    // By package, not program: Debian's dynamic `busybox` has the same /bin/busybox.
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(package, _, _)| !deb_installed(package))
        .map(|(package, _, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let why: Vec<&str> = tools
        .iter()
        .filter(|(package, _, _)| missing.contains(package))
        .map(|(_, _, why)| *why)
        .collect();
    apt_install(&missing, &why.join("; "))
}

fn deb_installed(package: &str) -> bool {
    output(
        "dpkg-query",
        &["--show", "--showformat=${db:Status-Status}", package],
    )
    .is_some_and(|status| status.trim() == "installed")
}

/// A Debian package the tests run a program of, unpacked into a cache rather than installed
/// (`apt-get download` + `dpkg-deb -x`: the system's packages and apt sources stay as they
/// are): the package, the program inside it, and what needs it.
const CACHED_TOOLS: &[(&str, &str, &str)] = &[(
    "kubernetes-client",
    "usr/bin/kubectl",
    "the aggregator's metrics.k8s.io endpoint is read with a real kubectl",
)];

/// Paths of the [`CACHED_TOOLS`] programs by environment variable for the tests
/// (`COLLECTOR_KUBECTL`), fetched into `~/.cache/collector-tools` once.
pub fn cached_test_tools() -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let mut out = Vec::new();
    for (package, program, why) in CACHED_TOOLS {
        let path = cached_package(package, why)?.join(program);
        anyhow::ensure!(path.is_file(), "{package} has no {program}");
        out.push(("COLLECTOR_KUBECTL", path));
    }
    Ok(out)
}

/// The unpacked tree of Debian's `package`, from the cache or downloaded now.
fn cached_package(package: &str, why: &str) -> anyhow::Result<PathBuf> {
    let root = crate::debian::cache_dir("collector-tools")?.join(package);
    if root.is_dir() {
        return Ok(root);
    }
    anyhow::ensure!(
        find("apt-get").is_some() && find("dpkg-deb").is_some(),
        "{package} is needed ({why}); on Debian/Ubuntu xtask fetches it with apt-get download"
    );
    eprintln!("==> fetching {package} ({why})");
    crate::debian::download_and_unpack(package, &crate::debian::Source::System, &root)?;
    Ok(root)
}
