//! `top nodes` and `top pods`: kubectl-style tables (CPU in millicores, memory in Mi) from a
//! collector's Watch stream or an aggregator's cluster API.

use std::{collections::HashMap, fmt::Write as _};

use anyhow::Context as _;
use tonic::transport::Channel;

use super::{SortBy, TopConfig, View, interval_ms, show};
use crate::proto::{
    self, ListNodeMetricsRequest, ListPodMetricsRequest, WatchRequest,
    aggregator_client::AggregatorClient, collector_client::CollectorClient,
};
use crate::server::chunk;

/// One line of a table; `None` is printed as `<unknown>`, like kubectl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub namespace: String,
    pub name: String,
    pub cpu_nano_cores: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// For the percentages of `top nodes`.
    pub cpus: Option<u32>,
    pub memory_capacity: Option<u64>,
    pub stale: bool,
}

fn millicores(n: Option<u64>) -> String {
    n.map_or_else(|| "<unknown>".into(), |n| format!("{}m", n / 1_000_000))
}

fn mebibytes(b: Option<u64>) -> String {
    b.map_or_else(|| "<unknown>".into(), |b| format!("{}Mi", b >> 20))
}

fn percent(part: Option<u64>, whole: Option<u64>) -> String {
    match (part, whole) {
        (Some(p), Some(w)) if w > 0 => format!("{}%", u128::from(p) * 100 / u128::from(w)),
        _ => "<unknown>".into(),
    }
}

fn sort(rows: &mut [Row], by: SortBy) {
    match by {
        SortBy::Cpu => rows.sort_by_key(|r| std::cmp::Reverse(r.cpu_nano_cores)),
        SortBy::Memory => rows.sort_by_key(|r| std::cmp::Reverse(r.memory_bytes)),
        SortBy::Name => rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))),
    }
}

pub fn render_nodes(mut rows: Vec<Row>, by: SortBy, limit: usize) -> String {
    sort(&mut rows, by);
    let width = rows
        .iter()
        .map(|r| r.name.len() + 8)
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!(
        "{:<width$}   {:<10}   {:<6}   {:<13}   {:<9}\n",
        "NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"
    );
    for r in rows.into_iter().take(limit) {
        let name = if r.stale {
            format!("{} (stale)", r.name)
        } else {
            r.name.clone()
        };
        let cpu_capacity = r.cpus.map(|c| u64::from(c) * 1_000_000_000);
        let _ = writeln!(
            out,
            "{name:<width$}   {:<10}   {:<6}   {:<13}   {:<9}",
            millicores(r.cpu_nano_cores),
            percent(r.cpu_nano_cores, cpu_capacity),
            mebibytes(r.memory_bytes),
            percent(r.memory_bytes, r.memory_capacity),
        );
    }
    out
}

pub fn render_pods(mut rows: Vec<Row>, by: SortBy, limit: usize) -> String {
    sort(&mut rows, by);
    let ns_width = rows
        .iter()
        .map(|r| r.namespace.len())
        .max()
        .unwrap_or(0)
        .max(9);
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    let mut out = format!(
        "{:<ns_width$}   {:<width$}   {:<10}   {:<13}\n",
        "NAMESPACE", "NAME", "CPU(cores)", "MEMORY(bytes)"
    );
    for r in rows.into_iter().take(limit) {
        let _ = writeln!(
            out,
            "{:<ns_width$}   {:<width$}   {:<10}   {:<13}",
            r.namespace,
            r.name,
            millicores(r.cpu_nano_cores),
            mebibytes(r.memory_bytes),
        );
    }
    out
}

/// How long `--once` waits for every row to have a CPU rate: a collector reads cgroupfs every
/// 10 s by default, and a rate needs two reads.
const ONCE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(45);

