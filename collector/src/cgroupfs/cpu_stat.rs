//! `cpu.stat` (cgroup v2): the kernel's own CPU accounting of a cgroup and its descendants.

use super::parse::{for_each_pair, set_u64};

/// The fields of cpu.stat we report. Each is `None` when its key is missing or its value is not a
/// number; on hybrid hosts without the cpu controller in v2 only the usage keys exist.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CpuStat {
    pub usage_usec: Option<u64>,
    pub user_usec: Option<u64>,
    pub system_usec: Option<u64>,
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_usec: Option<u64>,
    /// Lines whose value was not a number: reported as a parse-error count, never fatal.
    pub malformed: u32,
}

impl CpuStat {
    /// Parses `key value` lines without allocating. Unknown keys are ignored.
    pub fn parse(text: &str) -> Self {
        let mut stat = Self::default();
        let mut malformed = 0;
        for_each_pair(text, |key, value| {
            let field = match key {
                "usage_usec" => &mut stat.usage_usec,
                "user_usec" => &mut stat.user_usec,
                "system_usec" => &mut stat.system_usec,
                "nr_periods" => &mut stat.nr_periods,
                "nr_throttled" => &mut stat.nr_throttled,
                "throttled_usec" => &mut stat.throttled_usec,
                _ => return,
            };
            set_u64(field, value, &mut malformed);
        });
        stat.malformed = malformed;
        stat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_v2_cpu_stat() {
        let s = CpuStat::parse(
            "usage_usec 2316894\nuser_usec 1790421\nsystem_usec 526473\ncore_sched.force_idle_usec 0\n\
             nr_periods 10\nnr_throttled 3\nthrottled_usec 1500\nnr_bursts 0\nburst_usec 0\n",
        );
        assert_eq!(
            s,
            CpuStat {
                usage_usec: Some(2_316_894),
                user_usec: Some(1_790_421),
                system_usec: Some(526_473),
                nr_periods: Some(10),
                nr_throttled: Some(3),
                throttled_usec: Some(1500),
                malformed: 0,
            }
        );
    }

    #[test]
    fn hybrid_host_has_usage_keys_only() {
        let s = CpuStat::parse("usage_usec 5\nuser_usec 3\nsystem_usec 2\n");
        assert_eq!(s.usage_usec, Some(5));
        assert_eq!(s.nr_periods, None);
        assert_eq!(s.throttled_usec, None);
    }

    #[test]
    fn garbage_values_are_absent_and_counted() {
        let s = CpuStat::parse("usage_usec abc\nuser_usec -1\nsystem_usec 18446744073709551616\n");
        assert_eq!(s.usage_usec, None);
        assert_eq!(s.user_usec, None);
        assert_eq!(s.system_usec, None);
        assert_eq!(s.malformed, 3);
    }

    #[test]
    fn empty_and_garbage_lines() {
        assert_eq!(CpuStat::parse(""), CpuStat::default());
        let s = CpuStat::parse("\n\x00\u{ff}\nnokey\n   \nusage_usec 7");
        assert_eq!(s.usage_usec, Some(7));
        assert_eq!(s.malformed, 0);
    }
}
