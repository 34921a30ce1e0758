//! Per-cgroup rates over the last two samples: CPU (cgroupfs and eBPF), page faults, socket
//! traffic and run-queue windows, each with kubelet's rules (see [`super::per_second`]).

use std::{collections::HashMap, sync::Arc, time::Instant};

use super::{
    Reading, per_second,
    runq::{RunqWindow, Summarizer},
};
use crate::{
    probes::{NET_VALUES, RUNQ_VALUES},
    sampler::Sample,
};

/// Rates of one cgroup over the store's last two samples (absent per the rate rules).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupRates {
    pub cgroupfs_nano_cores: Option<u64>,
    pub ebpf_nano_cores: Option<u64>,
    pub page_faults_per_second: Option<u64>,
    pub major_page_faults_per_second: Option<u64>,
    /// From the fault probes (the per-second rule of `per_second`, on counts).
    pub ebpf_minor_faults_per_second: Option<u64>,
    pub ebpf_major_faults_per_second: Option<u64>,
    /// Run-queue waits between the last two samples.
    pub runq: Option<RunqWindow>,
    /// From the net probe, in its layout (rx bytes, rx packets, tx bytes, tx packets).
    pub ebpf_network_per_second: [Option<u64>; NET_VALUES],
}

/// The counters rates are computed from, as last read.
#[derive(Debug, Clone, Default)]
struct Counters {
    cpu: Option<Reading>,
    ebpf: Option<Reading>,
    faults: Option<Reading>,
    major_faults: Option<Reading>,
    ebpf_minor: Option<Reading>,
    ebpf_major: Option<Reading>,
    network: [Option<Reading>; NET_VALUES],
    runq: Option<(Instant, Arc<[u64; RUNQ_VALUES]>)>,
    /// The rates last computed: a cgroupfs reading carried forward between full passes keeps
    /// its rates rather than losing them to a zero time delta.
    rates: CgroupRates,
}

/// What rates are computed against: each cgroup's counters as last read.
#[derive(Default)]
pub struct RateState {
    counters: HashMap<u64, Counters>,
    runq: Summarizer,
}

