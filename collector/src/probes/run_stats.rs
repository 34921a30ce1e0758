//! The programs' own cost from the kernel's bpf_stats (BPF_ENABLE_STATS): run count and total
//! run time of every loaded program, reported as the collector's own metrics.

use std::os::fd::OwnedFd;

use aya::{Ebpf, sys};

/// One program's counters since stats were enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramRunStats {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

impl ProgramRunStats {
    pub fn average_ns(&self) -> Option<u64> {
        (self.run_count > 0).then(|| self.run_time_ns / self.run_count)
    }
}

/// Keeps run-time statistics enabled for as long as it lives (the kernel counts while any
/// BPF_ENABLE_STATS descriptor is open, for every program on the machine).
pub struct RunStats {
    _enabled: OwnedFd,
}

impl RunStats {
    /// `Err` when the kernel or our privileges do not allow it.
    pub fn enable() -> Result<Self, sys::SyscallError> {
        sys::enable_stats(sys::Stats::RunTime).map(|fd| Self { _enabled: fd })
    }

    /// Counters of every loaded program of `ebpf`, by name (programs of an object that are not
    /// loaded, such as the OOM variant this kernel does not need, are left out).
    pub fn read(&self, ebpf: &Ebpf) -> Vec<ProgramRunStats> {
        let mut out: Vec<ProgramRunStats> = ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let info = prog.info().ok()?;
                Some(ProgramRunStats {
                    name: name.to_owned(),
                    run_count: info.run_count(),
                    run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
