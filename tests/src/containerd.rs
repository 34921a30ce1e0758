//! A private containerd for tests: its own socket, root and state directory, the native
//! snapshotter (works on any filesystem), and a sandbox image built here from busybox-static,
//! since nothing can be pulled. Everything it started is killed and removed on drop.
//!
//! Pods with their own network namespace need a CNI plugin: [`Veth`] installs two small shell
//! plugins (iproute2 and nsenter) that give each sandbox `lo` and an `eth0` whose veth peer
//! sits in the host's namespace with a /30 of its own.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The image every sandbox and container of the tests runs.
pub const IMAGE: &str = "docker.io/library/collector-test-busybox:1";
const BUSYBOX: &str = "/bin/busybox";
const NAMESPACE: &str = "k8s.io";
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    pub socket: PathBuf,
}

/// The network the veth plugin gives a sandbox: `eth0` at `pod_ip`/30 in its namespace,
/// `host_if` at `host_ip`/30 in the host's.
#[derive(Debug, Clone)]
pub struct Veth {
    pub host_if: String,
    pub host_ip: String,
    pub pod_ip: String,
}

impl Veth {
    /// Names and addresses unique to this test process.
    pub fn for_this_process() -> Self {
        let pid = std::process::id();
        // veth* is an interface kubelet leaves out of the node's network, as it should here.
        let subnet = (pid % 60) * 4;
        Self {
            host_if: format!("veth-ct{}", pid % 100_000),
            host_ip: format!("10.213.{}.{}", (pid / 60) % 250, subnet + 1),
            pod_ip: format!("10.213.{}.{}", (pid / 60) % 250, subnet + 2),
        }
    }
}

/// Set to keep containerd's directory (config, log, state, OCI specs) after the test.
const KEEP_ENV: &str = "COLLECTOR_KEEP_CONTAINERD";

impl Containerd {
    /// Starts containerd and waits for its socket. `Err` says why it could not start (missing
    /// binaries, or containerd's own last log lines).
    pub fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    /// [`Containerd::start`], with sandboxes networked by the veth plugin when given.
    pub fn start_with(veth: Option<&Veth>) -> Result<Self, String> {
        let mut tools = vec!["containerd", "containerd-shim-runc-v2", "runc", "ctr"];
        if veth.is_some() {
            tools.extend(["ip", "nsenter"]);
        }
        for tool in tools {
            which(tool).ok_or_else(|| {
                format!("{tool} not found (Debian: apt-get install containerd runc)")
            })?;
        }
        // The image has no libc: only a static busybox runs in it.
        let busybox = fs::read(BUSYBOX).map_err(|e| format!("{BUSYBOX}: {e}"))?;
        if busybox
            .windows(b"/ld-linux".len())
            .any(|w| w == b"/ld-linux")
        {
            return Err(format!(
                "{BUSYBOX} is dynamically linked (Debian: apt-get install busybox-static)"
            ));
        }
        // Short: unix socket paths are limited to 108 bytes, shim sockets included.
        let dir = tempfile::Builder::new()
            .prefix("ctd-")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        fs::write(&config, config_toml(dir.path(), &socket)).map_err(|e| e.to_string())?;
        if let Some(veth) = veth {
            install_cni(dir.path(), veth).map_err(|e| format!("installing the CNI plugin: {e}"))?;
        }
        let log = fs::File::create(dir.path().join("containerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning containerd: {e}"))?;
        let mut containerd = Self { child, dir, socket };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = containerd.child.try_wait() {
                return Err(format!(
                    "containerd exited ({status}): {}",
                    containerd.log_tail()
                ));
            }
            if containerd.socket.exists() && containerd.ctr(&["version"]).is_ok() {
                return Ok(containerd);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd did not answer within {START_TIMEOUT:?}: {}",
                    containerd.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Builds [`IMAGE`] (busybox-static; its entrypoint sleeps, so it also serves as the pause
    /// image) as an OCI archive and imports it into the CRI namespace.
    pub fn import_test_image(&self) -> anyhow::Result<()> {
        let archive = build_oci_archive(&self.dir.path().join("image"))?;
        self.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "native",
            archive.to_str().context("non-UTF-8 temp path")?,
        ])?;
        Ok(())
    }

    /// Imports an OCI image archive (`cargo xtask image`'s) into the CRI namespace, named
    /// `base_name:<the archive's tag>`.
    pub fn import_archive(&self, archive: &Path, base_name: &str) -> anyhow::Result<()> {
        self.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "native",
            "--base-name",
            base_name,
            archive.to_str().context("non-UTF-8 archive path")?,
        ])?;
        Ok(())
    }

    /// Runs `ctr` against this containerd in the CRI namespace.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE])
            .args(args)
            .output()
            .context("running ctr")?;
        if !out.status.success() {
            bail!(
                "ctr {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The network namespace the veth plugin last set up (its path, e.g. /var/run/netns/cni-…).
    pub fn netns(&self) -> Option<PathBuf> {
        let text = fs::read_to_string(self.dir.path().join("netns-path")).ok()?;
        Some(PathBuf::from(text.trim()))
    }

    /// containerd's root directory (where its snapshotters keep their data).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The last lines of containerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(self.dir.path().join("containerd.log")) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(2000)));
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first (their shims outlive containerd), then containerd, then any shim of ours
        // that is still alive.
        if let Ok(tasks) = self.ctr(&["tasks", "list", "--quiet"]) {
            for id in tasks.lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
                let _ = self.ctr(&["tasks", "delete", "--force", id]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_processes_mentioning(&self.socket);
        if std::env::var_os(KEEP_ENV).is_some() {
            let kept =
                std::mem::replace(&mut self.dir, tempfile::TempDir::new().expect("temp dir"));
            eprintln!("{KEEP_ENV}: kept {}", kept.keep().display());
        }
    }
}

fn config_toml(dir: &Path, socket: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  # kubelet asks for -998 for sandboxes; without CAP_SYS_RESOURCE (test sandboxes, CI
  # containers) runc cannot lower it, so cap it at containerd's own, as rootless setups do.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
"#,
        socket = socket.display()
    )
}

/// The CNI configuration and two plugins: `loopback`, which containerd always runs first, and
/// the veth plugin for the pod network.
fn install_cni(dir: &Path, veth: &Veth) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = dir.join("cni-bin");
    let conf = dir.join("cni-conf");
    fs::create_dir_all(&bin)?;
    fs::create_dir_all(&conf)?;
    fs::write(
        conf.join("10-collector-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"collector-test","plugins":[{"type":"collector-test-veth"}]}"#,
    )?;
    let Veth {
        host_if,
        host_ip,
        pod_ip,
    } = veth;
    let record = dir.join("netns-path");
    let in_pod = r#"nsenter --net="$CNI_NETNS""#;
    let plugins = [
        (
            "loopback",
            format!(
                r#"#!/bin/sh
case "$CNI_COMMAND" in
VERSION) echo '{{"cniVersion":"0.3.1","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}}' ;;
ADD) cat >/dev/null; {in_pod} ip link set lo up || exit 1
  printf '{{"cniVersion":"0.3.1","interfaces":[{{"name":"lo","sandbox":"%s"}}],"ips":[{{"version":"4","address":"127.0.0.1/8","interface":0}}],"dns":{{}}}}' "$CNI_NETNS" ;;
*) cat >/dev/null; exit 0 ;;
esac
"#
            ),
        ),
        (
            "collector-test-veth",
            format!(
                r#"#!/bin/sh
fail() {{ printf '{{"cniVersion":"1.0.0","code":999,"msg":"%s"}}' "$1"; exit 1; }}
case "$CNI_COMMAND" in
VERSION) echo '{{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}}' ;;
ADD) cat >/dev/null
  echo "$CNI_NETNS" > {record}
  {in_pod} ip link add eth0 type veth peer name {host_if} netns 1 || fail "veth pair"
  {in_pod} sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1
  {in_pod} ip addr add {pod_ip}/30 dev eth0 || fail "pod address"
  {in_pod} ip link set eth0 up || fail "eth0 up"
  ip addr add {host_ip}/30 dev {host_if} || fail "host address"
  sysctl -qw net.ipv6.conf.{host_if}.disable_ipv6=1
  ip link set {host_if} up || fail "host end up"
  printf '{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"%s"}}],"ips":[{{"address":"{pod_ip}/30","interface":0}}]}}' "$CNI_NETNS" ;;