/// Whether `--once` should print now: every row has a rate, or waiting longer is pointless.
fn ready_for_once(rows: &[Row], started: std::time::Instant) -> bool {
    rows.iter().all(|r| r.cpu_nano_cores.is_some() || r.stale) || started.elapsed() > ONCE_PATIENCE
}

fn render(config: &TopConfig, rows: Vec<Row>) -> String {
    match config.view {
        View::Nodes => render_nodes(rows, config.sort, config.rows),
        _ => render_pods(rows, config.sort, config.rows),
    }
}

/// A pod's display name: its name, or its uid while the collector has no CRI names.
fn pod_name(name: &str, uid: &str) -> String {
    if name.is_empty() {
        uid.to_owned()
    } else {
        name.to_owned()
    }
}

/// Node and pods of one collector, as its Watch stream last described them.
#[derive(Default)]
struct CollectorView {
    node: Option<proto::NodeStats>,
    info: Option<proto::NodeInfo>,
    pods: HashMap<String, proto::PodStats>,
    in_snapshot: bool,
}

impl CollectorView {
    fn apply(&mut self, msg: proto::WatchResponse) {
        if chunk::starts_snapshot(&mut self.in_snapshot, &msg) {
            self.pods.clear();
        }
        if msg.node.is_some() {
            self.info = msg.node;
        }
        if msg.node_stats.is_some() {
            self.node = msg.node_stats;
        }
        for uid in msg.removed_pod_uids {
            self.pods.remove(&uid);
        }
        for pod in msg.pods {
            let uid = pod
                .pod_ref
                .as_ref()
                .map(|r| r.uid.clone())
                .unwrap_or_default();
            self.pods.insert(uid, pod);
        }
    }

    fn rows(&self, view: View) -> Vec<Row> {
        if view == View::Nodes {
            let Some(node) = &self.node else {
                return Vec::new();
            };
            let memory = node.memory;
            return vec![Row {
                namespace: String::new(),
                name: node.node_name.clone(),
                cpu_nano_cores: node.cpu.and_then(|c| c.usage_nano_cores),
                memory_bytes: memory.and_then(|m| m.working_set_bytes),
                cpus: self.info.as_ref().map(|i| i.online_cpus),
                memory_capacity: memory.and_then(|m| m.limit_bytes),
                stale: false,
            }];
        }
        self.pods
            .values()
            .map(|p| {
                let r = p.pod_ref.clone().unwrap_or_default();
                Row {
                    namespace: r.namespace,
                    name: pod_name(&r.name, &r.uid),
                    cpu_nano_cores: p.cpu.and_then(|c| c.usage_nano_cores),
                    memory_bytes: p.memory.and_then(|m| m.working_set_bytes),
                    cpus: None,
                    memory_capacity: None,
                    stale: false,
                }
            })
            .collect()
    }
}

pub async fn run_collector(channel: Channel, config: &TopConfig) -> anyhow::Result<()> {
    let mut client = CollectorClient::new(channel).max_decoding_message_size(64 << 20);
    let mut stream = client
        .watch(WatchRequest {
            interval_ms: Some(interval_ms(config)),
            namespace: config.namespace.clone().unwrap_or_default(),
            only_cpu_and_memory: true,
            ..Default::default()
        })
        .await
        .context("starting Watch")?
        .into_inner();
    let mut view = CollectorView::default();
    let started = std::time::Instant::now();
    while let Some(msg) = stream.message().await.context("Watch stream")? {
        let (snapshot, more) = (msg.snapshot, msg.more);
        view.apply(msg);
        if more || (config.once && snapshot) {
            continue;
        }
        let rows = view.rows(config.view);
        if config.once && !ready_for_once(&rows, started) {
            continue;
        }
        if show(config, &render(config, rows)) {
            return Ok(());
        }
    }
    anyhow::bail!("the collector closed the stream")
}

