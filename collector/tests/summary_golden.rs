//! The golden `/stats/summary` document: the v2-systemd-node fixture with every input the
//! collector has (CRI names and CreatedAt, the runtime's filesystems and writable layers,
//! volumes, logs and etc-hosts, system containers, network namespaces, rlimit, node fs),
//! every time fixed, rendered as the HTTP endpoint renders it and
//! - checked key by key against kubelet's JSON tags (`kubelet_schema`): no key kubelet lacks,
//!   every key kubelet always writes, `omitempty` honoured, times RFC 3339 or null, and every
//!   field kubelet can fill met at least once (a field we never render cannot hide);
//! - compared with `tests/golden/stats_summary*.json` value for value (`UPDATE_GOLDEN=1`
//!   rewrites them; review the diff).

mod kubelet_schema;

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use collector::{
    cgroupfs::CgroupMounts,
    cri::{
        NameTable,
        names::{CONTAINER_NAME_LABEL, POD_NAME_LABEL, POD_NAMESPACE_LABEL, POD_UID_LABEL},
        proto::{Container, PodSandbox, PodSandboxState},
        stats::{RuntimeFs, RuntimeFsUsage},
    },
    host_scan::{
        DiskTable, PodDisk,
        logs::{LogFiles, PodLogs},
        volumes::{Measured, Volume},
    },
    hostfs::{du::Usage, statfs::FsCapacity},
    node::NodeInfo,
    probes::{ProbeConfig, Probes},
    rate::CgroupRates,
    sampler::{NetworkReading, Sampler},
    store::Snapshot,
    summary::{self, Inputs},
};
use serde_json::Value;

