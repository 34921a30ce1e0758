//! An OCI image layout written as one archive, reproducibly: the typed image documents of
//! `oci-spec` (serialized with sorted keys, since some of its maps are hash maps), a layer written
//! by the `tar` crate from explicit headers (owner root, fixed mode and mtime, entries in path
//! order) and gzipped by `flate2` (no name or time in its header), and the outer archive written
//! the same way. The same files and time give the same bytes, hence the same digests.

use std::{collections::BTreeMap, io::Write as _, path::Path};

use anyhow::Context as _;
use flate2::{Compression, write::GzEncoder};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, RootFsBuilder, Sha256Digest,
};
use sha2::{Digest as _, Sha256};

/// A file of the image's single layer.
pub struct File {
    /// Absolute path inside the image.
    pub path: String,
    pub mode: u32,
    pub contents: Vec<u8>,
}

/// What the image runs and says about itself.
pub struct Spec {
    pub files: Vec<File>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub exposed_ports: Vec<String>,
    /// OCI labels and manifest annotations (`org.opencontainers.image.*`).
    pub annotations: BTreeMap<String, String>,
    /// The tag (`org.opencontainers.image.ref.name`) in the archive's index.
    pub tag: String,
    /// Seconds since the epoch: every file's mtime and the image's creation time.
    pub created: i64,
    pub created_by: String,
}

pub struct Built {
    /// The OCI image layout archive.
    pub archive: Vec<u8>,
    /// The manifest's digest (`sha256:…`): the image's identity in a registry or a runtime.
    pub manifest_digest: String,
    pub layer_bytes: usize,
}

/// Builds the image archive of `spec`.
pub fn build(spec: &Spec) -> anyhow::Result<Built> {
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let layer_tar = layer(&spec.files, spec.created)?;
    let diff_id = sha256(&layer_tar);
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&layer_tar)?;
    let layer_gz = gz.finish()?;
    let layer_descriptor = descriptor(MediaType::ImageLayerGzip, &layer_gz)?;
    let layer_bytes = layer_gz.len();
    blobs.insert(sha256(&layer_gz), layer_gz);

    let created = rfc3339(spec.created);
    let labels: std::collections::HashMap<String, String> = spec
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let config = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .entrypoint(spec.entrypoint.clone())
                .cmd(spec.cmd.clone())
                .exposed_ports(spec.exposed_ports.clone())
                .labels(labels.clone())
                .build()?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![format!("sha256:{diff_id}")])
                .build()?,
        )
        .history(vec![
            HistoryBuilder::default()
                .created(created)
                .created_by(spec.created_by.clone())
                .build()?,
        ])
        .build()?;
    let config = canonical_json(&config)?;
    let config_descriptor = descriptor(MediaType::ImageConfig, &config)?;
    blobs.insert(sha256(&config), config);

    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_descriptor)
        .layers(vec![layer_descriptor])
        .annotations(labels)
        .build()?;
    let manifest = canonical_json(&manifest)?;
    let mut manifest_descriptor = descriptor(MediaType::ImageManifest, &manifest)?;
    let manifest_digest = format!("sha256:{}", sha256(&manifest));
    blobs.insert(sha256(&manifest), manifest);
    manifest_descriptor.set_annotations(Some(
        [(
            "org.opencontainers.image.ref.name".to_owned(),
            spec.tag.clone(),
        )]
        .into(),
    ));

    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_descriptor])
        .build()?;
    let layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()?;

    let mut archive = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, bytes: &[u8]| -> anyhow::Result<()> {
        let mut header = header(tar::EntryType::Regular, mode, bytes.len(), spec.created);
        archive
            .append_data(&mut header, path, bytes)
            .with_context(|| format!("adding {path}"))
    };
    add("oci-layout", 0o644, &canonical_json(&layout)?)?;
    add("index.json", 0o644, &canonical_json(&index)?)?;
    for (hex, bytes) in &blobs {
        add(&format!("blobs/sha256/{hex}"), 0o644, bytes)?;
    }
    Ok(Built {
        archive: archive.into_inner()?,
        manifest_digest,
        layer_bytes,
    })
}

