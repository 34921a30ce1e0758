//! deploy/: every manifest parses, and the fields that decide whether the agent works on a node
//! are what the collector needs: images, ports, probes, mounts, capabilities, and flags the
//! binary actually has; and the posture is the secure one: TLS and authenticated, authorized
//! callers on every listener, no plaintext off the node, a NetworkPolicy admitting only the
//! aggregator and Prometheus, only the CRI socket and no unused host paths.

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

/// Both listeners on TLS from a mounted Secret, callers authenticated and authorized with
/// SubjectAccessReviews, and no plaintext escape hatch.
fn assert_secure_serving(args: &[String], container: &Value, volumes: &Value, secret: &str) {
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--allow-insecure-listen")),
        "plaintext off the node: {args:?}"
    );
    for flag in ["--tls-cert=", "--tls-key=", "--tls-client-ca="] {
        let arg = args
            .iter()
            .find(|a| a.starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing"));
        let path = &arg[flag.len()..];
        // The file comes from the Secret's mount.
        let mount = container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
            .unwrap_or_else(|| panic!("{path} is not in a mounted volume"));
        let volume = volumes
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(volume["secret"]["secretName"], secret, "{flag}");
    }
    assert!(args.contains(&"--authentication-token-webhook".to_owned()));
    assert!(args.contains(&"--authorization-mode=Webhook".to_owned()));
}

/// The ServiceAccount may create TokenReviews and SubjectAccessReviews.
fn assert_bound_to_auth_delegator(docs: &[Value], service_account: &str) {
    assert!(
        docs.iter().any(|d| d["kind"] == "ClusterRoleBinding"
            && d["roleRef"]["name"] == "system:auth-delegator"
            && d["subjects"][0]["kind"] == "ServiceAccount"
            && d["subjects"][0]["name"] == service_account),
        "{service_account} cannot review its callers"
    );
}

