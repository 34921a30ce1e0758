//! deploy/: every manifest parses, and the fields that decide whether the agent works on a node
//! are what the collector needs: images, ports, probes, mounts, capabilities, and flags the
//! binary actually has.

use std::{path::PathBuf, process::Command};

use serde_yaml::Value;

fn deploy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

fn documents(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy(name)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Every `--flag` of `args` is one the binary's `SUBCOMMAND --help` documents.
fn assert_flags_exist(args: &[String]) {
    let help = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args([args[0].as_str(), "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in &args[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} "))
                || help.contains(&format!("{flag}\n"))
                || help.contains(&format!("{flag} <")),
            "{flag} is not a flag of `collector {}`",
            args[0]
        );
    }
}

fn port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no port {name}"))
}

#[test]
fn daemonset_runs_the_agent_on_every_node_with_what_it_needs() {
    let docs = documents("collector.yaml");
    assert_eq!(
        kind(&docs, "Namespace")["metadata"]["name"],
        "collector-system"
    );
    let sa = kind(&docs, "ServiceAccount");
    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(pod["hostPID"], true);
    let tolerations = pod["tolerations"].as_sequence().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none())
    );
    let c = &pod["containers"][0];
    let image = c["image"].as_str().unwrap();
    assert!(
        image.contains(':') && !image.ends_with(":latest"),
        "pin the image: {image}"
    );

    let args = strings(&c["args"]);
    assert_eq!(args[0], "serve");
    assert_flags_exist(&args);
    assert!(args.contains(&"--listen=0.0.0.0:50051".to_owned()));
    assert!(args.contains(&"--http-listen=0.0.0.0:50080".to_owned()));
    assert_eq!(port(c, "grpc"), 50051);
    assert_eq!(port(c, "http"), 50080);
    assert!(
        c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "NODE_NAME"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")
    );

    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["grpc"]["port"], 50051, "{probe}");
    }
    assert_eq!(
        c["readinessProbe"]["grpc"]["service"],
        "collector.v1.Collector"
    );
    for r in ["requests", "limits"] {
        assert!(c["resources"][r]["memory"].is_string() && c["resources"][r]["cpu"].is_string());
    }

    let sc = &c["securityContext"];
    let mut caps = strings(&sc["capabilities"]["add"]);
    caps.sort();
    assert_eq!(caps, ["BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_RESOURCE"]);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_ne!(sc["privileged"], true);
    // Without CAP_SYS_ADMIN the collector cannot turn bpf_stats on, so it must not try.
    assert!(args.contains(&"--no-bpf-stats".to_owned()));

    let volumes = pod["volumes"].as_sequence().unwrap();
    let host_path = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or_else(|| panic!("no hostPath volume {name}"))
            .to_owned()
    };
    for mount in c["volumeMounts"].as_sequence().unwrap() {
        let name = mount["name"].as_str().unwrap();
        assert_eq!(mount["readOnly"], true, "{name} must be read-only");
        assert_eq!(
            mount["mountPath"].as_str().unwrap(),
            host_path(name),
            "{name} mounted elsewhere"
        );
    }
    let mounted: Vec<String> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap().to_owned())
        .collect();
    for path in [
        "/sys/fs/cgroup",
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/fs/bpf",
        "/run/containerd",
        "/var/lib/kubelet",
        "/var/log/pods",
        "/var/lib/containerd",
    ] {
        assert!(mounted.iter().any(|m| m == path), "{path} not mounted");
    }
    // Volumes kubelet mounts after the collector started reach it too.
    let kubelet = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/var/lib/kubelet")
        .unwrap();
    assert_eq!(kubelet["mountPropagation"], "HostToContainer");
    // The socket --cri-socket=auto tries first is inside a mounted directory.
    assert!(args.contains(&"--cri-socket=auto".to_owned()));
    let containerd = std::path::Path::new(collector::cri::endpoint::DEFAULT_SOCKETS[0]);
    assert!(
        mounted
            .iter()
            .any(|m| containerd.parent() == Some(std::path::Path::new(m))),
        "{} is not reachable in the pod",
        containerd.display()
    );

    let svc = kind(&docs, "Service");
    assert_eq!(
        svc["spec"]["clusterIP"], "None",
        "the aggregator needs one record per pod"
    );
    assert_eq!(
        svc["spec"]["selector"],
        ds["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn aggregator_discovers_the_collectors_through_the_headless_service() {
    let collector = documents("collector.yaml");
    let docs = documents("aggregator.yaml");
    let deployment = kind(&docs, "Deployment");
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    let daemon_image =
        &kind(&collector, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(&c["image"], daemon_image, "one image for both");
    let args = strings(&c["args"]);
    assert_eq!(args[0], "aggregate");
    assert_flags_exist(&args);
    let svc = kind(&collector, "Service");
    let expected = format!(
        "--discover={}.{}.svc.cluster.local:{}",
        svc["metadata"]["name"].as_str().unwrap(),
        svc["metadata"]["namespace"].as_str().unwrap(),
        svc["spec"]["ports"][0]["port"].as_u64().unwrap()
    );
    assert!(args.contains(&expected), "{args:?} lacks {expected}");
    assert_eq!(port(c, "grpc"), 50052);
    assert_eq!(port(c, "http"), 8080);
    assert_eq!(
        c["readinessProbe"]["grpc"]["service"],
        "collector.v1.Aggregator"
    );
    let service = kind(&docs, "Service");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn dockerfile_builds_in_stages_and_runs_the_binary() {
    let text = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage build expected");
    assert!(text.contains("cargo xtask build --release"));
    assert!(
        text.contains("COPY --from=build /src/target/release/collector /usr/local/bin/collector")
    );
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/collector\"]"));
    for port in ["50051", "50080", "50052", "8080"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("EXPOSE") && l.contains(port)),
            "{port}"
        );
    }
}
