//! `cargo xtask image`: the collector built statically (glibc with `+crt-static`, the eBPF
//! objects embedded at build time) in an OCI image with nothing else but the CA bundle the push
//! exporters need for `https://` (no shell, no libc, no package manager), written as an OCI
//! image layout archive that `ctr images import`, `skopeo copy oci-archive:` and `podman load`
//! read. Same commit, same checkout path: same bytes and digest (every time comes from the
//! commit, every owner is root, entries are sorted).

pub mod oci;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{cmd, debian, vm::artifacts::TARGET};

/// Where the image and its digest go (`collector-<version>.oci.tar`, `digest`).
pub const OUT_DIR: &str = "target/image";
/// The repository the manifests name; the archive's tag is the workspace version.
pub const REPOSITORY: &str = "ghcr.io/collector-project/collector";
/// Static glibc for the image's binary, the soak program and the VM suite's tests alike.
const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static";
const BINARY_IN_IMAGE: &str = "/usr/local/bin/collector";
const CA_BUNDLE_IN_IMAGE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// gRPC, HTTP; the aggregator's gRPC and HTTPS (one image for both).
const PORTS: &[&str] = &["50051/tcp", "50080/tcp", "50052/tcp", "8443/tcp"];

pub struct Image {
    pub archive: PathBuf,
    pub manifest_digest: String,
    /// `REPOSITORY:tag`, the name `ctr images import --base-name REPOSITORY` gives it.
    pub reference: String,
}

/// Builds the static binary and writes the image archive under [`OUT_DIR`].
pub fn build() -> anyhow::Result<Image> {
    let binary = build_static_binary()?;
    let inputs = Inputs::gather(&binary)?;
    let built = oci::build(&inputs.spec())?;
    let out = Path::new(OUT_DIR);
    fs::create_dir_all(out)?;
    let archive = out.join(format!("collector-{}.oci.tar", inputs.version));
    fs::write(&archive, &built.archive)
        .with_context(|| format!("writing {}", archive.display()))?;
    fs::write(out.join("digest"), format!("{}\n", built.manifest_digest))?;
    let image = Image {
        archive: fs::canonicalize(&archive)?,
        manifest_digest: built.manifest_digest,
        reference: format!("{REPOSITORY}:{}", inputs.version),
    };
    eprintln!(
        "image {} ({}), {:.1} MiB compressed layer, commit {} at {}\n  {}\n  load it: ctr -n k8s.io images import --base-name {REPOSITORY} {}",
        image.reference,
        image.manifest_digest,
        built.layer_bytes as f64 / (1 << 20) as f64,
        &inputs.revision[..inputs.revision.len().min(12)],
        oci::rfc3339(inputs.created),
        image.archive.display(),
        image.archive.display(),
    );
    Ok(image)
}

/// Builds the image twice from the same inputs, read afresh each time, and fails unless the
/// archives are byte for byte the same (what `cargo xtask test` checks).
pub fn build_checked() -> anyhow::Result<Image> {
    let image = build()?;
    let again = oci::build(&Inputs::gather(&build_static_binary()?)?.spec())?;
    anyhow::ensure!(
        again.manifest_digest == image.manifest_digest
            && again.archive == fs::read(&image.archive)?,
        "the image is not reproducible: {} then {}",
        image.manifest_digest,
        again.manifest_digest
    );
    eprintln!(
        "    reproducible: a second build gave {}",
        again.manifest_digest
    );
    Ok(image)
}

/// `cargo <subcommand>` building statically for [`TARGET`]. One set of flags for every static
/// build (the image's binary, the soak program, the VM suite's tests), so they share one build
/// cache; the explicit --target keeps the flags off build scripts and off the eBPF build, which
/// aya-build runs for bpfel with its own.
pub fn static_cargo(subcommand: &str) -> Command {
    let mut cargo = crate::cargo();
    cargo.arg(subcommand).args(["--target", TARGET]).env(
        format!(
            "CARGO_TARGET_{}_RUSTFLAGS",
            TARGET.to_uppercase().replace('-', "_")
        ),
        STATIC_RUSTFLAGS,
    );
    cargo
}

/// `target/x86_64-unknown-linux-gnu/release/collector`, statically linked.
pub fn build_static_binary() -> anyhow::Result<PathBuf> {
    cmd::timed(
        "build collector statically (release, glibc +crt-static, eBPF embedded)",
        static_cargo("build").args(["--release", "--package", "collector", "--bin", "collector"]),
    )?;
    let binary = PathBuf::from(format!("target/{TARGET}/release/collector"));
    let bytes = fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    anyhow::ensure!(
        !bytes.windows(b"/ld-linux".len()).any(|w| w == b"/ld-linux"),
        "{} names a dynamic loader: not static",
        binary.display()
    );
    Ok(binary)
}

