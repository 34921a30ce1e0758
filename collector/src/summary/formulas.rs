//! kubelet's formulas, one small function each, from cgroupfs readings to Summary messages.

use crate::{
    cgroupfs::{
        parse::{Io, Limit, Psi, PsiData},
        reading::{CgroupReading, CpuReading, MemoryReading, Source},
    },
    proto,
    rate::{CgroupRates, runq},
    sampler::EbpfValues,
};

/// usage − inactive_file, floored at 0; usage alone when inactive_file is unknown.
pub fn working_set(usage: Option<u64>, inactive_file: Option<u64>) -> Option<u64> {
    let usage = usage?;
    Some(inactive_file.map_or(usage, |inactive| usage.saturating_sub(inactive)))
}

/// limit − working set; absent when unlimited (or either is unknown).
pub fn available(limit: Option<u64>, working_set: Option<u64>) -> Option<u64> {
    Some(limit?.saturating_sub(working_set?))
}

pub fn cpu(c: &CpuReading, rates: &CgroupRates, psi: Option<Psi>, time: u64) -> proto::CpuStats {
    proto::CpuStats {
        time_unix_nano: time,
        usage_nano_cores: rates.cgroupfs_nano_cores,
        usage_core_nano_seconds: c.usage_ns,
        user_nano_seconds: c.user_ns,
        system_nano_seconds: c.system_ns,
        cfs_periods: c.nr_periods,
        cfs_throttled_periods: c.nr_throttled,
        cfs_throttled_nano_seconds: c.throttled_ns,
        quota_micros: c.quota_us,
        period_micros: c.period_us,
        weight: c.weight,
        shares: c.shares,
        psi: psi.map(psi_stats),
    }
}

/// Memory of a cgroup; `usage_override` replaces `usage_bytes` (the v2 root has no
/// memory.current) and `limit_override` the limit (the node's is MemTotal).
pub fn memory(
    m: &MemoryReading,
    rates: &CgroupRates,
    psi: Option<Psi>,
    time: u64,
    usage_override: Option<u64>,
    limit_override: Option<u64>,
) -> proto::MemoryStats {
    let usage = usage_override.or(m.usage_bytes);
    let working_set = working_set(usage, m.stat.inactive_file);
    let limit = limit_override.or_else(|| m.limit.and_then(Limit::bytes));
    proto::MemoryStats {
        time_unix_nano: time,
        available_bytes: available(limit, working_set),
        usage_bytes: usage,
        working_set_bytes: working_set,
        rss_bytes: m.stat.anon,
        page_faults: m.stat.pgfault,
        major_page_faults: m.stat.pgmajfault,
        cache_bytes: m.stat.file,
        mapped_file_bytes: m.stat.mapped_file,
        limit_bytes: limit,
        reservation_bytes: m.reservation.and_then(Limit::bytes),
        page_faults_per_second: rates.page_faults_per_second,
        major_page_faults_per_second: rates.major_page_faults_per_second,
        oom_events: m.oom_events,
        oom_kill_events: m.oom_kill_events,
        psi: psi.map(psi_stats),
    }
}

/// v2: usage = memory.swap.current, available = memory.swap.max − usage. v1 reports swap usage
/// (total_swap) but its memsw limit covers memory + swap, so availability is left absent.
pub fn swap(m: &MemoryReading, source: Source, time: u64) -> proto::SwapStats {
    let limit = match source {
        Source::V2 => m.swap_limit.and_then(Limit::bytes),
        _ => None,
    };
    proto::SwapStats {
        time_unix_nano: time,
        swap_available_bytes: limit.zip(m.swap_bytes).map(|(l, u)| l.saturating_sub(u)),
        swap_usage_bytes: m.swap_bytes,
    }
}

pub fn io(io: Option<Io>, psi: Option<Psi>, time: u64) -> Option<proto::IoStats> {
    if io.is_none() && psi.is_none() {
        return None;
    }
    Some(proto::IoStats {
        time_unix_nano: time,
        read_bytes: io.map(|i| i.read_bytes),
        write_bytes: io.map(|i| i.write_bytes),
        read_ops: io.map(|i| i.read_ops),
        write_ops: io.map(|i| i.write_ops),
        psi: psi.map(psi_stats),
    })
}

