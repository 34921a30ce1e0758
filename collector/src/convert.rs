//! The sampler's model -> protobuf messages: raw cgroup records, probe statuses, node info,
//! collector stats, terminated cgroups and OOM kills. The one place the wire format is built
//! from samples; the store, every server and the exporters use it (the kubelet Summary blocks
//! are built by [`crate::summary`], which this module reuses).

use crate::{
    cgroupfs::reading::Source,
    node::NodeInfo,
    probes::{MapMemory, ProbeState, ProbeStatus, ProgramRunStats},
    proto,
    rate::CgroupRates,
    sampler::{CgroupSample, OomKill, SamplerStats, Terminated},
    summary::{Resources, formulas},
    unix_time::unix_nanos,
};

/// The raw record of one cgroup; `histograms` adds the run-queue log2 buckets.
pub fn cgroup_stats(c: &CgroupSample, rates: CgroupRates, histograms: bool) -> proto::CgroupStats {
    let r = &c.reading;
    let cpu = r.cpu;
    let res = Resources::of(c, &rates);
    proto::CgroupStats {
        cgroup_id: c.id,
        path: c.path.to_string(),
        cgroupfs_cpu: (r.cpu_source != Source::None).then_some(proto::CgroupfsCpu {
            usage_core_nano_seconds: cpu.usage_ns,
            user_nano_seconds: cpu.user_ns,
            system_nano_seconds: cpu.system_ns,
            nr_periods: cpu.nr_periods,
            nr_throttled: cpu.nr_throttled,
            throttled_nano_seconds: cpu.throttled_ns,
            usage_nano_cores: rates.cgroupfs_nano_cores,
        }),
        ebpf_cpu: c.ebpf.cpu_ns.map(|ns| proto::EbpfCpu {
            on_cpu_nano_seconds: ns,
            usage_nano_cores: rates.ebpf_nano_cores,
        }),
        memory: res.memory,
        swap: res.swap,
        io: res.io,
        process_stats: Some(res.processes),
        cpu_psi: res.cpu.psi,
        cgroupfs_time_unix_nano: unix_nanos(c.read_wall),
        ebpf_faults: formulas::ebpf_faults(&c.ebpf, Some(&rates)),
        runq_latency: formulas::runq_latency(&c.ebpf, Some(&rates)).map(|mut r| {
            if histograms && let Some(h) = &c.ebpf.runq {
                r.bucket_waits = h[..collector_common::RUNQ_BUCKETS].to_vec();
            }
            r
        }),
        ebpf_oom_kills: c.ebpf.oom_kills,
        ebpf_network: formulas::ebpf_network(&c.ebpf, Some(&rates)),
    }
}

pub fn probe_status(p: &ProbeStatus) -> proto::ProbeStatus {
    use proto::probe_status::State;
    let (state, reason) = match &p.state {
        ProbeState::Active { note } => (State::Active, note.clone().unwrap_or_default()),
        ProbeState::Unsupported(why) => (State::Unsupported, why.clone()),
        ProbeState::Failed(why) => (State::Failed, why.clone()),
    };
    proto::ProbeStatus {
        name: p.name.to_owned(),
        state: state.into(),
        reason,
        provides: p.provides.to_owned(),
    }
}

pub fn node_info(n: &NodeInfo) -> proto::NodeInfo {
    proto::NodeInfo {
        node_name: n.node_name.clone(),
        hostname: n.hostname.clone(),
        kernel_release: n.kernel_release.clone(),
        cgroup2_mount: n
            .mounts
            .v2
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        cgroup1_mounts: n
            .mounts
            .v1
            .iter()
            .map(|(k, v)| (k.clone(), v.display().to_string()))
            .collect(),
        online_cpus: n.online_cpus,
    }
}

/// The sampler's and the probes' own figures; the server that sends them adds its Watch counters
/// (`watch_subscribers`, `dropped_subscribers`).
pub fn collector_stats(
    sampler: &SamplerStats,
    programs: &[ProgramRunStats],
    maps: &[MapMemory],
) -> proto::CollectorStats {
    let drops = sampler.ebpf_drops;
    proto::CollectorStats {
        program_stats: programs
            .iter()
            .map(|p| proto::ProgramRunStats {
                name: p.name.clone(),
                run_count: p.run_count,
                run_time_nano_seconds: p.run_time_ns,
                average_nano_seconds: p.average_ns(),
            })
            .collect(),
        passes: sampler.passes,
        failed_passes: sampler.failed_passes,
        parse_errors: sampler.parse_errors,
        read_errors: sampler.read_errors,
        probe_read_errors: sampler.probe_read_errors,
        ebpf_map_entries: sampler.ebpf_map_entries,
        ebpf_dropped_runs: drops.cgroup_inserts,
        ebpf_dropped_histogram_waits: drops.runq_histograms,
        ebpf_dropped_oom_events: drops.oom_events,
        ebpf_dropped_lifecycle_events: drops.lifecycle_events,
        ebpf_truncated_paths: drops.truncated_paths,
        ebpf_uncounted_packets: drops.net_inserts,
        ebpf_unattributed_cgroups: sampler.ebpf_unattributed_cgroups,
        ebpf_running_tasks: sampler.ebpf_running_tasks,
        ebpf_maps: maps.iter().map(map_memory).collect(),
        walks: sampler.walks,
        early_walks: sampler.early_walks,
        cgroupfs_reads: sampler.cgroupfs_reads,
        cgroupfs_idle_carried: sampler.idle_carried,
        watch_subscribers: 0,
        dropped_subscribers: 0,
        start_time_unix_nano: 0,
        ebpf_counters_since_unix_nano: None,
    }
}

fn map_memory(m: &MapMemory) -> proto::MapMemory {
    proto::MapMemory {
        object: m.object.to_owned(),
        name: m.name.clone(),
        max_entries: m.max_entries,
        value_size: m.value_size,
        kernel_bytes: m.kernel_bytes,
        projected_bytes_64_cpus: m.projected_bytes(64),
        projected_bytes_128_cpus: m.projected_bytes(128),
    }
}

pub fn terminated(t: &Terminated, time_unix_nano: u64) -> proto::TerminatedCgroup {
    proto::TerminatedCgroup {
        cgroup_id: t.id,
        path: t.path.to_string(),
        timestamp_unix_nano: time_unix_nano,
        ebpf_cpu_nano_seconds: t.values.cpu_ns,
        faults: formulas::ebpf_faults(&t.values, None),
        runq_latency: formulas::runq_latency(&t.values, None),
        oom_kills: t.values.oom_kills,
        network: formulas::ebpf_network(&t.values, None),
    }
}

pub fn oom_kill(k: &OomKill) -> proto::OomKill {
    proto::OomKill {
        time_unix_nano: unix_nanos(k.time),
        pid: k.pid,
        comm: k.comm.clone(),
        cgroup_id: k.cgroup_id,
        cgroup_path: k.path.to_string(),
    }
}
