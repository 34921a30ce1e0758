//! cpu/memory/io.pressure: never panics; averages are finite and non-negative when present.
#![no_main]

use collector::cgroupfs::parse::Psi;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let psi = Psi::parse(text);
    for data in [psi.some, psi.full].into_iter().flatten() {
        for avg in [data.avg10, data.avg60, data.avg300] {
            assert!(avg.is_finite() && avg >= 0.0, "{avg}");
        }
    }
});
