//! `collector top cgroups`: the busiest cgroups of one collector, fed by Watch.

use std::{collections::HashMap, fmt::Write as _};

use anyhow::Context as _;
use tonic::transport::Channel;

use super::{SortBy, TopConfig, interval_ms, show};
use crate::proto::{self, WatchRequest, collector_client::CollectorClient};
use crate::server::chunk;

/// The client-side copy of what the stream has said so far.
#[derive(Default)]
pub struct Table {
    cgroups: HashMap<u64, proto::CgroupStats>,
    probes: Vec<proto::ProbeStatus>,
    programs: Vec<proto::ProgramRunStats>,
    hostname: String,
    /// Inside a chunked snapshot: later chunks add to what the first one started.
    in_snapshot: bool,
}

impl Table {
    pub fn apply(&mut self, msg: proto::WatchResponse) {
        if chunk::starts_snapshot(&mut self.in_snapshot, &msg) {
            self.cgroups.clear();
        }
        if let Some(node) = msg.node {
            self.hostname = node.hostname;
        }
        if !msg.probes.is_empty() {
            self.probes = msg.probes;
        }
        if let Some(stats) = msg.collector {
            self.programs = stats.program_stats;
        }
        for id in msg.removed_cgroup_ids {
            self.cgroups.remove(&id);
        }
        for c in msg.cgroups {
            self.cgroups.insert(c.cgroup_id, c);
        }
    }

    pub fn render(&self, rows: usize, sort: SortBy) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "collector top - {}  ({} cgroups)",
            self.hostname,
            self.cgroups.len()
        );
        for p in &self.probes {
            if p.state() != proto::probe_status::State::Active {
                let _ = writeln!(out, "  probe {}: {:?} {}", p.name, p.state(), p.reason);
            }
        }
        let costs: Vec<String> = self
            .programs
            .iter()
            .filter_map(|p| Some(format!("{} {} ns", p.name, p.average_nano_seconds?)))
            .collect();
        if !costs.is_empty() {
            let _ = writeln!(out, "  probe cost per run: {}", costs.join(", "));
        }
        let _ = writeln!(
            out,
            "{:>10} {:>10} {:>12} {:>12} {:>10} {:>10} {:>10}  CGROUP",
            "EBPF CPU", "FS CPU", "EBPF CPU-S", "FS CPU-S", "MEM(Mi)", "FAULTS/S", "RUNQ P99"
        );
        let mut sorted: Vec<&proto::CgroupStats> = self.cgroups.values().collect();
        match sort {
            SortBy::Cpu => sorted.sort_by_key(|c| std::cmp::Reverse((sort_key(c), c.cgroup_id))),
            SortBy::Memory => sorted.sort_by_key(|c| {
                let ws = c.memory.and_then(|m| m.working_set_bytes).unwrap_or(0);
                std::cmp::Reverse((ws, c.cgroup_id))
            }),
            SortBy::Name => sorted.sort_by(|a, b| a.path.cmp(&b.path)),
        }
        for c in sorted.into_iter().take(rows) {
            let ebpf = c.ebpf_cpu.as_ref();
            let fs = c.cgroupfs_cpu.as_ref();
            let faults = c.ebpf_faults.and_then(|f| f.minor_per_second);
            let p99 = c
                .runq_latency
                .as_ref()
                .and_then(|r| r.window?.p99_nano_seconds)
                .map(|ns| format!("{:.2}ms", ns as f64 / 1e6));
            let memory = c.memory.and_then(|m| m.working_set_bytes);
            let _ = writeln!(
                out,
                "{:>10} {:>10} {:>12} {:>12} {:>10} {:>10} {:>10}  {}",
                cores(ebpf.and_then(|e| e.usage_nano_cores)),
                cores(fs.and_then(|f| f.usage_nano_cores)),
                seconds(ebpf.map(|e| e.on_cpu_nano_seconds)),
                seconds(fs.and_then(|f| f.usage_core_nano_seconds)),
                memory.map_or("-".into(), |b| (b >> 20).to_string()),
                faults.map_or("-".into(), |f| f.to_string()),
                p99.unwrap_or_else(|| "-".into()),
                c.path
            );
        }
        out
    }
}

