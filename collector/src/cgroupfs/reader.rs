//! Reads one cgroup's files: each controller from the hierarchy it is mounted in.
//!
//! On hybrid hosts the v1 controllers (memory, cpu, cpuacct, pids, blkio) hold the numbers and
//! cgroup2 has only its core files; on pure v2 nodes everything is in cgroup2. A controller is
//! read from v1 when it is mounted there and the cgroup exists in that hierarchy (kubelet creates
//! the same relative path in each), otherwise from cgroup2. Controller files that cgroup2 cannot
//! have (its root's `cgroup.controllers` lacks the controller) are not even tried.

use std::{ffi::CStr, io, os::fd::OwnedFd, path::PathBuf};

use super::{
    CgroupMounts, CpuStat,
    files::{FileBuffer, Root},
    memory_stat::MemoryStat,
    parse::{self, CpuMax, Io, Limit, Psi, for_each_pair, set_u64},
    reading::{CgroupReading, CpuReading, MemoryReading, PidsReading, Source},
};

/// v1 reports cpuacct.stat in USER_HZ ticks, which is 100 on every Linux ABI.
const NS_PER_USER_HZ_TICK: u64 = 10_000_000;

/// The cgroup was removed while being read.
#[derive(Debug)]
pub struct Vanished;

/// The hierarchies a reading draws from. cpu and cpuacct are usually co-mounted; they are kept
/// apart because they need not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hierarchy {
    V2,
    Memory,
    Cpu,
    Cpuacct,
    Pids,
    Blkio,
}

const HIERARCHIES: [Hierarchy; 6] = [
    Hierarchy::V2,
    Hierarchy::Memory,
    Hierarchy::Cpu,
    Hierarchy::Cpuacct,
    Hierarchy::Pids,
    Hierarchy::Blkio,
];

/// The cgroup being read, opened once in each hierarchy it exists in.
#[derive(Default)]
struct Dirs([Option<OwnedFd>; 6]);

/// Which v2 controllers the hierarchy offers (from its root's `cgroup.controllers`). Unknown
/// (file unreadable, e.g. a fixture tree) means "try everything".
#[derive(Debug, Clone, Copy)]
struct V2Controllers {
    cpu: bool,
    memory: bool,
    pids: bool,
    io: bool,
}

impl V2Controllers {
    const ALL: Self = Self {
        cpu: true,
        memory: true,
        pids: true,
        io: true,
    };

    fn parse(text: &str) -> Self {
        let has = |c: &str| text.split_whitespace().any(|w| w == c);
        Self {
            cpu: has("cpu"),
            memory: has("memory"),
            pids: has("pids"),
            io: has("io"),
        }
    }
}

pub struct CgroupReader {
    /// Indexed by `Hierarchy`; `None` where that v1 controller is not mounted.
    roots: [Option<Root>; 6],
    /// For co-mounted v1 controllers (cpu,cpuacct): the earlier hierarchy with the same mount,
    /// whose directory handle is shared instead of opened twice.
    same_mount_as: [Option<Hierarchy>; 6],
    v2_controllers: V2Controllers,
    dirs: Dirs,
    buf: FileBuffer,
}

impl CgroupReader {
    pub fn new(v2: PathBuf, mounts: &CgroupMounts) -> Self {
        let v1 = |c: &str| mounts.v1.get(c).cloned().map(Root::new);
        let roots = [
            Some(Root::new(v2)),
            v1("memory"),
            v1("cpu"),
            v1("cpuacct"),
            v1("pids"),
            v1("blkio"),
        ];
        let path = |h: Hierarchy| roots[h as usize].as_ref().map(Root::path);
        let same_mount_as = HIERARCHIES.map(|h| {
            let earlier = &HIERARCHIES[..h as usize];
            path(h).and_then(|p| earlier.iter().copied().find(|&e| path(e) == Some(p)))
        });
        Self {
            roots,
            same_mount_as,
            v2_controllers: V2Controllers::ALL,
            dirs: Dirs::default(),
            buf: FileBuffer::default(),
        }
    }

