//! `memory.stat`, v2 and v1, normalized to the keys kubelet's formulas use.
//!
//! Each parse is one pass with a `match` on the key: no HashMap, no allocation, about 50 keys
//! per file skipped or taken in order.

use super::parse::{for_each_pair, set_u64};

/// Hierarchical memory statistics of one cgroup, in bytes (faults in events).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStat {
    /// v2 `anon`, v1 `total_rss`: kubelet's rssBytes.
    pub anon: Option<u64>,
    /// v2 `file`, v1 `total_cache`.
    pub file: Option<u64>,
    /// v2 `inactive_file`, v1 `total_inactive_file`: subtracted for the working set.
    pub inactive_file: Option<u64>,
    pub active_file: Option<u64>,
    /// v2 `file_mapped`, v1 `total_mapped_file`.
    pub mapped_file: Option<u64>,
    pub shmem: Option<u64>,
    /// v2 `pgfault`, v1 `total_pgfault`.
    pub pgfault: Option<u64>,
    pub pgmajfault: Option<u64>,
    /// v1 `total_swap` (v2 reports swap in memory.swap.current instead).
    pub swap: Option<u64>,
    pub malformed: u32,
}

impl MemoryStat {
    pub fn parse_v2(text: &str) -> Self {
        let mut s = Self::default();
        let mut malformed = 0;
        for_each_pair(text, |key, value| {
            let field = match key {
                "anon" => &mut s.anon,
                "file" => &mut s.file,
                "inactive_file" => &mut s.inactive_file,
                "active_file" => &mut s.active_file,
                "file_mapped" => &mut s.mapped_file,
                "shmem" => &mut s.shmem,
                "pgfault" => &mut s.pgfault,
                "pgmajfault" => &mut s.pgmajfault,
                _ => return,
            };
            set_u64(field, value, &mut malformed);
        });
        s.malformed = malformed;
        s
    }

    /// v1: the `total_*` keys, which include descendants like v2's counters do.
    pub fn parse_v1(text: &str) -> Self {
        let mut s = Self::default();
        let mut malformed = 0;
        for_each_pair(text, |key, value| {
            let field = match key {
                "total_rss" => &mut s.anon,
                "total_cache" => &mut s.file,
                "total_inactive_file" => &mut s.inactive_file,
                "total_active_file" => &mut s.active_file,
                "total_mapped_file" => &mut s.mapped_file,
                "total_shmem" => &mut s.shmem,
                "total_pgfault" => &mut s.pgfault,
                "total_pgmajfault" => &mut s.pgmajfault,
                "total_swap" => &mut s.swap,
                _ => return,
            };
            set_u64(field, value, &mut malformed);
        });
        s.malformed = malformed;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real v1 memory.stat of a test cgroup on our 6.18 hybrid host.
    const V1: &str = include_str!("../../testdata/hybrid-v1-6.18/memory/captest/memory.stat");

    #[test]
    fn v1_takes_total_keys_not_local_ones() {
        let s = MemoryStat::parse_v1(V1);
        assert_eq!(s.file, Some(9_506_816));
        assert_eq!(s.anon, Some(0));
        assert_eq!(s.inactive_file, Some(9_121_792));
        assert_eq!(s.pgfault, Some(16_570));
        assert_eq!(s.pgmajfault, Some(10));
        assert_eq!(s.swap, Some(0));
        assert_eq!(s.malformed, 0);
    }

    #[test]
    fn v2_keys() {
        let s = MemoryStat::parse_v2(
            "anon 2125824\nfile 4096\nkernel 299008\nkernel_stack 16384\nshmem 0\n\
             file_mapped 0\ninactive_anon 2117632\nactive_anon 8192\ninactive_file 4096\n\
             active_file 0\npgfault 1099\npgmajfault 0\n",
        );
        assert_eq!(s.anon, Some(2_125_824));
        assert_eq!(s.inactive_file, Some(4096));
        assert_eq!(s.pgfault, Some(1099));
        assert_eq!(s.swap, None);
    }

    #[test]
    fn v2_parser_ignores_v1_keys_and_vice_versa() {
        assert_eq!(MemoryStat::parse_v2(V1).anon, None);
        assert_eq!(MemoryStat::parse_v1("anon 5\n").anon, None);
    }

    #[test]
    fn malformed_values_are_absent_and_counted() {
        let s = MemoryStat::parse_v2("anon -1\nfile 12x\npgfault 7\n\n \nanon\n");
        assert_eq!((s.anon, s.file, s.pgfault), (None, None, Some(7)));
        assert_eq!(s.malformed, 2);
    }
}
