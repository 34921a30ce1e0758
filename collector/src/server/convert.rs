//! Internal model -> protobuf messages.

use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::atomic::Ordering;

use crate::{
    node::NodeInfo,
    probes::{ProbeState, ProbeStatus},
    proto,
    sampler::CgroupSample,
    sampler::SamplerStats,
    server::ServerStats,
    store::CgroupRates,
};

pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub fn cgroup_stats(c: &CgroupSample, rates: CgroupRates) -> proto::CgroupStats {
    proto::CgroupStats {
        cgroup_id: c.id,
        path: c.path.to_string(),
        cgroupfs_cpu: c.cgroupfs_cpu.map(|s| proto::CgroupfsCpu {
            usage_core_nano_seconds: s.usage_usec.map(usec_to_ns),
            user_nano_seconds: s.user_usec.map(usec_to_ns),
            system_nano_seconds: s.system_usec.map(usec_to_ns),
            nr_periods: s.nr_periods,
            nr_throttled: s.nr_throttled,
            throttled_nano_seconds: s.throttled_usec.map(usec_to_ns),
            usage_nano_cores: rates.cgroupfs_nano_cores,
        }),
        ebpf_cpu: c.ebpf_cpu_ns.map(|ns| proto::EbpfCpu {
            on_cpu_nano_seconds: ns,
            usage_nano_cores: rates.ebpf_nano_cores,
        }),
    }
}

fn usec_to_ns(usec: u64) -> u64 {
    usec.saturating_mul(1000)
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