pub async fn run_aggregator(channel: Channel, config: &TopConfig) -> anyhow::Result<()> {
    let mut client = AggregatorClient::new(channel).max_decoding_message_size(256 << 20);
    let mut tick = tokio::time::interval(config.interval);
    let started = std::time::Instant::now();
    loop {
        tick.tick().await;
        let rows: Vec<Row> = match config.view {
            View::Nodes => client
                .list_node_metrics(ListNodeMetricsRequest {})
                .await
                .context("ListNodeMetrics")?
                .into_inner()
                .nodes
                .into_iter()
                .map(|n| Row {
                    namespace: String::new(),
                    name: n.name,
                    cpu_nano_cores: n.cpu_nano_cores,
                    memory_bytes: n.memory_working_set_bytes,
                    cpus: Some(n.online_cpus),
                    memory_capacity: n.memory_capacity_bytes,
                    stale: n.stale,
                })
                .collect(),
            _ => list_all_pods(&mut client, config.namespace.clone().unwrap_or_default())
                .await?
                .into_iter()
                .map(|p| Row {
                    name: pod_name(&p.name, &p.uid),
                    namespace: p.namespace,
                    cpu_nano_cores: Some(p.containers.iter().map(|c| c.cpu_nano_cores).sum()),
                    memory_bytes: Some(
                        p.containers
                            .iter()
                            .map(|c| c.memory_working_set_bytes)
                            .sum(),
                    ),
                    cpus: None,
                    memory_capacity: None,
                    stale: false,
                })
                .collect(),
        };
        if config.once && !ready_for_once(&rows, started) {
            continue;
        }
        if show(config, &render(config, rows)) {
            return Ok(());
        }
    }
}

/// Every pod of the aggregator's list, page by page.
async fn list_all_pods(
    client: &mut AggregatorClient<Channel>,
    namespace: String,
) -> anyhow::Result<Vec<crate::proto::PodMetrics>> {
    let mut pods = Vec::new();
    let mut continue_token = String::new();
    loop {
        let page = client
            .list_pod_metrics(ListPodMetricsRequest {
                namespace: namespace.clone(),
                continue_token,
                ..Default::default()
            })
            .await
            .context("ListPodMetrics")?
            .into_inner();
        pods.extend(page.pods);
        if page.continue_token.is_empty() {
            return Ok(pods);
        }
        continue_token = page.continue_token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ns: &str, name: &str, cpu: Option<u64>, mem: Option<u64>) -> Row {
        Row {
            namespace: ns.into(),
            name: name.into(),
            cpu_nano_cores: cpu,
            memory_bytes: mem,
            cpus: Some(2),
            memory_capacity: Some(4 << 30),
            stale: false,
        }
    }

    #[test]
    fn nodes_table_reads_like_kubectl_top() {
        let out = render_nodes(
            vec![
                row("", "small", Some(50_000_000), Some(512 << 20)),
                row("", "big", Some(1_500_000_000), Some(1 << 30)),
                row("", "new", None, None),
            ],
            SortBy::Cpu,
            10,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("NAME") && lines[0].contains("CPU(cores)"),
            "{out}"
        );
        let big: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(big, ["big", "1500m", "75%", "1024Mi", "25%"], "{out}");
        assert!(lines[2].starts_with("small"), "{out}");
        assert!(lines[3].contains("<unknown>"), "{out}");
    }

    #[test]
    fn pods_table_sorts_by_memory_and_name() {
        let rows = vec![
            row("b", "p1", Some(1_000_000), Some(300 << 20)),
            row("a", "p2", Some(9_000_000), Some(100 << 20)),
        ];
        let by_mem = render_pods(rows.clone(), SortBy::Memory, 10);
        let first: Vec<&str> = by_mem.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(first, ["b", "p1", "1m", "300Mi"]);
        let by_name = render_pods(rows, SortBy::Name, 1);
        assert_eq!(by_name.lines().count(), 2, "limited to one row");
        assert!(by_name.lines().nth(1).unwrap().starts_with("a "));
    }
}
