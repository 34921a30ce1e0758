//! Reads one cgroup's files: each controller from the hierarchy it is mounted in.
//!
//! On hybrid hosts the v1 controllers (memory, cpu, pids, blkio) hold the numbers and cgroup2
//! has only its core files; on pure v2 nodes everything is in cgroup2. A controller is read from
//! v1 when it is mounted there and the cgroup exists in that hierarchy (kubelet creates the same
//! relative path in each), otherwise from cgroup2. Controller files that cgroup2 cannot have
//! (its root's `cgroup.controllers` lacks the controller) are not even tried.
//!
//! Only what the model reports is read, and each value from one place: CPU time always from
//! cgroup2's `cpu.stat`, a core file of every cgroup that counts the same nanoseconds as v1's
//! cpuacct (both are charged from the scheduler's `sum_exec_runtime`), in microseconds, with
//! user and system time there in microseconds too rather than cpuacct.stat's 10 ms ticks; the
//! v1 cpu controller only for what cgroup2 lacks on hybrid hosts (throttling and limits). So
//! cpuacct is opened for the root alone, whose cgroup2 `cpu.stat` is not charged that way (the
//! kernel sums the per-CPU tick statistics for it, 1.5 % below cpuacct on our hybrid host), and
//! v1's memsw limit (memory plus swap, which the model does not report) is not read.

use std::{ffi::CStr, io, os::fd::OwnedFd, path::PathBuf};

use super::{
    CgroupMounts, CpuStat,
    costs::{self, FileCosts, Outcome},
    files::{FileBuffer, Root, Until},
    parse::{self, CpuMax, for_each_pair, set_u64},
    reading::{CgroupReading, CpuReading, Source},
};

/// Why a cgroup has no reading this pass.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The cgroup was removed while being read: it leaves the pass.
    #[error("the cgroup was removed while being read")]
    Vanished,
    /// The process could not look (out of file descriptors or memory, or permission denied
    /// on a cgroup directory). Nothing is known about the cgroup, so it must not be reported
    /// gone: the pass fails instead.
    #[error("{what}: {source}")]
    Fault { what: String, source: io::Error },
}

/// Errors that say a directory is not there (any more), as opposed to not readable by us.
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENODEV | libc::ENOTDIR)
    )
}

/// Errors that are about this process, not the file: every other open would fail as well.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}

/// The hierarchies a reading draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hierarchy {
    V2,
    Memory,
    Cpu,
    Pids,
    Blkio,
}

impl Hierarchy {
    fn name(self) -> &'static str {
        match self {
            Hierarchy::V2 => "cgroup2",
            Hierarchy::Memory => "memory",
            Hierarchy::Cpu => "cpu",
            Hierarchy::Pids => "pids",
            Hierarchy::Blkio => "blkio",
        }
    }
}

const HIERARCHIES: [Hierarchy; 5] = [
    Hierarchy::V2,
    Hierarchy::Memory,
    Hierarchy::Cpu,
    Hierarchy::Pids,
    Hierarchy::Blkio,
];

/// The cgroup being read, opened once in each hierarchy it exists in.
#[derive(Default)]
struct Dirs([Option<OwnedFd>; 5]);

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
    roots: [Option<Root>; 5],
    /// For co-mounted v1 controllers: the earlier hierarchy with the same mount, whose
    /// directory handle is shared instead of opened twice.
    same_mount_as: [Option<Hierarchy>; 5],
    v2_controllers: V2Controllers,
    dirs: Dirs,
    buf: FileBuffer,
    /// The first resource-exhaustion error of the cgroup being read: it fails the read.
    fault: Option<(&'static CStr, io::Error)>,
    /// Per-file costs, when measuring (the bench); `None` in the daemon.
    costs: Option<Box<FileCosts>>,
    /// v1 cpuacct's root, where mounted: the node's CPU time as cAdvisor reads it on v1.
    cpuacct_root: Option<Root>,
}

impl CgroupReader {
    pub fn new(v2: PathBuf, mounts: &CgroupMounts) -> Self {
        let v1 = |c: &str| mounts.v1.get(c).cloned().map(Root::new);
        let roots = [
            Some(Root::new(v2)),
            v1("memory"),
            v1("cpu"),
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
            fault: None,
            costs: None,
            cpuacct_root: mounts.v1.get("cpuacct").cloned().map(Root::new),
        }
    }

    /// Records what every file read from now on costs (see [`Self::file_costs`]).
    pub fn measure_files(&mut self) {
        self.costs = Some(Box::new(FileCosts::new(costs::clock_overhead())));
    }

    /// What the files read since [`Self::measure_files`] cost.
    pub fn file_costs(&self) -> Option<&FileCosts> {
        self.costs.as_deref()
    }