    /// Re-reads which controllers cgroup2 offers; once per pass (one small file).
    pub fn refresh_controllers(&mut self) {
        let mut errors = 0;
        self.v2_controllers = match self.open_dirs("") {
            Ok(()) => match self.text(Hierarchy::V2, c"cgroup.controllers", &mut errors) {
                Some(text) => V2Controllers::parse(text),
                None => V2Controllers::ALL,
            },
            Err(Vanished) => V2Controllers::ALL,
        };
    }

    /// Reads everything for the cgroup at `relative` (e.g. `/kubepods.slice/…`).
    pub fn read(&mut self, relative: &str) -> Result<CgroupReading, Vanished> {
        let rel = relative.trim_start_matches('/');
        let mut r = CgroupReading::default();
        self.open_dirs(rel)?;
        // cgroup2's cpu.stat is a core file of every cgroup: its absence means the cgroup is gone.
        let v2_cpu = match self.file(Hierarchy::V2, c"cpu.stat") {
            Ok(Some(text)) => Some(CpuStat::parse(text)),
            Ok(None) => return Err(Vanished),
            Err(_) => {
                r.read_errors += 1;
                None
            }
        };
        self.read_cpu(v2_cpu, &mut r);
        self.read_memory(&mut r);
        self.read_pids(&mut r);
        self.read_io(&mut r);
        r.cpu_psi = self.psi(c"cpu.pressure", &mut r.read_errors);
        r.memory_psi = self.psi(c"memory.pressure", &mut r.read_errors);
        r.io_psi = self.psi(c"io.pressure", &mut r.read_errors);
        if let Some(procs) = self.text(Hierarchy::V2, c"cgroup.procs", &mut r.read_errors) {
            r.processes = Some(parse::count_lines(procs));
            r.first_pid = procs.lines().find_map(|l| l.trim().parse().ok());
        }
        self.dirs = Dirs::default();
        Ok(r)
    }

    /// Opens the cgroup's directory in every hierarchy; `Vanished` when cgroup2 has none.
    fn open_dirs(&mut self, rel: &str) -> Result<(), Vanished> {
        let mut dirs = Dirs::default();
        for h in HIERARCHIES {
            let Some(root) = self.roots[h as usize].as_mut() else {
                continue;
            };
            if self.same_mount_as[h as usize].is_some() {
                continue; // read through the co-mounted hierarchy's handle
            }
            dirs.0[h as usize] = root.open(rel, self.buf.name_scratch()).ok().flatten();
        }
        if dirs.0[Hierarchy::V2 as usize].is_none() {
            return Err(Vanished);
        }
        self.dirs = dirs;
        Ok(())
    }

    /// `Ok(None)` when the cgroup is not in that hierarchy or the file does not exist.
    fn file(&mut self, h: Hierarchy, name: &CStr) -> io::Result<Option<&str>> {
        let h = self.same_mount_as[h as usize].unwrap_or(h);
        match self.dirs.0[h as usize].as_ref() {
            Some(dir) => self.buf.read(dir, name),
            None => Ok(None),
        }
    }

    /// The file's text, or `None` when it does not exist (counted when it exists but fails).
    fn text(&mut self, h: Hierarchy, name: &CStr, errors: &mut u32) -> Option<&str> {
        match self.file(h, name) {
            Ok(text) => text,
            Err(_) => {
                *errors += 1;
                None
            }
        }
    }

    fn in_v1(&self, h: Hierarchy) -> bool {
        let h = self.same_mount_as[h as usize].unwrap_or(h);
        self.dirs.0[h as usize].is_some()
    }

