//! Helpers for the root + BPF integration tests: the skip policy, cgroups that clean up after
//! themselves, and processes born inside a cgroup with their own counters as ground truth.

use std::{
    fs,
    io::{self, Write as _},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub mod capabilities;
pub mod containerd;
pub mod cri;
pub mod daemonset;
pub mod watch;
pub mod workload;

pub use workload::{Exit, Process, Workload};

/// With COLLECTOR_REQUIRE_BPF=1 (CI), a test that cannot run is a failure, not a skip.
pub fn bpf_required() -> bool {
    std::env::var("COLLECTOR_REQUIRE_BPF").is_ok_and(|v| v == "1")
}

/// Why this machine cannot run root/BPF tests, if it cannot.
pub fn cannot_run_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("no kernel BTF at /sys/kernel/btf/vmlinux".into());
    }
    if cgroup2_mount().is_none() {
        return Some("no cgroup2 mount in /proc/self/mountinfo".into());
    }
    None
}

/// Returns true when the test should run; otherwise prints why and returns false, or panics when
/// COLLECTOR_REQUIRE_BPF=1.
pub fn can_run(test: &str) -> bool {
    let Some(reason) = cannot_run_reason() else {
        return true;
    };
    skip(test, &reason);
    false
}

/// Skips with a message, or fails when skipping is not allowed.
pub fn skip(test: &str, reason: &str) {
    assert!(
        !bpf_required(),
        "{test}: cannot run ({reason}) and COLLECTOR_REQUIRE_BPF=1 forbids skipping"
    );
    eprintln!("SKIP {test}: {reason} (set COLLECTOR_REQUIRE_BPF=1 to make this a failure)");
}

/// True when cgroup2 has the memory controller for its children (pure v2: the VM suite's
/// guest). Otherwise (hybrid hosts, where memory is a v1 hierarchy) prints why and returns
/// false, or panics when COLLECTOR_REQUIRE_V2=1, which the guest sets: the default
/// `cargo xtask test` runs these tests there, so skipping on the host loses nothing.
pub fn can_run_v2(test: &str) -> bool {
    if !can_run(test) {
        return false;
    }
    let controllers = cgroup2_mount()
        .and_then(|m| fs::read_to_string(m.join("cgroup.subtree_control")).ok())
        .unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "memory") {
        return true;
    }
    assert!(
        !std::env::var("COLLECTOR_REQUIRE_V2").is_ok_and(|v| v == "1"),
        "{test}: cgroup2 has no memory controller and COLLECTOR_REQUIRE_V2=1 forbids skipping"
    );
    eprintln!(
        "SKIP {test}: cgroup2 has no memory controller here (hybrid layout); the VM suite of \
         `cargo xtask test` runs it on pure cgroup v2"
    );
    false
}

/// The cgroup2 mount point, from mountinfo.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// A cgroup2 child created for one test and removed on drop, failures included: its processes
/// are killed first. On hybrid hosts it can have twins of the same name in v1 hierarchies.
pub struct TestCgroup {
    pub path: PathBuf,
    /// Relative to the cgroup2 mount, as the collector reports it.
    pub relative: String,
    /// Same-named cgroups in v1 hierarchies; spawned processes join them too.
    v1: Vec<PathBuf>,
}