DEL) cat >/dev/null; ip link del {host_if} 2>/dev/null; exit 0 ;;
*) cat >/dev/null; exit 0 ;;
esac
"#,
                record = record.display()
            ),
        ),
    ];
    for (name, script) in plugins {
        let path = bin.join(name);
        fs::write(&path, script)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// An OCI image layout archive: one layer holding busybox and the applets the tests call.
fn build_oci_archive(work: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = work.join("rootfs");
    let blobs = work.join("oci/blobs/sha256");
    fs::create_dir_all(rootfs.join("bin"))?;
    fs::create_dir_all(&blobs)?;
    fs::copy(BUSYBOX, rootfs.join("bin/busybox"))?;
    for applet in ["sh", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let layer = add_blob(&blobs, &fs::read(&layer)?)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/sh", "-c", "while :; do sleep 3600; done"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    });
    let config = add_blob(&blobs, config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.descriptor("application/vnd.oci.image.config.v1+json"),
        "layers": [layer.descriptor("application/vnd.oci.image.layer.v1.tar")],
    });
    let manifest = add_blob(&blobs, manifest.to_string().as_bytes())?;
    let mut index_entry = manifest.descriptor("application/vnd.oci.image.manifest.v1+json");
    index_entry["annotations"] = serde_json::json!({ "io.containerd.image.name": IMAGE });
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [index_entry]});
    fs::write(work.join("oci/index.json"), index.to_string())?;
    fs::write(
        work.join("oci/oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let archive = work.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(work.join("oci"))
        .arg("-cf")
        .arg(&archive)
        .arg("."))?;
    Ok(archive)
}

struct Blob {
    digest: String,
    size: usize,
}

impl Blob {
    fn descriptor(&self, media_type: &str) -> serde_json::Value {
        serde_json::json!({"mediaType": media_type, "digest": self.digest, "size": self.size})
    }
}

fn add_blob(blobs: &Path, bytes: &[u8]) -> anyhow::Result<Blob> {
    let tmp = blobs.join("incoming");
    fs::write(&tmp, bytes)?;
    let out = run(Command::new("sha256sum").arg(&tmp))?;
    let hex = out
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_owned();
    fs::rename(&tmp, blobs.join(&hex))?;
    Ok(Blob {
        digest: format!("sha256:{hex}"),
        size: bytes.len(),
    })
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file())
}

/// Kills every process whose command line names `needle` (our shims, by their -address).
fn kill_processes_mentioning(needle: &Path) {
    let needle = needle.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
