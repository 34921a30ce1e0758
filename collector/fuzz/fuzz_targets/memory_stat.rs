//! memory.stat (v2 and v1) through kubelet's formulas: never panics, the working set never
//! exceeds usage, available never exceeds the limit.
#![no_main]

use collector::{
    cgroupfs::{memory_stat::MemoryStat, parse::Limit},
    summary::formulas::{available, working_set},
};
use libfuzzer_sys::fuzz_target;

// Input: memory.current on the first line, memory.max on the second, memory.stat after, so
// the seeds are plain text a person can read.
fuzz_target!(|text: &str| {
    let mut parts = text.splitn(3, '\n');
    let usage_text = parts.next().unwrap_or("");
    let limit_text = parts.next().unwrap_or("");
    let stat_text = parts.next().unwrap_or("");
    let usage = collector::cgroupfs::parse::single_u64(usage_text);
    let limit = Limit::parse(limit_text).and_then(Limit::bytes);
    for stat in [MemoryStat::parse_v2(stat_text), MemoryStat::parse_v1(stat_text)] {
        assert!(stat.malformed as usize <= stat_text.lines().count());
        let ws = working_set(usage, stat.inactive_file);
        if let (Some(ws), Some(usage)) = (ws, usage) {
            assert!(ws <= usage);
        }
        if let (Some(avail), Some(limit)) = (available(limit, ws), limit) {
            assert!(avail <= limit);
        }
        // Root v2 has no memory.current: usage from anon + file must not overflow.
        let _ = stat.anon.zip(stat.file).map(|(a, f)| a.saturating_add(f));
    }
});