/// The layer: every file with its parent directories, in path order, all owned by root.
fn layer(files: &[File], mtime: i64) -> anyhow::Result<Vec<u8>> {
    let mut entries: BTreeMap<String, Option<&File>> = BTreeMap::new();
    for file in files {
        let path = file
            .path
            .strip_prefix('/')
            .with_context(|| format!("{}: image paths are absolute", file.path))?;
        let mut dir = Path::new(path).parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            entries.insert(format!("{}/", d.display()), None);
            dir = d.parent();
        }
        anyhow::ensure!(
            entries.insert(path.to_owned(), Some(file)).is_none(),
            "{path} twice in the image"
        );
    }
    let mut tar = tar::Builder::new(Vec::new());
    for (path, file) in entries {
        match file {
            None => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0, mtime);
                tar.append_data(&mut h, &path, std::io::empty())?;
            }
            Some(f) => {
                let mut h = header(tar::EntryType::Regular, f.mode, f.contents.len(), mtime);
                tar.append_data(&mut h, &path, f.contents.as_slice())?;
            }
        }
    }
    Ok(tar.into_inner()?)
}

fn header(kind: tar::EntryType, mode: u32, size: usize, mtime: i64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime.max(0) as u64);
    h
}

fn descriptor(media_type: MediaType, bytes: &[u8]) -> anyhow::Result<Descriptor> {
    let digest: Sha256Digest = sha256(bytes).parse()?;
    Ok(Descriptor::new(media_type, bytes.len() as u64, digest))
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// JSON with every object's keys sorted, so hash-map fields serialize the same every time.
fn canonical_json(value: &impl serde::Serialize) -> anyhow::Result<Vec<u8>> {
    fn sort(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let sorted: BTreeMap<String, serde_json::Value> =
                    map.into_iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    Ok(serde_json::to_vec(&sort(serde_json::to_value(value)?))?)
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (civil-from-days, proleptic Gregorian).
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(created: i64, contents: &[u8]) -> Spec {
        Spec {
            files: vec![
                File {
                    path: "/usr/local/bin/tool".into(),
                    mode: 0o755,
                    contents: contents.to_vec(),
                },
                File {
                    path: "/etc/ssl/certs/ca-certificates.crt".into(),
                    mode: 0o644,
                    contents: b"certs".to_vec(),
                },
            ],
            entrypoint: vec!["/usr/local/bin/tool".into()],
            cmd: vec!["serve".into()],
            exposed_ports: vec!["50051/tcp".into(), "50080/tcp".into()],
            annotations: [
                ("org.opencontainers.image.revision", "abc"),
                ("org.opencontainers.image.version", "1"),
                ("org.opencontainers.image.source", "here"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            tag: "1".into(),
            created,
            created_by: "test".into(),
        }
    }

    #[test]
    fn same_inputs_same_bytes_and_digest() {
        let a = build(&spec(1_700_000_000, b"binary")).unwrap();
        let b = build(&spec(1_700_000_000, b"binary")).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert!(a.archive == b.archive);
        let other = build(&spec(1_700_000_000, b"binary2")).unwrap();
        assert_ne!(a.manifest_digest, other.manifest_digest);
        let later = build(&spec(1_700_000_001, b"binary")).unwrap();
        assert_ne!(a.manifest_digest, later.manifest_digest);
    }

    #[test]
    fn layer_lists_parents_first_owned_by_root() {
        let tar = layer(&spec(0, b"x").files, 5).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, u32, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/ssl/",
                "etc/ssl/certs/",
                "etc/ssl/certs/ca-certificates.crt",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/tool"
            ]
        );
        assert!(entries.iter().all(|e| e.2 == 0 && e.3 == 5));
        assert_eq!(entries[7].1, 0o755);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
