//! Sliding-window percentiles of CPU usage and working set, per pod and per container: what a
//! peak predictor (koordlet's p60/p90/p95/p98/max) or a right-sizing tool needs, kept by the
//! store task, which owns them, one sample per fresh cgroupfs reading.

pub mod window;

use std::{collections::HashMap, time::Duration};

use hdrhistogram::Histogram;

use crate::proto;
use window::SlidingHistogram;

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);
pub const MIN_WINDOW: Duration = Duration::from_secs(60);
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Recorded in millicores, up to 262 cores.
const CPU_UNIT_NANO_CORES: u64 = 1_000_000;
const CPU_HIGHEST: u64 = 1 << 18;
/// Recorded in KiB, up to 4 TiB.
const MEMORY_UNIT_BYTES: u64 = 1024;
const MEMORY_HIGHEST: u64 = 1 << 32;

/// The windows of every pod and container cgroup seen in the last pass.
pub struct UsageWindows {
    window: Duration,
    by_cgroup: HashMap<u64, Tracked>,
    /// Scratch for merging a series' slots.
    merged: Option<Histogram<u64>>,
    pass: u64,
}

struct Tracked {
    cpu: SlidingHistogram,
    memory: SlidingHistogram,
    /// Reading times already recorded, so a reading carried between cgroupfs passes is not
    /// counted again.
    cpu_time: Option<u64>,
    memory_time: Option<u64>,
    latest: Option<proto::UsagePercentiles>,
    seen_in_pass: u64,
}

impl UsageWindows {
    pub fn new(window: Duration) -> Self {
        Self {
            window: window.clamp(MIN_WINDOW, MAX_WINDOW),
            by_cgroup: HashMap::new(),
            merged: None,
            pass: 0,
        }
    }

    /// Records this pass's fresh readings and fills `usage_percentiles` of every pod and
    /// container; forgets cgroups that are gone.
    pub fn observe(&mut self, pods: &mut [proto::PodStats], now_ns: u64) {
        self.pass += 1;
        for pod in pods {
            pod.usage_percentiles =
                self.update(pod.cgroup_id, pod.cpu.as_ref(), pod.memory.as_ref(), now_ns);
            for c in &mut pod.containers {
                c.usage_percentiles =
                    self.update(c.cgroup_id, c.cpu.as_ref(), c.memory.as_ref(), now_ns);
            }
        }
        let pass = self.pass;
        self.by_cgroup.retain(|_, t| t.seen_in_pass == pass);
    }

    fn update(
        &mut self,
        cgroup_id: u64,
        cpu: Option<&proto::CpuStats>,
        memory: Option<&proto::MemoryStats>,
        now_ns: u64,
    ) -> Option<proto::UsagePercentiles> {
        let window_ns = self.window.as_nanos() as u64;
        let tracked = self.by_cgroup.entry(cgroup_id).or_insert_with(|| Tracked {
            cpu: SlidingHistogram::new(window_ns, CPU_HIGHEST),
            memory: SlidingHistogram::new(window_ns, MEMORY_HIGHEST),
            cpu_time: None,
            memory_time: None,
            latest: None,
            seen_in_pass: 0,
        });
        tracked.seen_in_pass = self.pass;
        let mut changed = tracked.cpu.expire(now_ns) | tracked.memory.expire(now_ns);
        if let Some(cpu) = cpu
            && let Some(nano_cores) = cpu.usage_nano_cores
            && tracked.cpu_time < Some(cpu.time_unix_nano)
        {
            tracked.cpu_time = Some(cpu.time_unix_nano);
            tracked
                .cpu
                .record(nano_cores.div_ceil(CPU_UNIT_NANO_CORES), cpu.time_unix_nano);
            changed = true;
        }
        if let Some(memory) = memory
            && let Some(bytes) = memory.working_set_bytes
            && tracked.memory_time < Some(memory.time_unix_nano)
        {
            tracked.memory_time = Some(memory.time_unix_nano);
            tracked
                .memory
                .record(bytes.div_ceil(MEMORY_UNIT_BYTES), memory.time_unix_nano);
            changed = true;
        }
        if changed {
            let cpu = tracked
                .cpu
                .percentiles(&mut self.merged, CPU_UNIT_NANO_CORES);
            let memory = tracked
                .memory
                .percentiles(&mut self.merged, MEMORY_UNIT_BYTES);
            tracked.latest = (cpu.is_some() || memory.is_some()).then(|| proto::UsagePercentiles {
                window_seconds: tracked.cpu.covered_ns().max(tracked.memory.covered_ns())
                    / 1_000_000_000,
                cpu_nano_cores: cpu,
                memory_working_set_bytes: memory,
            });
        }
        tracked.latest
    }

