//! The memory, pids and io controllers of one cgroup, and its pressure (PSI) files: each read
//! from v1 where the controller is mounted there and the cgroup exists in it, else cgroup2.

use std::ffi::CStr;

use super::{CgroupReader, Hierarchy, note_error};
use crate::cgroupfs::{
    memory_stat::MemoryStat,
    parse::{self, Io, Limit, Psi, for_each_pair, set_u64},
    reading::{CgroupReading, MemoryReading, PidsReading, Source},
};

impl CgroupReader {
    pub(super) fn read_memory(&mut self, r: &mut CgroupReading) {
        use Hierarchy::{Memory, V2};
        let errors = &mut r.read_errors;
        if self.in_v1(Memory)
            && let Some(usage) = self.text(Memory, c"memory.usage_in_bytes", errors)
        {
            let usage_bytes = parse::single_u64(usage);
            let stat = self
                .text(Memory, c"memory.stat", errors)
                .map(MemoryStat::parse_v1)
                .unwrap_or_default();
            let limit = self
                .text(Memory, c"memory.limit_in_bytes", errors)
                .and_then(Limit::parse);
            let reservation = self
                .text(Memory, c"memory.soft_limit_in_bytes", errors)
                .and_then(Limit::parse);
            let oom_kill_events = self
                .text(Memory, c"memory.oom_control", errors)
                .and_then(|t| key_u64(t, "oom_kill"));
            r.malformed += stat.malformed;
            r.memory = Some(MemoryReading {
                usage_bytes,
                stat,
                limit,
                reservation,
                swap_bytes: stat.swap,
                // memory.memsw.limit_in_bytes bounds memory plus swap: not a swap limit, and
                // the model has no field for it (see formulas::swap).
                swap_limit: None,
                oom_events: None,
                oom_kill_events,
            });
            r.memory_source = Source::V1;
            return;
        }
        if !self.v2_controllers.memory {
            return;
        }
        // The v2 root has memory.stat but no memory.current; other cgroups have both or neither.
        let usage_bytes = self
            .text(V2, c"memory.current", errors)
            .map(parse::single_u64);
        let stat = self
            .text(V2, c"memory.stat", errors)
            .map(MemoryStat::parse_v2);
        if usage_bytes.is_none() && stat.is_none() {
            return;
        }
        let usage_bytes = usage_bytes.flatten();
        let stat = stat.unwrap_or_default();
        let limit = self.text(V2, c"memory.max", errors).and_then(Limit::parse);
        let reservation = self.text(V2, c"memory.min", errors).and_then(Limit::parse);
        let swap_bytes = self
            .text(V2, c"memory.swap.current", errors)
            .and_then(parse::single_u64);
        let swap_limit = self
            .text(V2, c"memory.swap.max", errors)
            .and_then(Limit::parse);
        let (oom_events, oom_kill_events) = self
            .text(V2, c"memory.events", errors)
            .map_or((None, None), |t| {
                (key_u64(t, "oom"), key_u64(t, "oom_kill"))
            });
        r.malformed += stat.malformed;
        r.memory = Some(MemoryReading {
            usage_bytes,
            stat,
            limit,
            reservation,
            swap_bytes,
            swap_limit,
            oom_events,
            oom_kill_events,
        });
        r.memory_source = Source::V2;
    }

    pub(super) fn read_pids(&mut self, r: &mut CgroupReading) {
        let h = if self.in_v1(Hierarchy::Pids) {
            Hierarchy::Pids
        } else if self.v2_controllers.pids {
            Hierarchy::V2
        } else {
            return;
        };
        let current = self
            .text(h, c"pids.current", &mut r.read_errors)
            .and_then(parse::single_u64);
        let max = self
            .text(h, c"pids.max", &mut r.read_errors)
            .and_then(Limit::parse);
        if current.is_some() || max.is_some() {
            r.pids = Some(PidsReading { current, max });
        }
    }

    pub(super) fn read_io(&mut self, r: &mut CgroupReading) {
        let mut malformed = 0;
        if self.in_v1(Hierarchy::Blkio) {
            // The recursive file includes descendants, like every other counter here; older
            // kernels only have the local one.
            let mut pairs = |recursive: &'static CStr, local: &'static CStr, errors: &mut u32| {
                for name in [recursive, local] {
                    if let Some(t) = self.text(Hierarchy::Blkio, name, errors) {
                        return Some(Io::parse_v1_pairs(t, &mut malformed));
                    }
                }
                None
            };
            let bytes = pairs(
                c"blkio.throttle.io_service_bytes_recursive",
                c"blkio.throttle.io_service_bytes",
                &mut r.read_errors,
            );
            let ops = pairs(
                c"blkio.throttle.io_serviced_recursive",
                c"blkio.throttle.io_serviced",
                &mut r.read_errors,
            );
            if let (Some((rb, wb)), Some((ro, wo))) = (bytes, ops) {
                r.io = Some(Io {
                    read_bytes: rb,
                    write_bytes: wb,
                    read_ops: ro,
                    write_ops: wo,
                });
                r.malformed += malformed;
                return;
            }
        }
        if !self.v2_controllers.io {
            return;
        }
        r.io = self
            .text(Hierarchy::V2, c"io.stat", &mut r.read_errors)
            .map(|t| Io::parse_v2(t, &mut malformed));
        r.malformed += malformed;
    }

    pub(super) fn psi(&mut self, name: &'static CStr, errors: &mut u32) -> Option<Psi> {
        // ENOTSUP (PSI disabled at boot) reads as an error: absent, like kubelet.
        match self.file(Hierarchy::V2, name) {
            Ok(text) => text.map(Psi::parse),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => None,
            Err(e) => {
                note_error(&mut self.fault, name, e, errors);
                None
            }
        }
    }
}

/// `key value` lookup for small files such as memory.events.
fn key_u64(text: &str, key: &str) -> Option<u64> {
    let mut found = None;
    let mut malformed = 0;
    for_each_pair(text, |k, v| {
        if k == key {
            set_u64(&mut found, v, &mut malformed);
        }
    });
    found
}