impl TestCgroup {
    pub fn create(tag: &str) -> anyhow::Result<Self> {
        let mount = cgroup2_mount().context("no cgroup2 mount")?;
        let name = format!("collector-test-{tag}-{}", std::process::id());
        let path = mount.join(&name);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path,
            relative: format!("/{name}"),
            v1: Vec::new(),
        })
    }

    /// Creates a child cgroup (cgroup2 only), removed on drop like its parent.
    pub fn child(&self, name: &str) -> anyhow::Result<Self> {
        let path = self.path.join(name);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path,
            relative: format!("{}/{name}", self.relative),
            v1: Vec::new(),
        })
    }

    /// Adds a twin of this cgroup in the v1 hierarchy mounted at `v1_mount` (e.g. the memory
    /// controller's), so the processes spawned here are accounted there as well.
    pub fn with_v1(mut self, v1_mount: &Path) -> anyhow::Result<Self> {
        let path = v1_mount.join(self.relative.trim_start_matches('/'));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        self.v1.push(path);
        Ok(self)
    }

    /// The twin of this cgroup under `v1_mount`, if `with_v1` made one.
    pub fn v1_path(&self, v1_mount: &Path) -> Option<&Path> {
        self.v1
            .iter()
            .find(|p| p.starts_with(v1_mount))
            .map(PathBuf::as_path)
    }

    /// The directory inode: the cgroup id the collector and the probes use.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(&self.path).map(|m| m.ino()).unwrap_or(0)
    }

    /// Starts `workload` born inside this cgroup (and its v1 twins): see [`workload`].
    pub fn start(&self, workload: &Workload) -> anyhow::Result<Process> {
        workload.start_in(&self.path, &self.v1)
    }

    /// Starts a piped `hold`-style workload and waits for its ready line: its work is done,
    /// its counters are final, and it waits for [`Process::finish`].
    pub fn start_until_ready(&self, workload: &Workload) -> Process {
        let mut p = self.start(&workload.clone().piped()).unwrap();
        p.ready().unwrap();
        p
    }

    /// `usage_usec` from this cgroup's cpu.stat, in ns.
    pub fn cpu_stat_usage_ns(&self) -> anyhow::Result<u64> {
        let text = fs::read_to_string(self.path.join("cpu.stat"))?;
        let usec: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .context("no usage_usec")?
            .trim()
            .parse()?;
        Ok(usec * 1000)
    }

    /// cpu.stat's usage once every task has left and its last run is accounted. A parent's
    /// `wait` can return before the exited child's final switch-out has charged its last
    /// partial tick (4 ms at Debian's HZ=250), which the probe counts at that switch-out: read
    /// until two reads 50 ms apart agree.
    pub fn final_cpu_stat_usage_ns(&self) -> anyhow::Result<u64> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut last = self.cpu_stat_usage_ns()?;
        loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let now = self.cpu_stat_usage_ns()?;
            let empty = fs::read_to_string(self.path.join("cgroup.procs"))?.is_empty();
            if now == last && empty {
                return Ok(now);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "cpu.stat still moving after 10 s"
            );
            last = now;
        }
    }

    fn kill_all(&self) {
        if fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        if let Ok(procs) = fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.kill_all();
        for dir in std::iter::once(&self.path).chain(&self.v1) {
            remove_cgroup_dir(dir);
        }
    }
}

