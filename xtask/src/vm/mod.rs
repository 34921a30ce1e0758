//! `cargo xtask test --vm`: the root/BPF integration tests in QEMU guests on Debian's LTS
//! kernels (5.10, 6.1 and 6.12 by default) with pure cgroup v2 and every controller enabled,
//! which our hosts (6.18, hybrid cgroups) cannot show.

pub mod artifacts;
mod hang;
mod initramfs;
mod kernel;
mod qemu;

use std::{fs, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, bail};

use crate::cmd;

/// The kernels the suite runs on by default: the oldest we support (bullseye's 5.10, the first
/// with everything the probes need: tp_btf, ring buffers, task iterators), bookworm's 6.1 and
/// trixie's 6.12.
pub const DEFAULT_KERNELS: &[&str] = &["5.10", "6.1", "6.12"];
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// For the scratch disk: the virtio PCI transport, the block driver and ext4 (whose crc32c is
/// a crypto-API soft dependency, not in its `depends=`).
const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];
const BUSYBOX: &str = "/bin/busybox";
const SCRATCH_MIB: u64 = 256;

pub struct Summary {
    pub kernel: String,
    pub passed: u32,
    pub boot: Duration,
    pub total: Duration,
}

/// Builds once, then packs, boots and runs the suite on each kernel in turn; fails unless every
/// test binary passed in every guest (after trying them all, naming each failure).
pub fn run(kernels: &[String], test_args: &[String]) -> anyhow::Result<Vec<Summary>> {
    for (program, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("mkfs.ext4", "e2fsprogs"),
        ("xz", "xz-utils"),
    ] {
        if cmd::find(program).is_none() && !Path::new("/usr/sbin").join(program).exists() {
            bail!("{program} not found (Debian: apt-get install {package})");
        }
    }
    let fetched = kernels
        .iter()
        .map(|series| kernel::fetch(series))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let artifacts = artifacts::build()?;
    let mut summaries = Vec::new();
    let mut failures = Vec::new();
    for kernel in &fetched {
        match run_one(kernel, &artifacts, test_args) {
            Ok(summary) => summaries.push(summary),
            Err(e) => {
                eprintln!("==> VM suite on {} failed: {e:#}", kernel.release);
                failures.push(format!("{}: {e:#}", kernel.release));
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "VM suite failed on {} kernel(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(summaries)
}

fn run_one(
    kernel: &kernel::Kernel,
    artifacts: &artifacts::Artifacts,
    test_args: &[String],
) -> anyhow::Result<Summary> {
    let work = kernel::cache_dir()?.join("run");
    fs::create_dir_all(&work)?;

    let modules = kernel.modules_in_load_order(MODULES)?;
    // CARGO_TARGET_TMPDIR of a --target build: the tests put files that must live on a real
    // disk there.
    let scratch_dir = Path::new("target").join(artifacts::TARGET).join("tmp");
    fs::create_dir_all(&scratch_dir)?;
    let scratch_mount = scratch_dir.canonicalize()?;
    let rounds: usize = match std::env::var("COLLECTOR_VM_ROUNDS") {
        Ok(n) => n
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("COLLECTOR_VM_ROUNDS={n}: want a positive count"))?,
        Err(_) => 1,
    };
    let initramfs = work.join("initramfs.cpio");
    let guest = Guest {
        scratch_mount: &scratch_mount,
        test_args,
        rounds,
    };
    pack(&initramfs, artifacts, &modules, &guest)?;
    let disk = work.join("scratch.img");
    make_scratch_disk(&disk)?;

    let timeout = std::env::var("COLLECTOR_VM_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    eprintln!(
        "==> booting {} under TCG ({} test binaries; timeout {timeout:?})",
        kernel.package,
        artifacts.tests.len()
    );
    let outcome = qemu::run(&qemu::Boot {
        vmlinuz: &kernel.vmlinuz,
        initramfs: &initramfs,
        scratch_disk: &disk,
        monitor: &work.join("monitor.sock"),
        memory_mib: 2048,
        cpus: 2,
        timeout,
    })?;
    let runs = artifacts.tests.len() * rounds;
    if outcome.failed > 0 || outcome.passed as usize != runs {
        bail!(
            "{} test binary runs passed, {} failed (of {runs})",
            outcome.passed,
            outcome.failed,
        );
    }
    Ok(Summary {
        kernel: kernel.release.clone(),
        passed: outcome.passed,
        boot: outcome.boot,
        total: outcome.total,
    })
}

/// What the guest's init is told.
struct Guest<'a> {
    /// Where the scratch disk goes: the tests' CARGO_TARGET_TMPDIR.
    scratch_mount: &'a Path,
    /// For every test binary (a name filter, `--nocapture`).
    test_args: &'a [String],
    /// Times the whole list of test binaries runs.
    rounds: usize,
}

fn pack(
    out: &Path,
    artifacts: &artifacts::Artifacts,
    modules: &[std::path::PathBuf],
    guest: &Guest,
) -> anyhow::Result<()> {
    let file = fs::File::create(out)?;
    let mut a = initramfs::Archive::new(std::io::BufWriter::new(file));
    for dir in ["/proc", "/sys", "/dev", "/tmp", "/root", "/etc"] {
        a.dir(dir)?;
    }
    a.host_file(BUSYBOX, Path::new(BUSYBOX))?;
    a.symlink("/bin/sh", "busybox")?;
    // At their build paths: the tests start helpers by the path compiled into them.
    for exe in artifacts.tests.iter().chain(&artifacts.helpers) {
        a.host_file(&path_str(exe)?, exe)?;
    }
    let mut guest_modules = Vec::new();
    for (i, ko) in modules.iter().enumerate() {
        let name = ko.file_name().context("module name")?.to_string_lossy();
        let guest = format!("/modules/{i:02}-{name}");
        a.host_file(&guest, ko)?;
        guest_modules.push(guest);
    }
    let tests: Vec<String> = artifacts
        .tests
        .iter()
        .map(|t| path_str(t))
        .collect::<anyhow::Result<_>>()?;
    let hold_skb_keys = artifacts
        .helpers
        .iter()
        .find(|h| h.file_name().is_some_and(|n| n == "hold_skb_keys"))
        .context("the hold_skb_keys helper was not built")?;
    let init = include_str!("init.sh")
        .replace("@HOLD_SKB_KEYS@", &path_str(hold_skb_keys)?)
        .replace("@MODULES@", &guest_modules.join(" "))
        .replace("@SCRATCH@", &path_str(guest.scratch_mount)?)
        .replace("@ROUNDS@", &guest.rounds.to_string())
        .replace("@TESTS@", &tests.join(" "))
        .replace("@TEST_ARGS@", &shell_words(guest.test_args)?);
    a.file("/init", init.as_bytes(), 0o755)?;
    use std::io::Write as _;
    a.finish()?.flush()?;
    Ok(())
}

fn make_scratch_disk(path: &Path) -> anyhow::Result<()> {
    let file = fs::File::create(path)?;
    file.set_len(SCRATCH_MIB << 20)?;
    drop(file);
    cmd::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal"])
            .arg(path),
    )
}

/// Single-quoted for the init script; a quote inside would end the quoting, so it is refused.
fn shell_words(args: &[String]) -> anyhow::Result<String> {
    if let Some(bad) = args.iter().find(|a| a.contains('\'')) {
        bail!("test argument {bad:?}: single quotes cannot be passed to the guest");
    }
    Ok(args
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" "))
}

fn path_str(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(str::to_owned)
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}