    /// Re-reads which controllers cgroup2 offers; once per pass (one small file).
    pub fn refresh_controllers(&mut self) {
        let mut errors = 0;
        self.v2_controllers = match self.open_dirs("") {
            Ok(()) => match self.text(Hierarchy::V2, c"cgroup.controllers", &mut errors) {
                Some(text) => V2Controllers::parse(text),
                None => V2Controllers::ALL,
            },
            // The pass's first read fails the same way and says why.
            Err(_) => V2Controllers::ALL,
        };
        self.fault = None;
    }

    /// Reads everything for the cgroup at `relative` (e.g. `/kubepods.slice/…`).
    pub fn read(&mut self, relative: &str) -> Result<CgroupReading, ReadError> {
        let started = self.costs.is_some().then(costs::thread_cpu);
        let result = self.read_cgroup(relative);
        if let (Some(costs), Some(started)) = (self.costs.as_deref_mut(), started) {
            costs.cgroups += 1;
            costs.read_time += costs::thread_cpu().saturating_sub(started);
        }
        result
    }

    fn read_cgroup(&mut self, relative: &str) -> Result<CgroupReading, ReadError> {
        let rel = relative.trim_start_matches('/');
        let mut r = CgroupReading::default();
        self.fault = None;
        self.open_dirs(rel)?;
        // cgroup2's cpu.stat is a core file of every cgroup: its absence means the cgroup is gone.
        let v2_cpu = match self.file(Hierarchy::V2, c"cpu.stat") {
            Ok(Some(text)) => Some(CpuStat::parse(text)),
            Ok(None) => {
                self.dirs = Dirs::default();
                return Err(ReadError::Vanished);
            }
            Err(e) => {
                note_error(&mut self.fault, c"cpu.stat", e, &mut r.read_errors);
                None
            }
        };
        self.read_cpu(v2_cpu, &mut r);
        if rel.is_empty() {
            self.read_root_cpuacct(&mut r);
        }
        self.read_memory(&mut r);
        self.read_pids(&mut r);
        self.read_io(&mut r);
        r.cpu_psi = self.psi(c"cpu.pressure", &mut r.read_errors);
        r.memory_psi = self.psi(c"memory.pressure", &mut r.read_errors);
        r.io_psi = self.psi(c"io.pressure", &mut r.read_errors);
        (r.processes, r.first_pid) = self.process_list(&mut r.read_errors);
        self.dirs = Dirs::default();
        match self.fault.take() {
            Some((file, source)) => Err(ReadError::Fault {
                what: format!("reading {} of {relative}", file.to_string_lossy()),
                source,
            }),
            None => Ok(r),
        }
    }

    /// How many processes `cgroup.procs` lists, and the first of them (whose start time and
    /// network namespace stand for the cgroup's): read to EOF, since the kernel hands out one
    /// page (~500 PIDs) per `read`.
    fn process_list(&mut self, errors: &mut u32) -> (Option<u64>, Option<u32>) {
        match self.raw(Hierarchy::V2, c"cgroup.procs", Until::Eof) {
            Ok(Some(text)) => (
                Some(parse::count_lines(text)),
                text.lines().find_map(|l| l.trim().parse().ok()),
            ),
            Ok(None) => (None, None),
            Err(e) => {
                note_error(&mut self.fault, c"cgroup.procs", e, errors);
                (None, None)
            }
        }
    }

    /// Opens the cgroup's directory in every hierarchy; `Vanished` when cgroup2 has none, a
    /// fault when one cannot be opened for another reason than not existing.
    fn open_dirs(&mut self, rel: &str) -> Result<(), ReadError> {
        let mut dirs = Dirs::default();
        for h in HIERARCHIES {
            let Some(root) = self.roots[h as usize].as_mut() else {
                continue;
            };
            if self.same_mount_as[h as usize].is_some() {
                continue; // read through the co-mounted hierarchy's handle
            }
            let started = self.costs.is_some().then(costs::thread_cpu);
            let opened = root.open(rel, self.buf.name_scratch());
            if let (Some(costs), Some(started)) = (self.costs.as_deref_mut(), started) {
                let outcome = match &opened {
                    Ok(Some(_)) => Outcome::Read { bytes: 0 },
                    Ok(None) => Outcome::Missing,
                    Err(_) => Outcome::Failed,
                };
                costs.record(
                    h.name(),
                    costs::DIRECTORY,
                    outcome,
                    costs::thread_cpu().saturating_sub(started),
                );
            }
            dirs.0[h as usize] = match opened {
                Ok(fd) => fd,
                Err(e) if is_gone(&e) => None,
                Err(source) => {
                    return Err(ReadError::Fault {
                        what: format!("opening {}/{rel}", root.path().display()),
                        source,
                    });
                }
            };
        }
        if dirs.0[Hierarchy::V2 as usize].is_none() {
            return Err(ReadError::Vanished);
        }
        self.dirs = dirs;
        Ok(())
    }