    /// Bytes of histogram counts held, for the figures in docs and notes.
    pub fn counts_bytes(&self) -> usize {
        self.by_cgroup
            .values()
            .map(|t| t.cpu.counts_bytes() + t.memory.counts_bytes())
            .sum()
    }
}

/// `--percentile-window`: `90s`, `10m`, `1h` or plain seconds, within 1 min ..= 24 h.
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 10m, 1h or 600s"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    let window = Duration::from_secs(seconds);
    if !(MIN_WINDOW..=MAX_WINDOW).contains(&window) {
        return Err(format!("{text:?}: the window must be between 1m and 24h"));
    }
    Ok(window)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn pod(cgroup_id: u64, at: u64, millicores: u64, mib: u64) -> proto::PodStats {
        proto::PodStats {
            cgroup_id,
            cpu: Some(proto::CpuStats {
                time_unix_nano: at,
                usage_nano_cores: Some(millicores * 1_000_000),
                ..Default::default()
            }),
            memory: Some(proto::MemoryStats {
                time_unix_nano: at,
                working_set_bytes: Some(mib << 20),
                ..Default::default()
            }),
            containers: vec![proto::ContainerStats {
                cgroup_id: cgroup_id + 1,
                cpu: Some(proto::CpuStats {
                    time_unix_nano: at,
                    usage_nano_cores: Some(millicores * 500_000),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn records_fresh_readings_once_and_reports_pod_and_container() {
        let mut w = UsageWindows::new(DEFAULT_WINDOW);
        // 100 passes 1 s apart; cgroupfs read every 10th pass (the reading is carried between).
        for pass in 0..100u64 {
            let reading = pass / 10 * 10;
            let millicores = 100 + reading; // 100, 110, … 190
            let mut pods = [pod(7, reading * S, millicores, 64 + reading)];
            w.observe(&mut pods, pass * S);
            if pass == 99 {
                let p = pods[0].usage_percentiles.unwrap();
                let cpu = p.cpu_nano_cores.unwrap();
                assert_eq!(cpu.samples, 10, "one sample per fresh reading");
                assert_eq!(cpu.max, 190_000_000);
                // The 5th of 100, 110 … 190 m, within its bucket (140..=143 m).
                assert!((140_000_000..=148_750_000).contains(&cpu.p50), "{cpu:?}");
                let ws = p.memory_working_set_bytes.unwrap();
                assert_eq!(ws.max, (64 + 90) << 20);
                assert_eq!(p.window_seconds, 90, "first to last reading");
                let c = pods[0].containers[0].usage_percentiles.unwrap();
                assert_eq!(c.cpu_nano_cores.unwrap().max, 95_000_000);
                assert!(c.memory_working_set_bytes.is_none());
            }
        }
        // The pod's cgroup goes away: its windows go too.
        w.observe(&mut [], 100 * S);
        assert_eq!(w.counts_bytes(), 0);
    }

    #[test]
    fn memory_per_series_is_small() {
        let mut w = UsageWindows::new(Duration::from_secs(3600));
        // A full hour at one reading per second, pod + one container.
        for s in 0..3600u64 {
            let mut pods = [pod(1, s * S, 100 + s % 900, 1 + s % 4000)];
            w.observe(&mut pods, s * S);
        }
        let per_cgroup = w.counts_bytes() / 2;
        // Six slots of (CPU 240 + memory 464 counts) x 2 bytes.
        assert!(per_cgroup <= 6 * (240 + 464) * 2, "{per_cgroup} bytes");
    }

    #[test]
    fn window_flag() {
        assert_eq!(parse_window("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_window("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_window("90"), Ok(Duration::from_secs(90)));
        assert!(
            parse_window("30s")
                .unwrap_err()
                .contains("between 1m and 24h")
        );
        assert!(parse_window("2d").unwrap_err().contains("unit"));
        assert!(parse_window("ten").is_err());
    }
}