pub fn processes(r: &CgroupReading) -> proto::ProcessStats {
    proto::ProcessStats {
        process_count: r.processes,
        task_count: r.pids.and_then(|p| p.current),
        task_limit: r.pids.and_then(|p| p.max).and_then(|l| match l {
            Limit::Max => None,
            Limit::Value(v) => Some(v),
        }),
    }
}

/// Everything the probes measured for one cgroup; `None` when no probe is active.
pub fn ebpf(v: &EbpfValues, rates: &CgroupRates) -> Option<proto::EbpfStats> {
    let stats = proto::EbpfStats {
        on_cpu_nano_seconds: v.cpu_ns,
        usage_nano_cores: v.cpu_ns.and(rates.ebpf_nano_cores),
        faults: ebpf_faults(v, Some(rates)),
        runq_latency: runq_latency(v, Some(rates)),
        oom_kills: v.oom_kills,
        network: ebpf_network(v, Some(rates)),
    };
    (stats != proto::EbpfStats::default()).then_some(stats)
}

/// Socket bytes and packets, with per-second rates when `rates` is given.
pub fn ebpf_network(v: &EbpfValues, rates: Option<&CgroupRates>) -> Option<proto::EbpfNetwork> {
    use crate::probes::net::{RX_BYTES, RX_PACKETS, TX_BYTES, TX_PACKETS};
    let n = v.network?;
    let per_second = |i: usize| rates.and_then(|r| r.ebpf_network_per_second[i]);
    Some(proto::EbpfNetwork {
        rx_bytes: n[RX_BYTES],
        rx_packets: n[RX_PACKETS],
        tx_bytes: n[TX_BYTES],
        tx_packets: n[TX_PACKETS],
        rx_bytes_per_second: per_second(RX_BYTES),
        rx_packets_per_second: per_second(RX_PACKETS),
        tx_bytes_per_second: per_second(TX_BYTES),
        tx_packets_per_second: per_second(TX_PACKETS),
    })
}

/// Fault counts, with per-second rates when `rates` is given.
pub fn ebpf_faults(v: &EbpfValues, rates: Option<&CgroupRates>) -> Option<proto::EbpfFaults> {
    let [minor, major] = v.faults?;
    Some(proto::EbpfFaults {
        minor,
        major,
        minor_per_second: rates.and_then(|r| r.ebpf_minor_faults_per_second),
        major_per_second: rates.and_then(|r| r.ebpf_major_faults_per_second),
    })
}

/// Cumulative waits, with the last window when `rates` is given.
pub fn runq_latency(v: &EbpfValues, rates: Option<&CgroupRates>) -> Option<proto::RunqLatency> {
    let (waits, total) = runq::totals(v.runq.as_deref()?);
    Some(proto::RunqLatency {
        waits,
        total_wait_nano_seconds: total,
        window: rates.and_then(|r| r.runq).map(|w| proto::RunqWindow {
            duration_nano_seconds: w.duration_ns,
            waits: w.waits,
            total_wait_nano_seconds: w.total_wait_ns,
            p50_nano_seconds: w.p50_ns,
            p90_nano_seconds: w.p90_ns,
            p99_nano_seconds: w.p99_ns,
            max_nano_seconds: w.max_ns,
        }),
        bucket_waits: Vec::new(),
    })
}

pub fn psi_stats(p: Psi) -> proto::PsiStats {
    let data = |d: PsiData| proto::PsiData {
        total_micros: d.total_us,
        avg10: d.avg10,
        avg60: d.avg60,
        avg300: d.avg300,
    };
    proto::PsiStats {
        some: p.some.map(data),
        full: p.full.map(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_set_floors_at_zero() {
        assert_eq!(working_set(Some(100), Some(30)), Some(70));
        assert_eq!(working_set(Some(100), Some(300)), Some(0));
        assert_eq!(working_set(Some(100), None), Some(100));
        assert_eq!(working_set(None, Some(1)), None);
    }

    #[test]
    fn available_needs_a_limit() {
        assert_eq!(available(Some(1000), Some(300)), Some(700));
        assert_eq!(available(None, Some(300)), None);
        assert_eq!(available(Some(100), Some(300)), Some(0));
        assert_eq!(available(Some(100), None), None);
    }
}