#[test]
fn certificates_issue_every_secret_the_manifests_mount() {
    let certs = documents("certificates.yaml");
    let issued: Vec<&str> = certs
        .iter()
        .filter(|d| d["kind"] == "Certificate")
        .filter_map(|d| d["spec"]["secretName"].as_str())
        .collect();
    let mut mounted = Vec::new();
    for file in ["collector.yaml", "aggregator.yaml"] {
        for d in documents(file) {
            let volumes = &d["spec"]["template"]["spec"]["volumes"];
            for v in volumes.as_sequence().into_iter().flatten() {
                if let Some(secret) = v["secret"]["secretName"].as_str() {
                    mounted.push(secret.to_owned());
                }
            }
        }
    }
    assert!(!mounted.is_empty());
    for secret in &mounted {
        assert!(issued.contains(&secret.as_str()), "nothing issues {secret}");
    }
    // The aggregator's client certificate is the user the collectors authorize.
    let client = certs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == "aggregator-client")
        .unwrap();
    assert_eq!(client["spec"]["commonName"], "collector-aggregator");
    // The collectors' certificate carries the name the aggregator checks.
    let aggregator = documents("aggregator.yaml");
    let args = strings(
        &kind(&aggregator, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"],
    );
    let name = args
        .iter()
        .find_map(|a| a.strip_prefix("--tls-server-name="))
        .unwrap();
    let collector_cert = certs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == "collector-tls")
        .unwrap();
    assert!(strings(&collector_cert["spec"]["dnsNames"]).contains(&name.to_owned()));
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
    assert_secure_serving(&args, c, &pod["volumes"], "collector-tls");
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

    // kubelet's gRPC probes cannot speak TLS: HTTPS probes of the public health paths.
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["scheme"], "HTTPS", "{probe}");
        assert_eq!(get["port"], 50080, "{probe}");
        assert!(
            get["path"] == "/healthz" || get["path"] == "/readyz",
            "{probe}"
        );
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for r in ["requests", "limits"] {
        assert!(c["resources"][r]["memory"].is_string() && c["resources"][r]["cpu"].is_string());
    }

    let sc = &c["securityContext"];
    let mut caps = strings(&sc["capabilities"]["add"]);
    caps.sort();
    assert_eq!(
        caps,
        [
            "BPF",
            "DAC_READ_SEARCH",
            "NET_ADMIN",
            "PERFMON",
            "SYS_RESOURCE"
        ]
    );
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_ne!(sc["privileged"], true);
    // bpf_stats needs CAP_SYS_ADMIN and taxes every BPF program on the node: off (the
    // default), never asked for.
    assert!(!args.iter().any(|a| a.starts_with("--bpf-stats")));

    let volumes = pod["volumes"].as_sequence().unwrap();
    for mount in c["volumeMounts"].as_sequence().unwrap() {
        let name = mount["name"].as_str().unwrap();
        assert_eq!(mount["readOnly"], true, "{name} must be read-only");
        let volume = volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        // Host paths appear where they are on the host (the collector reads host paths).
        if let Some(path) = volume["hostPath"]["path"].as_str() {
            assert_eq!(
                mount["mountPath"].as_str().unwrap(),
                path,
                "{name} mounted elsewhere"
            );
        }
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
    // Nothing the collector does not use: no bpffs (nothing is pinned), no tracefs (tp_btf and
    // perf events need none), not the runtime's whole directory (the full containerd API and
    // the shims' sockets are there).
    let host_paths: Vec<(&str, &str)> = volumes
        .iter()
        .filter_map(|v| {
            let hp = &v["hostPath"];
            Some((hp["path"].as_str()?, hp["type"].as_str().unwrap_or("")))
        })
        .collect();
    for unused in [
        "/sys/fs/bpf",
        "/sys/kernel/tracing",
        "/run/containerd",
        "/var/run/containerd",
    ] {
        assert!(
            host_paths.iter().all(|(p, _)| *p != unused),
            "{unused} is mounted but unused"
        );
    }
    // The socket --cri-socket=auto tries first is mounted, alone, as a socket.
    assert!(args.contains(&"--cri-socket=auto".to_owned()));
    let containerd = collector::cri::endpoint::DEFAULT_SOCKETS[0];
    assert!(
        host_paths.contains(&(containerd, "Socket")),
        "{containerd} is not mounted as a socket: {host_paths:?}"
    );
    assert!(mounted.iter().any(|m| m == containerd));

    // It reviews its callers' tokens and access: a token, and the auth-delegator role.
    assert_ne!(pod["automountServiceAccountToken"], false);
    assert_bound_to_auth_delegator(&docs, "collector");
    // The aggregator's client certificate (CN collector-aggregator) may read nodes/stats.
    let reader = docs
        .iter()
        .find(|d| {
            d["kind"] == "ClusterRoleBinding" && d["subjects"][0]["name"] == "collector-aggregator"
        })
        .expect("collector-aggregator bound to a reader role");
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == reader["roleRef"]["name"])
        .unwrap();
    let resources = strings(&role["rules"][0]["resources"]);
    assert!(
        resources.contains(&"nodes/stats".to_owned())
            && resources.contains(&"nodes/metrics".to_owned())
    );

    // Only the aggregator (gRPC) and Prometheus (HTTPS) reach it.
    let policy = kind(&docs, "NetworkPolicy");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        ds["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(strings(&policy["spec"]["policyTypes"]), ["Ingress"]);
    let rules = policy["spec"]["ingress"].as_sequence().unwrap();
    assert_eq!(rules.len(), 2, "two admitted sources");
    for rule in rules {
        let from = rule["from"]
            .as_sequence()
            .expect("every rule names its source");
        assert_eq!(from.len(), 1);
        let who = &from[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"];
        let ports: Vec<u64> = rule["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_u64().unwrap())
            .collect();
        match who.as_str() {
            Some("aggregator") => assert_eq!(ports, [50051]),
            Some("prometheus") => assert_eq!(ports, [50080]),
            other => panic!("unexpected source {other:?}"),
        }
    }

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
    let pod = &deployment["spec"]["template"]["spec"];
    assert_secure_serving(&args, c, &pod["volumes"], "aggregator-tls");
    // Mutual TLS towards the collectors, checking the name their certificate carries.
    for flag in [
        "--tls-ca=",
        "--tls-client-cert=",
        "--tls-client-key=",
        "--tls-server-name=",
    ] {
        assert!(args.iter().any(|a| a.starts_with(flag)), "{flag} missing");
    }
    // An APIService backend: the front proxy's CA and name, and the auth-delegator role.
    assert!(
        args.iter()
            .any(|a| a.starts_with("--requestheader-client-ca-file="))
    );
    assert!(args.contains(&"--requestheader-allowed-names=front-proxy-client".to_owned()));
    assert_bound_to_auth_delegator(&docs, "aggregator");
    let api = documents("apiservice.yaml");
    let api = kind(&api, "APIService");
    assert_eq!(api["spec"]["group"], "metrics.k8s.io");
    assert_eq!(api["spec"]["service"]["name"], "aggregator");
    let service = kind(&docs, "Service");
    let https = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["port"] == api["spec"]["service"]["port"])
        .expect("the APIService's port on the Service");
    assert_eq!(https["targetPort"], "https");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
    }
    let svc = kind(&collector, "Service");
    let expected = format!(
        "--discover={}.{}.svc.cluster.local:{}",
        svc["metadata"]["name"].as_str().unwrap(),
        svc["metadata"]["namespace"].as_str().unwrap(),
        svc["spec"]["ports"][0]["port"].as_u64().unwrap()
    );
    assert!(args.contains(&expected), "{args:?} lacks {expected}");
    assert_eq!(port(c, "grpc"), 50052);
    assert_eq!(port(c, "https"), 8443);
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
    // The same files as `cargo xtask image` on an empty base (the container test compares the
    // entrypoint, command and ports with that image's configuration).
    assert!(text.contains("RUN cargo xtask image --rootfs /rootfs"));
    assert!(text.contains("FROM scratch"));
    assert!(text.contains("COPY --from=build /rootfs/ /"));
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/collector\"]"));
    for port in ["50051", "50080", "50052", "8443"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("EXPOSE") && l.contains(port)),
            "{port}"
        );
    }
}

