//! kubelet's Summary JSON, type by type, field by field, as its Go types marshal it: the JSON
//! tags of `k8s.io/kubelet/pkg/apis/stats/v1alpha1/types.go` (kubernetes/kubelet at 63b3249,
//! 2026-07-23), with `omitempty` and inlined structs expanded. A document is checked against it
//! key by key, so a field name of ours can never drift from kubelet's.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeSet;

use serde_json::Value;

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// metav1.Time: RFC 3339 seconds, or null for the zero time.
    Time,
    Str,
    U64,
    I64,
    F64,
    Obj(&'static str),
    List(&'static str),
    Map,
}

use Kind::*;

/// (JSON key, kind, omitempty) of every field of `ty`, inlined structs expanded.
pub fn fields(ty: &str) -> Vec<(&'static str, Kind, bool)> {
    let fs_stats = vec![
        ("time", Time, false),
        ("availableBytes", U64, true),
        ("capacityBytes", U64, true),
        ("usedBytes", U64, true),
        ("inodesFree", U64, true),
        ("inodes", U64, true),
        ("inodesUsed", U64, true),
    ];
    let interface = vec![
        ("name", Str, false),
        ("rxBytes", U64, true),
        ("rxErrors", U64, true),
        ("txBytes", U64, true),
        ("txErrors", U64, true),
    ];
    match ty {
        "Summary" => vec![
            ("node", Obj("NodeStats"), false),
            ("pods", List("PodStats"), false),
        ],
        "NodeStats" => vec![
            ("nodeName", Str, false),
            ("systemContainers", List("ContainerStats"), true),
            ("startTime", Time, false),
            ("cpu", Obj("CPUStats"), true),
            ("memory", Obj("MemoryStats"), true),
            ("io", Obj("IOStats"), true),
            ("network", Obj("NetworkStats"), true),
            ("fs", Obj("FsStats"), true),
            ("runtime", Obj("RuntimeStats"), true),
            ("rlimit", Obj("RlimitStats"), true),
            ("swap", Obj("SwapStats"), true),
        ],
        "RlimitStats" => vec![
            ("time", Time, false),
            ("maxpid", I64, true),
            ("curproc", I64, true),
        ],
        "RuntimeStats" => vec![
            ("imageFs", Obj("FsStats"), true),
            ("containerFs", Obj("FsStats"), true),
        ],
        "ProcessStats" => vec![("process_count", U64, true)],
        "PodStats" => vec![
            ("podRef", Obj("PodReference"), false),
            ("startTime", Time, false),
            ("containers", List("ContainerStats"), false),
            ("cpu", Obj("CPUStats"), true),
            ("memory", Obj("MemoryStats"), true),
            ("io", Obj("IOStats"), true),
            ("network", Obj("NetworkStats"), true),
            ("volume", List("VolumeStats"), true),
            ("ephemeral-storage", Obj("FsStats"), true),
            ("process_stats", Obj("ProcessStats"), true),
            ("swap", Obj("SwapStats"), true),
        ],
        "ContainerStats" => vec![
            ("name", Str, false),
            ("startTime", Time, false),
            ("cpu", Obj("CPUStats"), true),
            ("memory", Obj("MemoryStats"), true),
            ("io", Obj("IOStats"), true),
            ("accelerators", List("AcceleratorStats"), true),
            ("rootfs", Obj("FsStats"), true),
            ("logs", Obj("FsStats"), true),
            ("userDefinedMetrics", List("UserDefinedMetric"), true),
            ("swap", Obj("SwapStats"), true),
        ],
        "PodReference" => vec![
            ("name", Str, false),
            ("namespace", Str, false),
            ("uid", Str, false),
        ],
        "InterfaceStats" => interface,
        "NetworkStats" => {
            let mut f = vec![("time", Time, false)];
            f.extend(interface);
            f.push(("interfaces", List("InterfaceStats"), true));
            f
        }
        "CPUStats" => vec![
            ("time", Time, false),
            ("usageNanoCores", U64, true),
            ("usageCoreNanoSeconds", U64, true),
            ("psi", Obj("PSIStats"), true),
        ],
        "MemoryStats" => vec![
            ("time", Time, false),
            ("availableBytes", U64, true),
            ("usageBytes", U64, true),
            ("workingSetBytes", U64, true),
            ("rssBytes", U64, true),
            ("pageFaults", U64, true),
            ("majorPageFaults", U64, true),
            ("psi", Obj("PSIStats"), true),
        ],
        "IOStats" => vec![("time", Time, false), ("psi", Obj("PSIStats"), true)],
        "PSIStats" => vec![
            ("full", Obj("PSIData"), false),
            ("some", Obj("PSIData"), false),
        ],
        "PSIData" => vec![
            ("total", U64, false),
            ("avg10", F64, false),
            ("avg60", F64, false),
            ("avg300", F64, false),
        ],
        "SwapStats" => vec![
            ("time", Time, false),
            ("swapAvailableBytes", U64, true),
            ("swapUsageBytes", U64, true),
        ],
        "AcceleratorStats" => vec![
            ("make", Str, false),
            ("model", Str, false),
            ("id", Str, false),
            ("memoryTotal", U64, false),
            ("memoryUsed", U64, false),
            ("dutyCycle", U64, false),
        ],
        "VolumeStats" => {
            let mut f = fs_stats;
            f.push(("name", Str, true));
            f.push(("pvcRef", Obj("PVCReference"), true));
            f
        }
        "PVCReference" => vec![("name", Str, false), ("namespace", Str, false)],
        "FsStats" => fs_stats,
        "UserDefinedMetric" => vec![
            ("name", Str, false),
            ("type", Str, false),
            ("units", Str, false),
            ("labels", Map, true),
            ("time", Time, false),
            ("value", F64, false),
        ],
        other => panic!("no kubelet type {other}"),
    }
}

/// Checks `v` as a `ty`; every problem as "path: what". `seen` collects each "Type.key" met.
pub fn check(
    v: &Value,
    ty: &str,
    path: &str,
    seen: &mut BTreeSet<String>,
    errors: &mut Vec<String>,
) {
    let Some(obj) = v.as_object() else {
        errors.push(format!("{path}: a {ty} must be an object, not {v}"));
        return;
    };
    let fields = fields(ty);
    for key in obj.keys() {
        if !fields.iter().any(|(k, _, _)| k == key) {
            errors.push(format!("{path}.{key}: kubelet's {ty} has no such field"));
        }
    }
    for (key, kind, omitempty) in fields {
        let at = format!("{path}.{key}");
        let Some(value) = obj.get(key) else {
            if !omitempty {
                errors.push(format!("{at}: kubelet always writes it (no omitempty)"));
            }
            continue;
        };
        seen.insert(format!("{ty}.{key}"));
        if omitempty && empty(value, kind) {
            errors.push(format!("{at}: kubelet omits it when empty, got {value}"));
            continue;
        }
        check_kind(value, kind, &at, seen, errors);
    }
}

/// What Go's omitempty leaves out: nil pointers (null), empty strings, slices and maps.
fn empty(v: &Value, kind: Kind) -> bool {
    match (v, kind) {
        (Value::Null, _) => true,
        (Value::String(s), Str) => s.is_empty(),
        (Value::Array(a), List(_)) => a.is_empty(),
        (Value::Object(m), Map) => m.is_empty(),
        _ => false,
    }
}

fn check_kind(
    v: &Value,
    kind: Kind,
    at: &str,
    seen: &mut BTreeSet<String>,
    errors: &mut Vec<String>,
) {
    let ok = match kind {
        Time => v.is_null() || v.as_str().is_some_and(rfc3339_seconds),
        Str => v.is_string(),
        U64 => v.is_u64(),
        I64 => v.is_i64() || v.is_u64(),
        F64 => v.is_number(),
        Map => v.is_object(),
        Obj(ty) => {
            check(v, ty, at, seen, errors);
            true
        }
        List(ty) => match v.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(item, ty, &format!("{at}[{i}]"), seen, errors);
                }
                true
            }
            None => false,
        },
    };
    if !ok {
        errors.push(format!("{at}: not a {kind:?}: {v}"));
    }
}

/// metav1.Time's form: "2006-01-02T15:04:05Z".
fn rfc3339_seconds(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b[19] == b'Z'
        && b[10] == b'T'
        && [4, 7].iter().all(|&i| b[i] == b'-')
        && [13, 16].iter().all(|&i| b[i] == b':')
        && b.iter()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19].contains(&i) || c.is_ascii_digit())
}

/// Every "Type.key" kubelet's Summary can hold, for coverage: the fields a document never
/// exercised are this minus its `seen`.
pub fn all_fields() -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let mut pending = vec!["Summary"];
    let mut done = BTreeSet::new();
    while let Some(ty) = pending.pop() {
        if !done.insert(ty) {
            continue;
        }
        for (key, kind, _) in fields(ty) {
            all.insert(format!("{ty}.{key}"));
            if let Obj(t) | List(t) = kind {
                pending.push(t);
            }
        }
    }
    all
}
