//! Single-value files (memory.max, cpu.max, pids.current, cgroup.procs): never panic; a limit
//! is either unlimited or at most 2^62, like kubelet's rule.
#![no_main]

use collector::cgroupfs::parse::{CpuMax, Limit, count_lines, single_u64};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Some(bytes) = Limit::parse(text).and_then(Limit::bytes) {
        assert!(bytes <= 1 << 62);
    }
    if let Some(max) = CpuMax::parse(text) {
        assert!(text.contains(&max.period_us.to_string()));
    }
    let _ = single_u64(text);
    assert!(count_lines(text) as usize <= text.lines().count());
});
