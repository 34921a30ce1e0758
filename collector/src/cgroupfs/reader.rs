//! Reads one cgroup's files: each controller from the hierarchy it is mounted in.
//!
//! On hybrid hosts the v1 controllers (memory, cpu, cpuacct, pids, blkio) hold the numbers and
//! cgroup2 has only its core files; on pure v2 nodes everything is in cgroup2. A controller is
//! read from v1 when it is mounted there and the cgroup exists in that hierarchy (kubelet creates
//! the same relative path in each), otherwise from cgroup2.

use std::{
    fs::File,
    io::{self, Read as _},
    path::{Path, PathBuf},
};

use super::{
    CgroupMounts, CpuStat,
    memory_stat::MemoryStat,
    parse::{self, CpuMax, Io, Limit, Psi, for_each_pair, set_u64},
    reading::{CgroupReading, CpuReading, MemoryReading, PidsReading, Source},
};

/// v1 reports cpuacct.stat in USER_HZ ticks, which is 100 on every Linux ABI.
const NS_PER_USER_HZ_TICK: u64 = 10_000_000;

/// The cgroup was removed while being read.
#[derive(Debug)]
pub struct Vanished;

/// Where each hierarchy is mounted.
struct Roots {
    v2: PathBuf,
    memory_v1: Option<PathBuf>,
    cpu_v1: Option<PathBuf>,
    cpuacct_v1: Option<PathBuf>,
    pids_v1: Option<PathBuf>,
    blkio_v1: Option<PathBuf>,
}

/// One path buffer and one text buffer, reused for every file of a pass.
struct Scratch {
    path: PathBuf,
    buf: String,
}

pub struct CgroupReader {
    roots: Roots,
    scratch: Scratch,
}

impl CgroupReader {
    pub fn new(v2: PathBuf, mounts: &CgroupMounts) -> Self {
        let v1 = |c: &str| mounts.v1.get(c).cloned();
        Self {
            roots: Roots {
                v2,
                memory_v1: v1("memory"),
                cpu_v1: v1("cpu"),
                cpuacct_v1: v1("cpuacct"),
                pids_v1: v1("pids"),
                blkio_v1: v1("blkio"),
            },
            scratch: Scratch {
                path: PathBuf::with_capacity(256),
                buf: String::with_capacity(4096),
            },
        }
    }

    /// Reads everything for the cgroup at `relative` (e.g. `/kubepods.slice/…`).
    pub fn read(&mut self, relative: &str) -> Result<CgroupReading, Vanished> {
        let rel = relative.trim_start_matches('/');
        let mut r = CgroupReading::default();
        // cgroup2's cpu.stat is a core file of every cgroup: its absence means the cgroup is gone.
        let v2_cpu = match self.scratch.file(&self.roots.v2, rel, "cpu.stat") {
            Ok(true) => Some(CpuStat::parse(&self.scratch.buf)),
            Ok(false) => return Err(Vanished),
            Err(_) => {
                r.read_errors += 1;
                None
            }
        };
        self.read_cpu(rel, v2_cpu, &mut r);
        self.read_memory(rel, &mut r);
        self.read_pids(rel, &mut r);
        self.read_io(rel, &mut r);
        r.cpu_psi = self.psi(rel, "cpu.pressure", &mut r.read_errors);
        r.memory_psi = self.psi(rel, "memory.pressure", &mut r.read_errors);
        r.io_psi = self.psi(rel, "io.pressure", &mut r.read_errors);
        r.processes = self
            .scratch
            .read_text(&self.roots.v2, rel, "cgroup.procs", &mut r.read_errors)
            .map(parse::count_lines);
        Ok(r)
    }

