//! `/stats/summary`: kubelet's Summary API JSON (stats/v1alpha1), key for key as kubelet's Go
//! types marshal: camelCase names, RFC 3339 times with `null` for an unknown one (metav1.Time's
//! zero value), pointer fields left out when absent (`omitempty`), value fields always present
//! (a PSI block's `full` and `some`, an interface's `name`). `only_cpu_and_memory` trims as
//! kubelet's `GetCPUAndMemoryStats` does.

use serde_json::{Map, Value, json};

use crate::{proto, store::Snapshot, unix_time::rfc3339_seconds};

/// Inserts `key: value` when the value is present.
fn put(m: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(v) = value {
        m.insert(key.to_owned(), v.into());
    }
}

/// metav1.Time: RFC 3339 seconds, `null` when unknown.
fn time(unix_nano: u64) -> Value {
    if unix_nano == 0 {
        Value::Null
    } else {
        Value::String(rfc3339_seconds(unix_nano))
    }
}

fn timed(unix_nano: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("time".into(), time(unix_nano));
    m
}

/// kubelet's PSIStats: both lines always present (Go value fields), `total` in the kernel's µs
/// as kubelet passes it through, whatever its documentation says.
fn psi(p: &proto::PsiStats) -> Value {
    let data = |d: Option<&proto::PsiData>| {
        let d = d.copied().unwrap_or_default();
        json!({ "total": d.total_micros, "avg10": d.avg10, "avg60": d.avg60, "avg300": d.avg300 })
    };
    json!({ "full": data(p.full.as_ref()), "some": data(p.some.as_ref()) })
}

fn cpu(c: &proto::CpuStats) -> Value {
    let mut m = timed(c.time_unix_nano);
    put(&mut m, "usageNanoCores", c.usage_nano_cores);
    put(&mut m, "usageCoreNanoSeconds", c.usage_core_nano_seconds);
    put(&mut m, "psi", c.psi.as_ref().map(psi));
    Value::Object(m)
}

fn memory(mem: &proto::MemoryStats) -> Value {
    let mut m = timed(mem.time_unix_nano);
    put(&mut m, "availableBytes", mem.available_bytes);
    put(&mut m, "usageBytes", mem.usage_bytes);
    put(&mut m, "workingSetBytes", mem.working_set_bytes);
    put(&mut m, "rssBytes", mem.rss_bytes);
    put(&mut m, "pageFaults", mem.page_faults);
    put(&mut m, "majorPageFaults", mem.major_page_faults);
    put(&mut m, "psi", mem.psi.as_ref().map(psi));
    Value::Object(m)
}

fn swap(s: &proto::SwapStats) -> Value {
    let mut m = timed(s.time_unix_nano);
    put(&mut m, "swapAvailableBytes", s.swap_available_bytes);
    put(&mut m, "swapUsageBytes", s.swap_usage_bytes);
    Value::Object(m)
}

/// kubelet's IOStats has only the time and PSI (our read/write counters are proto extras).
fn io(i: &proto::IoStats) -> Value {
    let mut m = timed(i.time_unix_nano);
    put(&mut m, "psi", i.psi.as_ref().map(psi));
    Value::Object(m)
}

fn fs_into(m: &mut Map<String, Value>, f: &proto::FsStats) {
    m.insert("time".into(), time(f.time_unix_nano));
    put(m, "availableBytes", f.available_bytes);
    put(m, "capacityBytes", f.capacity_bytes);
    put(m, "usedBytes", f.used_bytes);
    put(m, "inodesFree", f.inodes_free);
    put(m, "inodes", f.inodes);
    put(m, "inodesUsed", f.inodes_used);
}

fn fs(f: &proto::FsStats) -> Value {
    let mut m = Map::new();
    fs_into(&mut m, f);
    Value::Object(m)
}

/// InterfaceStats' fields (its name always, the counters when known).
fn interface_into(m: &mut Map<String, Value>, i: Option<&proto::InterfaceStats>) {
    m.insert(
        "name".into(),
        i.map_or_else(String::new, |i| i.name.clone()).into(),
    );
    if let Some(i) = i {
        put(m, "rxBytes", i.rx_bytes);
        put(m, "rxErrors", i.rx_errors);
        put(m, "txBytes", i.tx_bytes);
        put(m, "txErrors", i.tx_errors);
    }
}

/// NetworkStats: the default interface inline (kubelet leaves it zero-valued, `name: ""`,
/// when there is no eth0), then every interface.
fn network(n: &proto::NetworkStats) -> Value {
    let mut m = timed(n.time_unix_nano);
    interface_into(&mut m, n.default_interface.as_ref());
    if !n.interfaces.is_empty() {
        let all: Vec<Value> = n
            .interfaces
            .iter()
            .map(|i| {
                let mut m = Map::new();
                interface_into(&mut m, Some(i));
                Value::Object(m)
            })
            .collect();
        m.insert("interfaces".into(), all.into());
    }
    Value::Object(m)
}

fn volume(v: &proto::VolumeStats) -> Value {
    let mut m = Map::new();
    fs_into(&mut m, &v.fs.unwrap_or_default());
    if !v.name.is_empty() {
        m.insert("name".into(), v.name.clone().into());
    }
    Value::Object(m)
}