/// Everything the image is made of, read from the tree and the commit.
struct Inputs {
    binary: Vec<u8>,
    ca_bundle: Vec<u8>,
    version: String,
    revision: String,
    created: i64,
}

impl Inputs {
    fn gather(binary: &Path) -> anyhow::Result<Self> {
        let stripped = stripped(binary)?;
        // The commit, from git or (a Docker context without .git) the environment.
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let revision = match from_env("COLLECTOR_REVISION") {
            Some(r) => r,
            None => git(&["rev-parse", "HEAD"])
                .context("no git checkout: set COLLECTOR_REVISION and SOURCE_DATE_EPOCH")?,
        };
        // SOURCE_DATE_EPOCH (reproducible-builds.org) or the commit's time.
        let created = match from_env("SOURCE_DATE_EPOCH") {
            Some(s) => s.parse().context("SOURCE_DATE_EPOCH is not a number")?,
            None => git(&["log", "-1", "--format=%ct"])?
                .parse()
                .context("commit time")?,
        };
        Ok(Self {
            binary: stripped,
            ca_bundle: ca_bundle()?,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision,
            created,
        })
    }

    fn spec(&self) -> oci::Spec {
        let annotations: BTreeMap<String, String> = [
            ("org.opencontainers.image.title", "collector"),
            ("org.opencontainers.image.version", self.version.as_str()),
            ("org.opencontainers.image.revision", self.revision.as_str()),
            (
                "org.opencontainers.image.description",
                "eBPF-augmented container resource collector (serve, aggregate, top)",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain([(
            "org.opencontainers.image.created".to_owned(),
            oci::rfc3339(self.created),
        )])
        .collect();
        oci::Spec {
            files: vec![
                oci::File {
                    path: BINARY_IN_IMAGE.into(),
                    mode: 0o755,
                    contents: self.binary.clone(),
                },
                oci::File {
                    path: CA_BUNDLE_IN_IMAGE.into(),
                    mode: 0o644,
                    contents: self.ca_bundle.clone(),
                },
            ],
            entrypoint: vec![BINARY_IN_IMAGE.into()],
            cmd: vec!["serve".into()],
            exposed_ports: PORTS.iter().map(|p| (*p).to_owned()).collect(),
            annotations,
            tag: self.version.clone(),
            created: self.created,
            created_by: "cargo xtask image".into(),
        }
    }
}

/// The binary without its symbol table (as the Dockerfile ships it).
fn stripped(binary: &Path) -> anyhow::Result<Vec<u8>> {
    let out = binary.with_extension("stripped");
    cmd::run(
        Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&out)
            .arg(binary),
    )
    .context("strip (binutils) is needed for the image")?;
    Ok(fs::read(&out)?)
}

/// Debian's Mozilla CA bundle, as `update-ca-certificates` writes it (every certificate of the
/// `ca-certificates` package in name order), from the package fetched into the cache.
fn ca_bundle() -> anyhow::Result<Vec<u8>> {
    let root = debian::cache_dir("collector-tools")?.join("ca-certificates");
    if !root.is_dir() {
        eprintln!("==> fetching ca-certificates (the image's trusted roots for https pushes)");
        debian::download_and_unpack("ca-certificates", &debian::Source::System, &root)?;
    }
    let dir = root.join("usr/share/ca-certificates/mozilla");
    let mut certs: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .collect();
    certs.sort();
    anyhow::ensure!(!certs.is_empty(), "no certificates in {}", dir.display());
    let mut bundle = Vec::new();
    for cert in certs {
        let mut pem = fs::read(&cert)?;
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        bundle.extend_from_slice(&pem);
    }
    Ok(bundle)
}

fn git(args: &[&str]) -> anyhow::Result<String> {
    let out = cmd::output_bytes("git", args)?;
    Ok(String::from_utf8(out)?.trim().to_owned())
}

/// Writes the image's files under `dir` (`usr/local/bin/collector`, the CA bundle), for
/// `deploy/Dockerfile`'s `FROM scratch` stage: the same files as the archive's layer.
pub fn write_rootfs(dir: &Path) -> anyhow::Result<()> {
    let inputs = Inputs::gather(Path::new(&format!("target/{TARGET}/release/collector")))?;
    for file in inputs.spec().files {
        let path = dir.join(file.path.trim_start_matches('/'));
        fs::create_dir_all(path.parent().context("file at the root")?)?;
        fs::write(&path, &file.contents)?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))?;
    }
    eprintln!("image files written under {}", dir.display());
    Ok(())
}