#[test]
fn export_overlay_pushes_with_the_token_from_its_secret() {
    let kustomization: Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy("export/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let resources = strings(&kustomization["resources"]);
    assert!(
        resources.contains(&"../collector.yaml".to_owned()),
        "{resources:?}"
    );
    assert!(resources.contains(&"secret.yaml".to_owned()));
    assert_eq!(kustomization["patches"][0]["path"], "daemonset-patch.yaml");

    let base = documents("collector.yaml");
    let base_ds = kind(&base, "DaemonSet");
    let patch = documents("export/daemonset-patch.yaml");
    let ds = kind(&patch, "DaemonSet");
    assert_eq!(ds["metadata"]["name"], base_ds["metadata"]["name"]);
    assert_eq!(
        ds["metadata"]["namespace"],
        base_ds["metadata"]["namespace"]
    );
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["name"],
        base_ds["spec"]["template"]["spec"]["containers"][0]["name"]
    );
    let args = strings(&container["args"]);
    assert_flags_exist(&args);
    // A patch replaces the args list: every base argument must still be there.
    for arg in strings(&base_ds["spec"]["template"]["spec"]["containers"][0]["args"]) {
        assert!(args.contains(&arg), "{arg} lost by the patch");
    }
    let token = args
        .iter()
        .find_map(|a| a.strip_prefix("--remote-write-bearer-token-file="))
        .expect("a token file");
    let mount = &container["volumeMounts"][0];
    assert!(token.starts_with(mount["mountPath"].as_str().unwrap()));
    let volume = &ds["spec"]["template"]["spec"]["volumes"][0];
    assert_eq!(volume["name"], mount["name"]);
    let secrets = documents("export/secret.yaml");
    let secret = kind(&secrets, "Secret");
    assert_eq!(volume["secret"]["secretName"], secret["metadata"]["name"]);
    assert_eq!(
        secret["metadata"]["namespace"],
        base_ds["metadata"]["namespace"]
    );
    let key = token.rsplit('/').next().unwrap();
    assert!(
        !secret["stringData"][key].is_null(),
        "the Secret has no {key}"
    );
}

#[test]
fn prometheus_adapter_rules_query_the_names_the_collectors_push() {
    let docs = documents("prometheus-adapter.yaml");
    let config: Value = serde_yaml::from_str(
        kind(&docs, "ConfigMap")["data"]["config.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let rules = &config["resourceRules"];
    for (resource, container, node) in [
        (
            "cpu",
            "container_cpu_usage_seconds_total",
            "node_cpu_usage_seconds_total",
        ),
        (
            "memory",
            "container_memory_working_set_bytes",
            "node_memory_working_set_bytes",
        ),
    ] {
        let rule = &rules[resource];
        assert!(rule["containerQuery"].as_str().unwrap().contains(container));
        assert!(rule["nodeQuery"].as_str().unwrap().contains(node));
        assert_eq!(rule["containerLabel"], "container");
        for label in ["node", "namespace", "pod"] {
            assert_eq!(rule["resources"]["overrides"][label]["resource"], label);
        }
    }
    assert!(!rules["window"].is_null());
}