/// A container (or a system container). In only_cpu_and_memory mode kubelet keeps cpu and
/// memory, and for system containers swap too.
fn container(c: &proto::ContainerStats, only: bool, system: bool) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), c.name.clone().into());
    m.insert("startTime".into(), time(c.start_time_unix_nano));
    put(&mut m, "cpu", c.cpu.as_ref().map(cpu));
    put(&mut m, "memory", c.memory.as_ref().map(memory));
    if !only {
        put(&mut m, "io", c.io.as_ref().map(io));
        put(&mut m, "rootfs", c.rootfs.as_ref().map(fs));
        put(&mut m, "logs", c.logs.as_ref().map(fs));
    }
    if !only || system {
        put(&mut m, "swap", c.swap.as_ref().map(swap));
    }
    Value::Object(m)
}

fn pod(p: &proto::PodStats, only: bool) -> Value {
    let mut m = Map::new();
    let r = p.pod_ref.clone().unwrap_or_default();
    // An unnamed pod (no runtime to ask) keeps an empty name, never its uid in its place.
    m.insert(
        "podRef".into(),
        json!({ "name": r.name, "namespace": r.namespace, "uid": r.uid }),
    );
    m.insert("startTime".into(), time(p.start_time_unix_nano));
    let containers: Vec<Value> = p
        .containers
        .iter()
        .map(|c| container(c, only, false))
        .collect();
    m.insert("containers".into(), containers.into());
    put(&mut m, "cpu", p.cpu.as_ref().map(cpu));
    put(&mut m, "memory", p.memory.as_ref().map(memory));
    if only {
        return Value::Object(m);
    }
    put(&mut m, "io", p.io.as_ref().map(io));
    put(&mut m, "network", p.network.as_ref().map(network));
    if !p.volume.is_empty() {
        let volumes: Vec<Value> = p.volume.iter().map(volume).collect();
        m.insert("volume".into(), volumes.into());
    }
    put(
        &mut m,
        "ephemeral-storage",
        p.ephemeral_storage.as_ref().map(fs),
    );
    if let Some(count) = p.process_stats.as_ref().and_then(|s| s.process_count) {
        m.insert("process_stats".into(), json!({ "process_count": count }));
    }
    put(&mut m, "swap", p.swap.as_ref().map(swap));
    Value::Object(m)
}

fn node(n: &proto::NodeStats, only: bool) -> Value {
    let mut m = Map::new();
    m.insert("nodeName".into(), n.node_name.clone().into());
    if !n.system_containers.is_empty() {
        let system: Vec<Value> = n
            .system_containers
            .iter()
            .map(|c| container(c, only, true))
            .collect();
        m.insert("systemContainers".into(), system.into());
    }
    m.insert("startTime".into(), time(n.start_time_unix_nano));
    put(&mut m, "cpu", n.cpu.as_ref().map(cpu));
    put(&mut m, "memory", n.memory.as_ref().map(memory));
    if !only {
        put(&mut m, "io", n.io.as_ref().map(io));
        put(&mut m, "network", n.network.as_ref().map(network));
        put(&mut m, "fs", n.fs.as_ref().map(fs));
        put(
            &mut m,
            "runtime",
            n.runtime.as_ref().map(|r| {
                let mut rt = Map::new();
                put(&mut rt, "imageFs", r.image_fs.as_ref().map(fs));
                put(&mut rt, "containerFs", r.container_fs.as_ref().map(fs));
                Value::Object(rt)
            }),
        );
        put(
            &mut m,
            "rlimit",
            n.rlimit.as_ref().map(|r| {
                let mut rl = timed(r.time_unix_nano);
                put(&mut rl, "maxpid", r.max_pid);
                put(&mut rl, "curproc", r.cur_proc);
                Value::Object(rl)
            }),
        );
    }
    // kubelet keeps the node's swap in only_cpu_and_memory mode too.
    put(&mut m, "swap", n.swap.as_ref().map(swap));
    Value::Object(m)
}

/// The Summary document of a snapshot.
pub fn render(s: &Snapshot, only_cpu_and_memory: bool) -> Value {
    let pods: Vec<Value> = s.pods.iter().map(|p| pod(p, only_cpu_and_memory)).collect();
    json!({ "node": node(&s.node_stats, only_cpu_and_memory), "pods": pods })
}

/// kubelet trims only when the parameter is given once and is exactly "true" (any other value,
/// "1" or "TRUE" included, returns the full summary).
pub fn only_cpu_and_memory<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    let mut values = values.into_iter();
    matches!((values.next(), values.next()), (Some("true"), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exactly_one_true_trims() {
        assert!(only_cpu_and_memory(["true"]));
        for values in [
            &[][..],
            &["1"],
            &["TRUE"],
            &["True"],
            &["yes"],
            &["true", "true"],
        ] {
            assert!(!only_cpu_and_memory(values.iter().copied()), "{values:?}");
        }
    }

    #[test]
    fn zero_time_is_null() {
        assert_eq!(time(0), Value::Null);
        assert_eq!(
            time(1_700_000_000_000_000_000),
            json!("2023-11-14T22:13:20Z")
        );
    }

    #[test]
    fn psi_has_both_lines_with_microsecond_totals() {
        let p = proto::PsiStats {
            some: Some(proto::PsiData {
                total_micros: 123_456,
                avg10: 0.5,
                avg60: 0.25,
                avg300: 0.1,
            }),
            full: None,
        };
        assert_eq!(
            psi(&p),
            json!({
                "full": {"total": 0, "avg10": 0.0, "avg60": 0.0, "avg300": 0.0},
                "some": {"total": 123_456, "avg10": 0.5, "avg60": 0.25, "avg300": 0.1},
            })
        );
    }
}