const BURSTABLE: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
const GUARANTEED: &str = "9d8c7b6a-5f4e-4d3c-2b1a-0f9e8d7c6b5a";
const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
/// 2026-11-23T10:00:00Z: when every reading of the document was taken.
const READ_AT: u64 = 1_795_428_000;
const GIB: u64 = 1 << 30;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn ns(secs: u64) -> i64 {
    (secs * 1_000_000_000) as i64
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What the runtime says: two pods (the besteffort one is unknown to it), three containers.
fn names() -> NameTable {
    let sandbox = |uid: &str, name: &str, created: u64| PodSandbox {
        id: format!("sandbox-{name}"),
        created_at: ns(created),
        state: PodSandboxState::SandboxReady as i32,
        labels: labels(&[
            (POD_NAME_LABEL, name),
            (POD_NAMESPACE_LABEL, "shop"),
            (POD_UID_LABEL, uid),
        ]),
        ..Default::default()
    };
    let container = |id: &str, name: &str, created: u64| Container {
        id: id.into(),
        created_at: ns(created),
        labels: labels(&[(CONTAINER_NAME_LABEL, name)]),
        ..Default::default()
    };
    NameTable::from_runtime(
        &[
            sandbox(BURSTABLE, "web-0", READ_AT - 3600),
            sandbox(GUARANTEED, "db-0", READ_AT - 7200),
        ],
        &[
            container(A, "app", READ_AT - 3590),
            container(B, "sidecar", READ_AT - 3590),
            container(C, "postgres", READ_AT - 7190),
        ],
    )
}

fn capacity(total: u64, free: u64) -> FsCapacity {
    FsCapacity {
        capacity_bytes: total,
        free_bytes: free,
        available_bytes: free - total / 20,
        inodes: total / 16_384,
        inodes_free: free / 16_384,
        fs_type: 0xef53,
        time: at(READ_AT),
    }
}

fn runtime_fs() -> RuntimeFs {
    let usage = |used, inodes, cap: Option<FsCapacity>| RuntimeFsUsage {
        time_unix_nano: READ_AT * 1_000_000_000 - 4_000_000_000,
        used_bytes: Some(used),
        inodes_used: Some(inodes),
        mountpoint: "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs".into(),
        capacity: cap,
    };
    let disk = Some(capacity(100 * GIB, 40 * GIB));
    let image = usage(3 * GIB, 52_000, disk);
    RuntimeFs {
        image_fs: Some(image.clone()),
        container_fs: Some(image),
        writable_layers: HashMap::from([
            (A.to_owned(), usage(24_576, 12, disk)),
            // A layer on a filesystem this node cannot see: used figures only.
            (B.to_owned(), usage(8192, 3, None)),
        ]),
    }
}

fn disk() -> DiskTable {
    let measured = |bytes, inodes| Usage { bytes, inodes };
    let volume = |name: &str, plugin: &str, eph, used: Usage| Volume {
        name: name.into(),
        plugin: plugin.into(),
        local_ephemeral: eph,
        used,
        capacity: capacity(100 * GIB, 40 * GIB),
        time: at(READ_AT - 30),
    };
    let files = |used| LogFiles {
        used,
        time: at(READ_AT - 30),
    };
    let web = PodDisk {
        volumes: vec![
            volume(
                "cache",
                "kubernetes.io~empty-dir",
                true,
                measured(1 << 20, 9),
            ),
            volume(
                "pvc-7d1e",
                "kubernetes.io~csi",
                false,
                measured(2 * GIB, 100),
            ),
            volume(
                "token",
                "kubernetes.io~projected",
                false,
                measured(12_288, 7),
            ),
        ],
        etc_hosts: Some(Measured {
            used: measured(4096, 1),
            time: at(READ_AT - 30),
        }),
        logs: PodLogs {
            pod: Some(files(None)),
            containers: [
                ("app".to_owned(), files(Some(measured(40_960, 2)))),
                ("sidecar".to_owned(), files(None)),
            ]
            .into(),
        },
    };
    DiskTable {
        pods: HashMap::from([(BURSTABLE.to_owned(), web)]),
        ..Default::default()
    }
}

/// The fixture read once, its times fixed, with every input.
fn snapshot() -> Snapshot {
    let base = testdata("v2-systemd-node");
    let probes = Probes::load(&ProbeConfig {
        disabled: true,
        ..ProbeConfig::default()
    });
    let mut sampler = Sampler::new(base.join("cgroup"), &CgroupMounts::default(), probes)
        .with_proc_root(base.join("proc"));
    let mut sample = sampler.sample().unwrap();
    sample.wall = at(READ_AT);
    sample.host.node_fs = Some(capacity(100 * GIB, 40 * GIB));
    if let Some(r) = &mut sample.host.rlimit {
        r.time = at(READ_AT);
    }
    for (i, c) in sample.cgroups.iter_mut().enumerate() {
        c.read_wall = at(READ_AT);
        // First sighting: an hour ago, distinct per cgroup.
        c.created_unix_nano = Some((READ_AT - 3600 + i as u64) * 1_000_000_000);
        c.network = c.network.take().map(|n| {
            Arc::new(NetworkReading {
                interfaces: n.interfaces.clone(),
                time: at(READ_AT),
            })
        });
    }
    let rates: Vec<CgroupRates> = sample
        .cgroups
        .iter()
        .map(|_| CgroupRates {
            cgroupfs_nano_cores: Some(250_000_000),
            ..Default::default()
        })
        .collect();
    let node = NodeInfo {
        node_name: "fixture-node".into(),
        boot_time_unix_nano: (READ_AT - 86_400) * 1_000_000_000,
        ..NodeInfo::default()
    };
    let inputs = Inputs {
        names: Arc::new(names()),
        runtime_fs: Arc::new(runtime_fs()),
        disk: Arc::new(disk()),
        kubelet_cgroup: Some("/system.slice/kubelet.service".into()),
        kubelet_start: Some((READ_AT - 600) * 1_000_000_000),
        runtime_cgroup: Some("/system.slice/containerd.service".into()),
        misc_cgroup: Some("/system.slice".into()),
    };
    let (node_stats, pods) = summary::build(&sample, &rates, &node, &inputs);
    Snapshot {
        records: Default::default(),
        seq: 0,
        rates,
        sample,
        probes: Vec::new(),
        stats: sampler.stats,
        node_stats,
        pods,
        program_stats: Vec::new(),
        maps: Vec::new().into(),
        recent: Default::default(),
        disk_scan: Default::default(),
    }
}

/// Schema check, then comparison with (or, with UPDATE_GOLDEN=1, rewrite of) the golden file.
fn golden(doc: &Value, file: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    kubelet_schema::check(doc, "Summary", "$", &mut seen, &mut errors);
    assert!(
        errors.is_empty(),
        "not kubelet's JSON:\n{}",
        errors.join("\n")
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    let rendered = serde_json::to_string_pretty(doc).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    let expected: Value = serde_json::from_str(&expected).unwrap();
    assert!(
        *doc == expected,
        "{} differs from the rendered document:\n{rendered}",
        path.display()
    );
    seen
}

#[test]
fn the_full_summary_is_kubelets_document() {
    let doc = collector::http::summary_document(&snapshot(), false);
    let seen = golden(&doc, "stats_summary.json");
    // Every field kubelet can fill was exercised, except the ones it no longer fills and the
    // PVC reference, which needs the API server.
    let unfilled: BTreeSet<&str> = [
        "ContainerStats.accelerators",
        "ContainerStats.userDefinedMetrics",
        "VolumeStats.pvcRef",
    ]
    .into();
    let missing: Vec<String> = kubelet_schema::all_fields()
        .into_iter()
        .filter(|f| !seen.contains(f) && !unfilled.contains(f.as_str()))
        .filter(|f| {
            !["AcceleratorStats.", "UserDefinedMetric.", "PVCReference."]
                .iter()
                .any(|t| f.starts_with(t))
        })
        .collect();
    assert!(missing.is_empty(), "never rendered: {missing:?}");
    // Spot checks of kubelet's quirks the schema cannot see.
    let node = &doc["node"];
    assert_eq!(
        node["network"]["name"], "",
        "no eth0 on the host: zero-valued default"
    );
    assert!(node["network"].get("rxBytes").is_none());
    let web = doc["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["uid"] == BURSTABLE)
        .unwrap();
    assert_eq!(web["podRef"]["name"], "web-0");
    assert_eq!(
        web["startTime"], "2026-11-23T09:00:00Z",
        "the sandbox's CreatedAt"
    );
    assert_eq!(web["process_stats"]["process_count"], 3);
    assert_eq!(web["network"]["name"], "eth0");
}

#[test]
fn the_cpu_and_memory_summary_is_kubelets_document() {
    let doc = collector::http::summary_document(&snapshot(), true);
    golden(&doc, "stats_summary_only_cpu_and_memory.json");
    let node: Vec<&str> = doc["node"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        node,
        [
            "cpu",
            "memory",
            "nodeName",
            "startTime",
            "swap",
            "systemContainers"
        ]
    );
    for pod in doc["pods"].as_array().unwrap() {
        let mut keys: Vec<&str> = pod
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(keys, ["containers", "cpu", "memory", "podRef", "startTime"]);
    }
}