/// Rates against the previous sample, updating the baseline.
pub fn rates_since(state: &mut RateState, sample: &Sample) -> Vec<CgroupRates> {
    let previous = &mut state.counters;
    let summarizer = &mut state.runq;
    let reading = |value: Option<u64>, at| value.map(|value| Reading { value, at });
    let rate = |prev: Option<Reading>, cur: Option<Reading>| cur.and_then(|c| per_second(prev, c));
    let mut next = HashMap::with_capacity(sample.cgroups.len());
    let rates = sample
        .cgroups
        .iter()
        .map(|c| {
            let stat = c.reading.memory.map(|m| m.stat).unwrap_or_default();
            let prev = previous.remove(&c.id).unwrap_or_default();
            let at = c.read_at;
            let now_at = sample.taken_at;
            let carried = prev.cpu.or(prev.faults).is_some_and(|r| r.at == at);
            let mut now = Counters {
                cpu: reading(c.reading.cpu.usage_ns, at),
                ebpf: reading(c.ebpf.cpu_ns, now_at),
                faults: reading(stat.pgfault, at),
                major_faults: reading(stat.pgmajfault, at),
                ebpf_minor: reading(c.ebpf.faults.map(|[minor, _]| minor), now_at),
                ebpf_major: reading(c.ebpf.faults.map(|[_, major]| major), now_at),
                network: std::array::from_fn(|i| reading(c.ebpf.network.map(|n| n[i]), now_at)),
                runq: c.ebpf.runq.clone().map(|h| (now_at, h)),
                rates: prev.rates,
            };
            now.rates.ebpf_nano_cores = rate(prev.ebpf, now.ebpf);
            now.rates.ebpf_minor_faults_per_second = rate(prev.ebpf_minor, now.ebpf_minor);
            now.rates.ebpf_major_faults_per_second = rate(prev.ebpf_major, now.ebpf_major);
            now.rates.ebpf_network_per_second =
                std::array::from_fn(|i| rate(prev.network[i], now.network[i]));
            now.rates.runq = match (&prev.runq, &now.runq) {
                (Some((t0, h0)), Some((t1, h1))) => {
                    let dt = t1.saturating_duration_since(*t0).as_nanos();
                    summarizer.window(h0, h1, u64::try_from(dt).unwrap_or(u64::MAX))
                }
                _ => None,
            };
            if !carried {
                now.rates.cgroupfs_nano_cores = rate(prev.cpu, now.cpu);
                now.rates.page_faults_per_second = rate(prev.faults, now.faults);
                now.rates.major_page_faults_per_second = rate(prev.major_faults, now.major_faults);
            }
            let rates = now.rates;
            next.insert(c.id, now);
            rates
        })
        .collect();
    *previous = next;
    rates
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::{
        cgroupfs::{
            memory_stat::MemoryStat,
            reading::{CgroupReading, MemoryReading},
        },
        sampler::CgroupSample,
    };

    fn sample(at: Instant, cpu_ns: u64, faults: u64, ebpf: Option<u64>) -> Sample {
        sample_read_at(at, at, cpu_ns, faults, ebpf)
    }

    /// A pass at `at` whose cgroupfs reading was taken at `read_at` (earlier when carried).
    fn sample_read_at(
        at: Instant,
        read_at: Instant,
        cpu_ns: u64,
        faults: u64,
        ebpf: Option<u64>,
    ) -> Sample {
        let mut reading = CgroupReading::default();
        reading.cpu.usage_ns = Some(cpu_ns);
        reading.memory = Some(MemoryReading {
            stat: MemoryStat {
                pgfault: Some(faults),
                pgmajfault: Some(faults / 10),
                ..MemoryStat::default()
            },
            ..MemoryReading::default()
        });
        Sample {
            taken_at: at,
            wall: SystemTime::now(),
            cgroups: vec![CgroupSample {
                id: 7,
                path: Arc::from("/x"),
                reading,
                read_at,
                read_wall: SystemTime::now(),
                ebpf: crate::sampler::EbpfValues {
                    cpu_ns: ebpf,
                    ..Default::default()
                },
                created_unix_nano: None,
                network: None,
            }],
            meminfo: None,
            host: Default::default(),
            terminated: Vec::new(),
            oom_kills: Vec::new(),
        }
    }

    #[test]
    fn first_sample_absent_then_rates_then_restart_absent() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut previous = RateState::default();
        let r = rates_since(&mut previous, &sample(t0, 1_000, 100, Some(5)));
        assert_eq!(r[0], CgroupRates::default());

        let r = rates_since(
            &mut previous,
            &sample(t0 + second, 500_001_000, 1100, Some(250_000_005)),
        );
        assert_eq!(r[0].cgroupfs_nano_cores, Some(500_000_000));
        assert_eq!(r[0].ebpf_nano_cores, Some(250_000_000));
        assert_eq!(r[0].page_faults_per_second, Some(1000));
        assert_eq!(r[0].major_page_faults_per_second, Some(100));

        // Counters went down (the cgroup was recreated): absent, and a new baseline.
        let r = rates_since(&mut previous, &sample(t0 + 2 * second, 10, 5, None));
        assert_eq!(r[0], CgroupRates::default());
        let r = rates_since(
            &mut previous,
            &sample(t0 + 3 * second, 1_000_000_010, 15, None),
        );
        assert_eq!(r[0].cgroupfs_nano_cores, Some(1_000_000_000));
        assert_eq!(r[0].page_faults_per_second, Some(10));
        assert_eq!(r[0].ebpf_nano_cores, None, "probe not active: absent");
    }

    #[test]
    fn socket_traffic_rates_follow_each_counter_of_the_net_probe() {
        let t0 = Instant::now();
        let half = Duration::from_millis(500);
        let with_network = |at, n| {
            let mut s = sample(at, 0, 0, None);
            s.cgroups[0].ebpf.network = Some(n);
            s
        };
        let mut previous = RateState::default();
        let r = rates_since(&mut previous, &with_network(t0, [1_000, 10, 2_000, 20]));
        assert_eq!(r[0].ebpf_network_per_second, [None; NET_VALUES]);
        let r = rates_since(
            &mut previous,
            &with_network(t0 + half, [1_500, 15, 2_100, 21]),
        );
        // rx bytes, rx packets, tx bytes, tx packets per second over half a second.
        assert_eq!(
            r[0].ebpf_network_per_second,
            [Some(1_000), Some(10), Some(200), Some(2)]
        );
        let r = rates_since(&mut previous, &sample(t0 + 2 * half, 0, 0, None));
        assert_eq!(
            r[0].ebpf_network_per_second, [None; NET_VALUES],
            "probe gone: absent"
        );
    }

    #[test]
    fn a_carried_reading_keeps_its_rates_while_ebpf_moves_on() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut previous = RateState::default();
        rates_since(&mut previous, &sample(t0, 0, 0, Some(0)));
        let r = rates_since(
            &mut previous,
            &sample(t0 + second, 400_000_000, 50, Some(300_000_000)),
        );
        assert_eq!(r[0].cgroupfs_nano_cores, Some(400_000_000));
        // Next pass reads only the probes: the cgroupfs reading (and its time) is carried.
        let r = rates_since(
            &mut previous,
            &sample_read_at(
                t0 + 2 * second,
                t0 + second,
                400_000_000,
                50,
                Some(900_000_000),
            ),
        );
        assert_eq!(
            r[0].cgroupfs_nano_cores,
            Some(400_000_000),
            "kept, not absent"
        );
        assert_eq!(r[0].page_faults_per_second, Some(50));
        assert_eq!(r[0].ebpf_nano_cores, Some(600_000_000));
        // The next full read is rated against the last real reading, over two seconds.
        let r = rates_since(
            &mut previous,
            &sample(t0 + 3 * second, 1_400_000_000, 150, Some(1_000_000_000)),
        );
        assert_eq!(r[0].cgroupfs_nano_cores, Some(500_000_000));
        assert_eq!(r[0].page_faults_per_second, Some(50));
    }
}