    fn read_cpu(&mut self, v2: Option<CpuStat>, r: &mut CgroupReading) {
        use Hierarchy::{Cpu, Cpuacct, V2};
        let us = |v: Option<u64>| v.map(|u| u.saturating_mul(1000));
        if let Some(s) = v2 {
            r.malformed += s.malformed;
            r.cpu = CpuReading {
                usage_ns: us(s.usage_usec),
                user_ns: us(s.user_usec),
                system_ns: us(s.system_usec),
                nr_periods: s.nr_periods,
                nr_throttled: s.nr_throttled,
                throttled_ns: us(s.throttled_usec),
                ..CpuReading::default()
            };
            r.cpu_source = Source::V2;
        }
        if self.v2_controllers.cpu {
            if let Some(max) = self
                .text(V2, c"cpu.max", &mut r.read_errors)
                .and_then(CpuMax::parse)
            {
                r.cpu.quota_us = max.quota_us;
                r.cpu.period_us = Some(max.period_us);
            }
            r.cpu.weight = self
                .text(V2, c"cpu.weight", &mut r.read_errors)
                .and_then(parse::single_u64);
        }

        // v1 cpuacct: usage in ns (finer than v2's µs) and user/system in ticks.
        if self.in_v1(Cpuacct)
            && let Some(text) = self.text(Cpuacct, c"cpuacct.usage", &mut r.read_errors)
        {
            r.cpu.usage_ns = parse::single_u64(text).or(r.cpu.usage_ns);
            r.cpu_source = Source::V1;
            if let Some(text) = self.text(Cpuacct, c"cpuacct.stat", &mut r.read_errors) {
                let (mut user, mut system, mut malformed) = (None, None, 0);
                for_each_pair(text, |k, v| match k {
                    "user" => set_u64(&mut user, v, &mut malformed),
                    "system" => set_u64(&mut system, v, &mut malformed),
                    _ => {}
                });
                r.malformed += malformed;
                let ticks = |t: Option<u64>| t.map(|t| t.saturating_mul(NS_PER_USER_HZ_TICK));
                r.cpu.user_ns = ticks(user).or(r.cpu.user_ns);
                r.cpu.system_ns = ticks(system).or(r.cpu.system_ns);
            }
        }
        // v1 cpu: throttling (throttled_time in ns) and CFS limits.
        if self.in_v1(Cpu)
            && let Some(text) = self.text(Cpu, c"cpu.stat", &mut r.read_errors)
        {
            let (mut periods, mut throttled, mut time, mut malformed) = (None, None, None, 0);
            for_each_pair(text, |k, v| match k {
                "nr_periods" => set_u64(&mut periods, v, &mut malformed),
                "nr_throttled" => set_u64(&mut throttled, v, &mut malformed),
                "throttled_time" => set_u64(&mut time, v, &mut malformed),
                _ => {}
            });
            r.malformed += malformed;
            r.cpu.nr_periods = periods.or(r.cpu.nr_periods);
            r.cpu.nr_throttled = throttled.or(r.cpu.nr_throttled);
            r.cpu.throttled_ns = time.or(r.cpu.throttled_ns);
            let quota = self
                .text(Cpu, c"cpu.cfs_quota_us", &mut r.read_errors)
                .and_then(|t| t.trim().parse::<i64>().ok());
            if let Some(q) = quota {
                // -1 means unlimited.
                r.cpu.quota_us = u64::try_from(q).ok();
            }
            r.cpu.period_us = self
                .text(Cpu, c"cpu.cfs_period_us", &mut r.read_errors)
                .and_then(parse::single_u64)
                .or(r.cpu.period_us);
            r.cpu.shares = self
                .text(Cpu, c"cpu.shares", &mut r.read_errors)
                .and_then(parse::single_u64);
        }
    }