    /// `Ok(None)` when the cgroup is not in that hierarchy or the file does not exist.
    fn file(&mut self, h: Hierarchy, name: &'static CStr) -> io::Result<Option<&str>> {
        self.raw(h, name, Until::ShortRead)
    }

    /// Every file read goes through here (see [`read_file`]).
    fn raw(&mut self, h: Hierarchy, name: &'static CStr, until: Until) -> io::Result<Option<&str>> {
        let h = self.same_mount_as[h as usize].unwrap_or(h);
        read_file(
            &mut self.buf,
            self.dirs.0[h as usize].as_ref(),
            self.costs.as_deref_mut(),
            (h.name(), name),
            until,
        )
    }

    /// The file's text, or `None` when it does not exist (counted when it exists but fails).
    fn text(&mut self, h: Hierarchy, name: &'static CStr, errors: &mut u32) -> Option<&str> {
        let h = self.same_mount_as[h as usize].unwrap_or(h);
        // Fields apart, so that the text can be returned while the fault is noted.
        let read = read_file(
            &mut self.buf,
            self.dirs.0[h as usize].as_ref(),
            self.costs.as_deref_mut(),
            (h.name(), name),
            Until::ShortRead,
        );
        match read {
            Ok(text) => text,
            Err(e) => {
                note_error(&mut self.fault, name, e, errors);
                None
            }
        }
    }

    fn in_v1(&self, h: Hierarchy) -> bool {
        let h = self.same_mount_as[h as usize].unwrap_or(h);
        self.dirs.0[h as usize].is_some()
    }

    fn read_cpu(&mut self, v2: Option<CpuStat>, r: &mut CgroupReading) {
        use Hierarchy::{Cpu, V2};
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

    /// The root's CPU time from v1 cpuacct.usage (ns), where cpuacct is mounted: on a hybrid
    /// host that is the node's usage kubelet reports, charged like every other cgroup's
    /// (cgroup2's root `cpu.stat` is not; see the module's notes). One file, once a pass.
    fn read_root_cpuacct(&mut self, r: &mut CgroupReading) {
        let Some(root) = self.cpuacct_root.as_mut() else {
            return;
        };
        let dir = match root.open("", self.buf.name_scratch()) {
            Ok(dir) => dir,
            Err(e) => {
                note_error(&mut self.fault, c"cpuacct.usage", e, &mut r.read_errors);
                return;
            }
        };
        let read = read_file(
            &mut self.buf,
            dir.as_ref(),
            self.costs.as_deref_mut(),
            ("cpuacct", c"cpuacct.usage"),
            Until::ShortRead,
        );
        match read.map(|t| t.and_then(parse::single_u64)) {
            Ok(Some(ns)) => {
                r.cpu.usage_ns = Some(ns);
                r.cpu_source = Source::V1;
            }
            Ok(None) => {}
            Err(e) => note_error(&mut self.fault, c"cpuacct.usage", e, &mut r.read_errors),
        }
    }
}

/// Reads `name` in `dir` (`Ok(None)` when the cgroup is not in that hierarchy or the file does
/// not exist), recording what it cost when measuring.
fn read_file<'b>(
    buf: &'b mut FileBuffer,
    dir: Option<&OwnedFd>,
    costs: Option<&mut FileCosts>,
    (hierarchy, name): (&'static str, &'static CStr),
    until: Until,
) -> io::Result<Option<&'b str>> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let Some(costs) = costs else {
        return buf.read_until(dir, name, until);
    };
    let started = costs::thread_cpu();
    let result = buf.read_until(dir, name, until);
    let outcome = match &result {
        Ok(Some(text)) => Outcome::Read { bytes: text.len() },
        Ok(None) => Outcome::Missing,
        Err(_) => Outcome::Failed,
    };
    costs.record(
        hierarchy,
        name,
        outcome,
        costs::thread_cpu().saturating_sub(started),
    );
    result
}

/// A file that exists but cannot be read: counted, and kept as the read's fault when it is the
/// process that is out of resources (every other file would fail alike, so the reading would
/// be empty rather than wrong about one field).
fn note_error(
    fault: &mut Option<(&'static CStr, io::Error)>,
    name: &'static CStr,
    e: io::Error,
    errors: &mut u32,
) {
    *errors += 1;
    if is_resource_exhaustion(&e) && fault.is_none() {
        *fault = Some((name, e));
    }
}

#[path = "reader_controllers.rs"]
mod controllers;

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;
