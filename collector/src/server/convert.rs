//! Internal model -> protobuf messages.

use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::atomic::Ordering;

use crate::{
    cgroupfs::reading::Source,
    node::NodeInfo,
    probes::{ProbeState, ProbeStatus},
    proto,
    sampler::CgroupSample,
    sampler::SamplerStats,
    server::ServerStats,
    store::CgroupRates,
    summary::Resources,
};

pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub fn cgroup_stats(c: &CgroupSample, rates: CgroupRates) -> proto::CgroupStats {
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
        ebpf_cpu: c.ebpf_cpu_ns.map(|ns| proto::EbpfCpu {
            on_cpu_nano_seconds: ns,
            usage_nano_cores: rates.ebpf_nano_cores,
        }),
        memory: res.memory,
        swap: res.swap,
        io: res.io,
        process_stats: Some(res.processes),
        cpu_psi: res.cpu.psi,
        cgroupfs_time_unix_nano: unix_nanos(c.read_wall),
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

pub fn collector_stats(sampler: &SamplerStats, server: &ServerStats) -> proto::CollectorStats {
    proto::CollectorStats {
        passes: sampler.passes,
        parse_errors: sampler.parse_errors,
        read_errors: sampler.read_errors,
        probe_read_errors: sampler.probe_read_errors,
        ebpf_map_entries: sampler.ebpf_map_entries,
        ebpf_dropped_intervals: sampler.ebpf_dropped_intervals,
        ebpf_running_read_failures: sampler.ebpf_running_read_failures,
        watch_subscribers: server.watch_subscribers.load(Ordering::Relaxed),
        dropped_subscribers: server.dropped_subscribers.load(Ordering::Relaxed),
    }
}