    fn read_memory(&mut self, r: &mut CgroupReading) {
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
            let swap_limit = self
                .text(Memory, c"memory.memsw.limit_in_bytes", errors)
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
                swap_limit,
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

    fn read_pids(&mut self, r: &mut CgroupReading) {
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

    fn read_io(&mut self, r: &mut CgroupReading) {
        let mut malformed = 0;
        if self.in_v1(Hierarchy::Blkio) {
            // The recursive file includes descendants, like every other counter here; older
            // kernels only have the local one.
            let mut pairs = |recursive: &CStr, local: &CStr, errors: &mut u32| {
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

    fn psi(&mut self, name: &CStr, errors: &mut u32) -> Option<Psi> {
        // ENOTSUP (PSI disabled at boot) reads as an error: absent, like kubelet.
        match self.file(Hierarchy::V2, name) {
            Ok(text) => text.map(Psi::parse),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => None,
            Err(_) => {
                *errors += 1;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cgroupfs::parse::PsiData;

    /// Real files of one cgroup on our 6.18 hybrid host (memory/cpu/cpuacct/pids/blkio in v1,
    /// cgroup2 with no controllers): a process touched 20 MiB, wrote an 8 MiB file and spun for
    /// 1 s under a 64 MiB limit and a 50 ms/100 ms quota.
    fn hybrid_reader() -> CgroupReader {
        let base = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/hybrid-v1-6.18"
        ));
        let v1: BTreeMap<String, PathBuf> = ["memory", "cpu", "cpuacct", "pids", "blkio"]
            .iter()
            .map(|c| (c.to_string(), base.join(c)))
            .collect();
        let mounts = CgroupMounts {
            v2: Some(base.join("unified")),
            v1,
        };
        CgroupReader::new(base.join("unified"), &mounts)
    }

    #[test]
    fn hybrid_host_takes_each_controller_from_its_mount() {
        let r = hybrid_reader().read("/captest").unwrap();
        assert_eq!(r.cpu_source, Source::V1);
        assert_eq!(r.cpu.usage_ns, Some(620_016_202)); // cpuacct.usage (v2 said 620016 µs)
        assert_eq!(r.cpu.user_ns, Some(550_000_000)); // 55 ticks
        assert_eq!(r.cpu.system_ns, Some(60_000_000));
        assert_eq!(r.cpu.nr_periods, Some(15));
        assert_eq!(r.cpu.nr_throttled, Some(12));
        assert_eq!(r.cpu.throttled_ns, Some(592_502_854));
        assert_eq!(r.cpu.quota_us, Some(50_000));
        assert_eq!(r.cpu.period_us, Some(100_000));
        assert_eq!(r.cpu.shares, Some(1024));

        assert_eq!(r.memory_source, Source::V1);
        let m = r.memory.unwrap();
        assert_eq!(m.usage_bytes, Some(9_797_632));
        assert_eq!(m.limit, Some(Limit::Value(67_108_864)));
        assert_eq!(m.stat.inactive_file, Some(9_121_792));
        assert_eq!(m.stat.pgfault, Some(16_570));
        assert_eq!(m.swap_bytes, Some(0));
        assert_eq!(m.swap_limit.and_then(Limit::bytes), None);
        assert_eq!(m.oom_kill_events, Some(0));

        let pids = r.pids.unwrap();
        assert_eq!((pids.current, pids.max), (Some(0), Some(Limit::Max)));
        assert_eq!(r.io, Some(Io::default()));

        // PSI comes from cgroup2 even on a hybrid host.
        let cpu_psi = r.cpu_psi.unwrap();
        assert_eq!(
            cpu_psi.some,
            Some(PsiData {
                avg10: 4.15,
                avg60: 0.88,
                avg300: 0.18,
                total_us: 578_879
            })
        );
        assert_eq!(r.io_psi.unwrap().full.unwrap().total_us, 4031);
        assert_eq!((r.malformed, r.read_errors), (0, 0));
    }

    #[test]
    fn a_cgroup_only_in_v2_falls_back_to_v2_files() {
        // The root exists in every hierarchy; a v2-only child must not borrow v1 numbers.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("only-v2")).unwrap();
        std::fs::write(dir.path().join("only-v2/cpu.stat"), "usage_usec 7\n").unwrap();
        let mut mounts = CgroupMounts {
            v2: Some(dir.path().into()),
            ..CgroupMounts::default()
        };
        mounts
            .v1
            .insert("memory".into(), dir.path().join("no-such-v1"));
        let r = CgroupReader::new(dir.path().into(), &mounts)
            .read("/only-v2")
            .unwrap();
        assert_eq!(r.cpu_source, Source::V2);
        assert_eq!(r.cpu.usage_ns, Some(7000));
        assert_eq!(r.memory, None);
        assert_eq!(r.cpu_psi, None);
    }

    #[test]
    fn removed_cgroup_is_vanished() {
        assert!(hybrid_reader().read("/no-such-cgroup").is_err());
    }
}