    fn read_cpu(&mut self, rel: &str, v2: Option<CpuStat>, r: &mut CgroupReading) {
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
        if let Some(text) =
            self.scratch
                .read_text(&self.roots.v2, rel, "cpu.max", &mut r.read_errors)
            && let Some(max) = CpuMax::parse(text)
        {
            r.cpu.quota_us = max.quota_us;
            r.cpu.period_us = Some(max.period_us);
        }
        r.cpu.weight = self
            .scratch
            .read_text(&self.roots.v2, rel, "cpu.weight", &mut r.read_errors)
            .and_then(parse::single_u64);

        // v1 cpuacct: usage in ns (finer than v2's µs) and user/system in ticks.
        if let Some(root) = &self.roots.cpuacct_v1
            && let Some(text) =
                self.scratch
                    .read_text(root, rel, "cpuacct.usage", &mut r.read_errors)
        {
            r.cpu.usage_ns = parse::single_u64(text).or(r.cpu.usage_ns);
            r.cpu_source = Source::V1;
            if let Some(text) =
                self.scratch
                    .read_text(root, rel, "cpuacct.stat", &mut r.read_errors)
            {
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
        if let Some(root) = &self.roots.cpu_v1
            && let Some(text) = self
                .scratch
                .read_text(root, rel, "cpu.stat", &mut r.read_errors)
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
                .scratch
                .read_text(root, rel, "cpu.cfs_quota_us", &mut r.read_errors)
                .and_then(|t| t.trim().parse::<i64>().ok());
            if let Some(q) = quota {
                // -1 means unlimited.
                r.cpu.quota_us = u64::try_from(q).ok();
            }
            r.cpu.period_us = self
                .scratch
                .read_text(root, rel, "cpu.cfs_period_us", &mut r.read_errors)
                .and_then(parse::single_u64)
                .or(r.cpu.period_us);
            r.cpu.shares = self
                .scratch
                .read_text(root, rel, "cpu.shares", &mut r.read_errors)
                .and_then(parse::single_u64);
        }
    }

    fn read_memory(&mut self, rel: &str, r: &mut CgroupReading) {
        let errors = &mut r.read_errors;
        if let Some(root) = &self.roots.memory_v1
            && let Some(usage) = self
                .scratch
                .read_text(root, rel, "memory.usage_in_bytes", errors)
        {
            let usage_bytes = parse::single_u64(usage);
            let stat = self
                .scratch
                .read_text(root, rel, "memory.stat", errors)
                .map(MemoryStat::parse_v1)
                .unwrap_or_default();
            let limit = self
                .scratch
                .read_text(root, rel, "memory.limit_in_bytes", errors)
                .and_then(Limit::parse);
            let reservation = self
                .scratch
                .read_text(root, rel, "memory.soft_limit_in_bytes", errors)
                .and_then(Limit::parse);
            let swap_limit = self
                .scratch
                .read_text(root, rel, "memory.memsw.limit_in_bytes", errors)
                .and_then(Limit::parse);
            let oom_kill_events = self
                .scratch
                .read_text(root, rel, "memory.oom_control", errors)
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
        // The v2 root has memory.stat but no memory.current; other cgroups have both or neither.
        let usage_bytes = self
            .scratch
            .read_text(&self.roots.v2, rel, "memory.current", errors)
            .map(parse::single_u64);
        let stat = self
            .scratch
            .read_text(&self.roots.v2, rel, "memory.stat", errors)
            .map(MemoryStat::parse_v2);
        if usage_bytes.is_none() && stat.is_none() {
            return;
        }
        let usage_bytes = usage_bytes.flatten();
        let stat = stat.unwrap_or_default();
        let limit = self
            .scratch
            .read_text(&self.roots.v2, rel, "memory.max", errors)
            .and_then(Limit::parse);
        let reservation = self
            .scratch
            .read_text(&self.roots.v2, rel, "memory.min", errors)
            .and_then(Limit::parse);
        let swap_bytes = self
            .scratch
            .read_text(&self.roots.v2, rel, "memory.swap.current", errors)
            .and_then(parse::single_u64);
        let swap_limit = self
            .scratch
            .read_text(&self.roots.v2, rel, "memory.swap.max", errors)
            .and_then(Limit::parse);
        let (oom_events, oom_kill_events) = self
            .scratch
            .read_text(&self.roots.v2, rel, "memory.events", errors)
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

    fn read_pids(&mut self, rel: &str, r: &mut CgroupReading) {
        let root = match &self.roots.pids_v1 {
            Some(v1) if self.scratch.exists(v1, rel, "pids.current") => v1,
            _ => &self.roots.v2,
        };
        let current = self
            .scratch
            .read_text(root, rel, "pids.current", &mut r.read_errors)
            .and_then(parse::single_u64);
        let max = self
            .scratch
            .read_text(root, rel, "pids.max", &mut r.read_errors)
            .and_then(Limit::parse);
        if current.is_some() || max.is_some() {
            r.pids = Some(PidsReading { current, max });
        }
    }

    fn read_io(&mut self, rel: &str, r: &mut CgroupReading) {
        let mut malformed = 0;
        if let Some(root) = &self.roots.blkio_v1 {
            let scratch = &mut self.scratch;
            // The recursive file includes descendants, like every other counter here; older
            // kernels only have the local one.
            let mut pairs = |recursive: &str, local: &str, errors: &mut u32| {
                if let Some(t) = scratch.read_text(root, rel, recursive, errors) {
                    return Some(Io::parse_v1_pairs(t, &mut malformed));
                }
                scratch
                    .read_text(root, rel, local, errors)
                    .map(|t| Io::parse_v1_pairs(t, &mut malformed))
            };
            let bytes = pairs(
                "blkio.throttle.io_service_bytes_recursive",
                "blkio.throttle.io_service_bytes",
                &mut r.read_errors,
            );
            let ops = pairs(
                "blkio.throttle.io_serviced_recursive",
                "blkio.throttle.io_serviced",
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
        r.io = self
            .scratch
            .read_text(&self.roots.v2, rel, "io.stat", &mut r.read_errors)
            .map(|t| Io::parse_v2(t, &mut malformed));
        r.malformed += malformed;
    }

    fn psi(&mut self, rel: &str, file: &str, errors: &mut u32) -> Option<Psi> {
        // ENOTSUP (PSI disabled at boot) reads as an error: absent, like kubelet.
        match self.scratch.file(&self.roots.v2, rel, file) {
            Ok(true) => Some(Psi::parse(&self.scratch.buf)),
            Ok(false) => None,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => None,
            Err(_) => {
                *errors += 1;
                None
            }
        }
    }
}

impl Scratch {
    /// The file's text, or `None` when it does not exist (counted when it exists but fails).
    fn read_text(&mut self, root: &Path, rel: &str, file: &str, errors: &mut u32) -> Option<&str> {
        match self.file(root, rel, file) {
            Ok(true) => Some(&self.buf),
            Ok(false) => None,
            Err(_) => {
                *errors += 1;
                None
            }
        }
    }

    /// Reads `root/rel/file` into the buffer. Ok(false) when it does not exist.
    fn file(&mut self, root: &Path, rel: &str, file: &str) -> io::Result<bool> {
        self.set_path(root, rel, file);
        self.buf.clear();
        let result = File::open(&self.path).and_then(|mut f| f.read_to_string(&mut self.buf));
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            // A file that is not UTF-8 is garbage, not an I/O failure: parse what we can't.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                self.buf.clear();
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    fn exists(&mut self, root: &Path, rel: &str, file: &str) -> bool {
        self.set_path(root, rel, file);
        self.path.exists()
    }

    fn set_path(&mut self, root: &Path, rel: &str, file: &str) {
        self.path.clear();
        self.path.push(root);
        if !rel.is_empty() {
            self.path.push(rel);
        }
        self.path.push(file);
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