/// The busier of the two sources, so a cgroup shows up whichever source sees it.
fn sort_key(c: &proto::CgroupStats) -> u64 {
    let ebpf = c.ebpf_cpu.as_ref().and_then(|e| e.usage_nano_cores);
    let fs = c.cgroupfs_cpu.as_ref().and_then(|f| f.usage_nano_cores);
    ebpf.max(fs).unwrap_or(0)
}

fn cores(nano_cores: Option<u64>) -> String {
    nano_cores.map_or_else(|| "-".into(), |n| format!("{:.3}", n as f64 / 1e9))
}

fn seconds(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".into(), |n| format!("{:.2}", n as f64 / 1e9))
}

pub async fn run(channel: Channel, config: &TopConfig) -> anyhow::Result<()> {
    let mut client = CollectorClient::new(channel).max_decoding_message_size(64 << 20);
    let mut stream = client
        .watch(WatchRequest {
            interval_ms: Some(interval_ms(config)),
            cgroup_path_prefix: config.cgroup_prefix.clone().unwrap_or_default(),
            namespace: config.namespace.clone().unwrap_or_default(),
            ..Default::default()
        })
        .await
        .context("starting Watch")?
        .into_inner();
    let mut table = Table::default();
    while let Some(msg) = stream.message().await.context("Watch stream")? {
        let (snapshot, more) = (msg.snapshot, msg.more);
        table.apply(msg);
        if more {
            continue;
        }
        // With --once, wait for the first update: rates need two samples.
        if !(config.once && snapshot) && show(config, &table.render(config.rows, config.sort)) {
            return Ok(());
        }
    }
    anyhow::bail!("the collector closed the stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cg(
        id: u64,
        path: &str,
        ebpf_cores: Option<u64>,
        fs_cores: Option<u64>,
    ) -> proto::CgroupStats {
        proto::CgroupStats {
            cgroup_id: id,
            path: path.into(),
            cgroupfs_cpu: Some(proto::CgroupfsCpu {
                usage_core_nano_seconds: Some(2_500_000_000),
                usage_nano_cores: fs_cores,
                ..Default::default()
            }),
            ebpf_cpu: Some(proto::EbpfCpu {
                on_cpu_nano_seconds: 1_000_000_000,
                usage_nano_cores: ebpf_cores,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn sorted_by_cpu_with_removals_applied() {
        let mut t = Table::default();
        t.apply(proto::WatchResponse {
            snapshot: true,
            cgroups: vec![
                cg(1, "/idle", Some(0), Some(0)),
                cg(2, "/busy", Some(900_000_000), Some(950_000_000)),
                cg(3, "/gone", Some(5), Some(5)),
            ],
            ..Default::default()
        });
        t.apply(proto::WatchResponse {
            removed_cgroup_ids: vec![3],
            ..Default::default()
        });
        let out = t.render(10, SortBy::Cpu);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[1].contains("MEM(Mi)"), "{out}");
        assert!(lines[2].ends_with("/busy"), "{out}");
        assert!(
            lines[2].contains("0.900") && lines[2].contains("0.950"),
            "{out}"
        );
        assert!(
            lines[2].contains("1.00") && lines[2].contains("2.50"),
            "{out}"
        );
        assert!(lines[3].ends_with("/idle"), "{out}");
        assert!(!out.contains("/gone"), "{out}");
    }

    #[test]
    fn absent_rates_render_as_dash() {
        let mut t = Table::default();
        t.apply(proto::WatchResponse {
            snapshot: true,
            cgroups: vec![cg(1, "/new", None, None)],
            ..Default::default()
        });
        assert!(
            t.render(5, SortBy::Cpu)
                .lines()
                .nth(2)
                .unwrap()
                .trim_start()
                .starts_with("- ")
        );
    }
}
