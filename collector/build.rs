//! Builds the eBPF object (collector-ebpf, with nightly + bpf-linker via aya-build) and compiles
//! the protobuf API, the vendored CRI, remote-write and OTLP protos without a system protoc
//! (protox).

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use prost::Message as _;

fn main() -> anyhow::Result<()> {
    build_proto()?;
    build_ebpf()
}

fn build_proto() -> anyhow::Result<()> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = [
        "collector/v1/collector.proto",
        "collector/v1/summary.proto",
        "collector/v1/aggregator.proto",
    ]
    .map(|f| proto_root.join(f));
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let fds =
        protox::compile(&files, [&proto_root]).context("compiling the collector.v1 protos")?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("collector_v1_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .compile_fds(fds)
        .context("generating Rust code for collector.proto")?;
    // The vendored Kubernetes CRI API: only the RuntimeService client (we are never a runtime).
    let cri = protox::compile([proto_root.join("cri/runtime/v1/api.proto")], [&proto_root])
        .context("compiling the vendored CRI runtime.v1 proto")?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(cri)
        .context("generating the CRI client")?;
    // The push exporters' wire formats: Prometheus remote-write 1.0 (messages only) and the
    // OTLP metrics service, both vendored unmodified.
    let prompb = protox::compile(
        [proto_root.join("prompb/remote.proto")],
        [proto_root.join("prompb")],
    )
    .context("compiling the vendored Prometheus remote-write protos")?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_fds(prompb)
        .context("generating the remote-write messages")?;
    let otlp = protox::compile(
        [proto_root.join("otlp/opentelemetry/proto/collector/metrics/v1/metrics_service.proto")],
        [proto_root.join("otlp")],
    )
    .context("compiling the vendored OTLP metrics protos")?;
    // The server too: the gRPC path is tested against an in-process receiver.
    tonic_prost_build::configure()
        .compile_fds(otlp)
        .context("generating the OTLP metrics client")?;
    Ok(())
}

/// The binaries of collector-ebpf, one object per probe family (`collector-ebpf/src/bin/`).
const EBPF_OBJECTS: [&str; 5] = ["sched", "sched_slot", "oom", "lifecycle", "net"];

fn build_ebpf() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var_os("AYA_BUILD_SKIP").is_some() {
        // User space only (fuzzing, docs): empty objects, which the collector reports as
        // "built without eBPF" for every probe instead of failing to compile.
        let out_dir = PathBuf::from(env::var("OUT_DIR")?);
        for object in EBPF_OBJECTS {
            fs::write(out_dir.join(object), [])?;
        }
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "collector-ebpf")
        .ok_or_else(|| anyhow!("collector-ebpf package not found in the workspace"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask prereqs` (nightly + rust-src + \
         bpf-linker), or set AYA_BUILD_SKIP=1 to build user space only",
    )
}
