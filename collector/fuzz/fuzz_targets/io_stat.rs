//! io.stat (v2) and blkio throttle pairs (v1): never panic, sums saturate.
#![no_main]

use collector::cgroupfs::parse::Io;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let mut malformed = 0;
    let _ = Io::parse_v2(text, &mut malformed);
    let words = text.split_whitespace().count();
    assert!(malformed as usize <= words);
    let mut malformed = 0;
    let _ = Io::parse_v1_pairs(text, &mut malformed);
    assert!(malformed as usize <= text.lines().count());
});