/// rmdir, retried while killed processes are still leaving (EBUSY), for at most 5 s.
fn remove_cgroup_dir(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = fs::remove_dir(path) {
        if e.kind() == io::ErrorKind::NotFound || Instant::now() > deadline {
            if e.kind() != io::ErrorKind::NotFound {
                let _ = writeln!(io::stderr(), "leaked {}: {e}", path.display());
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `mib` MiB file in `dir` (a real disk, not tmpfs, whose pages never fault in from disk),
/// written, synced and dropped from the page cache, so that reading it back is all page-cache
/// misses: major faults when mapped.
pub fn uncached_file(dir: &str, tag: &str, mib: usize) -> anyhow::Result<PathBuf> {
    let path = Path::new(dir).join(format!("{tag}-{}", std::process::id()));
    let mut file = fs::File::create(&path)?;
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..mib {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    // SAFETY: advising on our own open file.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        bail!("posix_fadvise: {}", io::Error::from_raw_os_error(rc));
    }
    Ok(path)
}

/// A cgroup file holding one number (memory.current, memory.usage_in_bytes).
pub fn read_u64(path: &Path) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of `key` in the text of a flat-keyed cgroup file (memory.stat, memory.events).
pub fn flat_key(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {key} in the file"))
        .trim()
        .parse()
        .unwrap()
}

/// |a - b| / reference, for "agrees within x %" checks.
pub fn relative_diff(a: u64, b: u64, reference: u64) -> f64 {
    a.abs_diff(b) as f64 / reference.max(1) as f64
}

/// Drops every capability of the calling thread (Linux capabilities are per thread), so the
/// thread behaves like an unprivileged agent even when the test runs as root.
pub fn drop_thread_capabilities() -> io::Result<()> {
    keep_thread_capabilities(&[])
}

/// Capability numbers (linux/capability.h) the DaemonSet grants or may grant.
pub mod cap {
    pub const NET_ADMIN: u32 = 12;
    pub const SYS_RESOURCE: u32 = 24;
    pub const PERFMON: u32 = 38;
    pub const BPF: u32 = 39;
}

/// Leaves the calling thread with `keep` (effective and permitted), like a container granted only
/// those; a capability the test process itself lacks stays absent (a sandbox may withhold
/// CAP_SYS_RESOURCE, which kernels since 5.11 no longer need for BPF memory).
pub fn keep_thread_capabilities(keep: &[u32]) -> io::Result<()> {
    // aya probes the kernel's BPF features once per process, in whichever thread loads first.
    // Probed from a thread without CAP_BPF, every feature reads as missing (no BTF, no global
    // data), and every later load in the process, however privileged, goes wrong (task storage
    // refused with EINVAL, "section not found" for the offsets). A collector's threads share
    // one set of capabilities; a test that drops them per thread probes first, as root.
    let _ = aya::features();
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut held = [Data::default(); 2];
    // SAFETY: capget with a v3 header and room for two data words, as the ABI requires.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, held.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut data = [Data::default(); 2];
    for &c in keep {
        let (word, bit) = ((c / 32) as usize, 1 << (c % 32));
        data[word].effective |= bit & held[word].permitted;
        data[word].permitted |= bit & held[word].permitted;
    }
    // SAFETY: capset with a v3 header and two data words, as the ABI requires.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's own per-task scheduler counters of `pid`'s main thread, from
/// `/proc/<pid>/schedstat`: (run time ns, run-queue wait ns, arrivals).
pub fn schedstat(pid: u32) -> anyhow::Result<(u64, u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    let mut f = text.split_whitespace().map(str::parse::<u64>);
    let mut next = || -> anyhow::Result<u64> { Ok(f.next().context("short schedstat")??) };
    Ok((next()?, next()?, next()?))
}

/// One thread of a process, from `/proc/<pid>/task/<tid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct ThreadState {
    pub tid: u32,
    /// The state letter: 'R', 'S', 'T', ...
    pub state: char,
    /// `voluntary_ctxt_switches`: bumped by the switch that takes a sleeping or stopping
    /// thread off its CPU, in the same critical section that accounts the end of its run.
    pub voluntary_switches: u64,
}

/// Every live thread of `pid` (a thread that exits while the list is read is left out).
pub fn thread_states(pid: u32) -> anyhow::Result<Vec<ThreadState>> {
    let mut threads = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .with_context(|| format!("no {name} in {}", task.path().display()))
        };
        threads.push(ThreadState {
            tid: task.file_name().to_string_lossy().parse()?,
            state: field("State:")?.chars().next().unwrap_or('?'),
            voluntary_switches: field("voluntary_ctxt_switches:")?.parse()?,
        });
    }
    Ok(threads)
}

/// (minflt, majflt) of a live process, from /proc/<pid>/stat: the kernel's own fault counts.
pub fn process_faults(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may contain spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').context("no comm in stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field =
        |n: usize| -> anyhow::Result<u64> { Ok(fields.get(n - 3).context("short stat")?.parse()?) };
    Ok((field(10)?, field(12)?))
}

/// Moves every thread of this process (and so the threads they spawn later) to `cpu`, so a test
/// can leave another CPU to its workload alone.
pub fn pin_this_process_to_cpu(cpu: usize) -> anyhow::Result<()> {
    pin_this_process_to_cpus(&[cpu])
}

/// Every online CPU (to undo [`pin_this_process_to_cpu`]).
pub fn all_cpus() -> Vec<usize> {
    // SAFETY: no arguments, no preconditions.
    (0..unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize).collect()
}

/// Moves every thread of this process to `cpus`.
pub fn pin_this_process_to_cpus(cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    for task in fs::read_dir("/proc/self/task")? {
        let tid: libc::pid_t = task?.file_name().to_string_lossy().parse()?;
        // SAFETY: plain syscall on a thread of ours.
        if unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) } != 0 {
            let error = io::Error::last_os_error();
            // A thread that exited since the listing (a runtime's idle blocking thread) has
            // nothing left to pin.
            if error.raw_os_error() == Some(libc::ESRCH) {
                continue;
            }
            bail!("sched_setaffinity({tid}): {error}");
        }
    }
    Ok(())
}
