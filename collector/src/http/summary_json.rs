//! `/stats/summary`: kubelet's Summary API JSON (stats/v1alpha1), camelCase names, RFC 3339
//! times, absent fields left out; `only_cpu_and_memory=true` trims it as the kubelet does.

use serde_json::{Map, Value, json};

use super::resource::{pod_name, pod_namespace};
use crate::{proto, store::Snapshot, unix_time::rfc3339_seconds};

/// Inserts `key: value` when the value is present.
fn put(m: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(v) = value {
        m.insert(key.to_owned(), v.into());
    }
}

fn time(unix_nano: u64) -> Value {
    Value::String(rfc3339_seconds(unix_nano))
}

fn cpu(c: &proto::CpuStats) -> Value {
    let mut m = Map::new();
    m.insert("time".into(), time(c.time_unix_nano));
    put(&mut m, "usageNanoCores", c.usage_nano_cores);
    put(&mut m, "usageCoreNanoSeconds", c.usage_core_nano_seconds);
    Value::Object(m)
}

fn memory(mem: &proto::MemoryStats) -> Value {
    let mut m = Map::new();
    m.insert("time".into(), time(mem.time_unix_nano));
    put(&mut m, "availableBytes", mem.available_bytes);
    put(&mut m, "usageBytes", mem.usage_bytes);
    put(&mut m, "workingSetBytes", mem.working_set_bytes);
    put(&mut m, "rssBytes", mem.rss_bytes);
    put(&mut m, "pageFaults", mem.page_faults);
    put(&mut m, "majorPageFaults", mem.major_page_faults);
    Value::Object(m)
}

fn swap(s: &proto::SwapStats) -> Value {
    let mut m = Map::new();
    m.insert("time".into(), time(s.time_unix_nano));
    put(&mut m, "swapAvailableBytes", s.swap_available_bytes);
    put(&mut m, "swapUsageBytes", s.swap_usage_bytes);
    Value::Object(m)
}

/// cpu, memory and (unless `only_cpu_and_memory`) swap and process stats of one level.
fn usage(
    m: &mut Map<String, Value>,
    only_cpu_and_memory: bool,
    c: Option<&proto::CpuStats>,
    mem: Option<&proto::MemoryStats>,
    s: Option<&proto::SwapStats>,
) {
    put(m, "cpu", c.map(cpu));
    put(m, "memory", mem.map(memory));
    if !only_cpu_and_memory {
        put(m, "swap", s.map(swap));
    }
}

fn container(c: &proto::ContainerStats, only: bool) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), c.name.clone().into());
    m.insert("startTime".into(), time(c.start_time_unix_nano));
    usage(
        &mut m,
        only,
        c.cpu.as_ref(),
        c.memory.as_ref(),
        c.swap.as_ref(),
    );
    Value::Object(m)
}

fn pod(p: &proto::PodStats, only: bool) -> Value {
    let mut m = Map::new();
    let uid = p.pod_ref.as_ref().map_or("", |r| r.uid.as_str());
    m.insert(
        "podRef".into(),
        json!({ "name": pod_name(p), "namespace": pod_namespace(p), "uid": uid }),
    );
    m.insert("startTime".into(), time(p.start_time_unix_nano));
    let containers: Vec<Value> = p.containers.iter().map(|c| container(c, only)).collect();
    m.insert("containers".into(), containers.into());
    usage(
        &mut m,
        only,
        p.cpu.as_ref(),
        p.memory.as_ref(),
        p.swap.as_ref(),
    );
    if !only && let Some(count) = p.process_stats.as_ref().and_then(|s| s.process_count) {
        m.insert("process_stats".into(), json!({ "process_count": count }));
    }
    Value::Object(m)
}

pub fn render(s: &Snapshot, only_cpu_and_memory: bool) -> Value {
    let n = &s.node_stats;
    let mut node = Map::new();
    node.insert("nodeName".into(), n.node_name.clone().into());
    node.insert("startTime".into(), time(n.start_time_unix_nano));
    usage(
        &mut node,
        only_cpu_and_memory,
        n.cpu.as_ref(),
        n.memory.as_ref(),
        n.swap.as_ref(),
    );
    let pods: Vec<Value> = s.pods.iter().map(|p| pod(p, only_cpu_and_memory)).collect();
    json!({ "node": node, "pods": pods })
}

/// kubelet parses the flag with Go's strconv.ParseBool.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}
