//! Test workloads born inside their cgroup: `clone3(CLONE_INTO_CGROUP)` puts the child in the
//! cgroup at birth, so every nanosecond, fault and wait of its life is the cgroup's, and its own
//! counters (rusage, `/proc/<pid>/stat`, `/proc/<pid>/schedstat`) are ground truth for it. A
//! process that joins a cgroup after starting (writing itself into `cgroup.procs`) ran in
//! another cgroup first, and its rusage then measures something else.

use std::{
    ffi::{CString, OsStr, OsString},
    fs::File,
    io::{self, BufRead as _, BufReader},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// clone3's `struct clone_args` (the fields up to `cgroup`, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What to start: a program, its arguments, its stdio and where it runs.
#[derive(Debug, Clone)]
pub struct Workload {
    program: PathBuf,
    args: Vec<OsString>,
    piped: bool,
    cpu: Option<usize>,
    realtime: bool,
}

impl Workload {
    /// `program` is a path or a name looked up in `PATH`.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: PathBuf::from(program.as_ref()),
            args: Vec::new(),
            piped: false,
            cpu: None,
            realtime: false,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// stdin and stdout piped to the test (the `hold`-style workloads print a line when ready
    /// and end when stdin closes).
    pub fn piped(mut self) -> Self {
        self.piped = true;
        self
    }

    /// Runs on this CPU only (set in the child before exec, after it joined the cgroup, whose
    /// cpuset would otherwise reset it).
    pub fn on_cpu(mut self, cpu: usize) -> Self {
        self.cpu = Some(cpu);
        self
    }

    /// SCHED_FIFO priority 1: it preempts every normal task on its CPU when it wakes.
    pub fn realtime(mut self) -> Self {
        self.realtime = true;
        self
    }

    /// Starts the workload as a child born in the cgroup2 directory `cgroup`, also joining the
    /// `v1` twins (cgroup v1 hierarchies have no CLONE_INTO_CGROUP: the child writes itself
    /// into their `cgroup.procs` before exec; only v2 accounting is exact from birth).
    pub fn start_in(&self, cgroup: &Path, v1: &[PathBuf]) -> anyhow::Result<Process> {
        let program = resolve(&self.program)?;
        // Everything the child touches is prepared here: between clone3 and execve it may only
        // make async-signal-safe calls, and never allocate.
        let c = |s: &OsStr| CString::new(s.as_bytes()).context("NUL in an argument");
        let program_c = c(program.as_os_str())?;
        let mut argv_c = vec![program_c.clone()];
        for a in &self.args {
            argv_c.push(c(a)?);
        }
        let env_c: Vec<CString> = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k;
                kv.push("=");
                kv.push(v);
                c(&kv)
            })
            .collect::<anyhow::Result<_>>()?;
        let argv: Vec<*const libc::c_char> = argv_c
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp: Vec<*const libc::c_char> = env_c
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let cgroup_dir =
            File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let v1_procs: Vec<File> = v1
            .iter()
            .map(|d| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("cgroup.procs"))
                    .with_context(|| format!("opening {}/cgroup.procs", d.display()))
            })
            .collect::<anyhow::Result<_>>()?;
        let v1_fds: Vec<i32> = v1_procs.iter().map(|f| f.as_raw_fd()).collect();
        let (stdin_pipe, stdout_pipe) = if self.piped {
            (Some(pipe()?), Some(pipe()?))
        } else {
            (None, None)
        };
        let child_stdin = stdin_pipe.as_ref().map(|(r, _)| r.as_raw_fd());
        let child_stdout = stdout_pipe.as_ref().map(|(_, w)| w.as_raw_fd());
        let affinity = self.cpu.map(|cpu| {
            // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            unsafe { libc::CPU_SET(cpu, &mut set) };
            set
        });
        let realtime = self.realtime;
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: cgroup_dir.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 with a valid clone_args and no new stack: a fork into the cgroup. The
        // child only calls async-signal-safe functions on data prepared above, then execs.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                size_of::<CloneArgs>(),
            )
        };
        if pid == 0 {
            // SAFETY: the child: see above.
            unsafe {
                child(
                    child_stdin,
                    child_stdout,
                    &v1_fds,
                    affinity,
                    realtime,
                    &argv,
                    &envp,
                )
            };
        }
        if pid < 0 {
            bail!(
                "clone3 into {}: {}",
                cgroup.display(),
                io::Error::last_os_error()
            );
        }
        Ok(Process {
            pid: pid as libc::pid_t,
            stdin: stdin_pipe.map(|(_, w)| File::from(w)),
            stdout: stdout_pipe.map(|(r, _)| BufReader::new(File::from(r))),
            reaped: false,
        })
    }
}

/// The child between clone3 and exec: stdio, v1 cgroups, CPU, policy, then the program. Never
/// returns.
///
/// # Safety
/// Only in the child of a fork-like clone, with pointers to data prepared before it.
unsafe fn child(
    stdin: Option<i32>,
    stdout: Option<i32>,
    v1_procs: &[i32],
    affinity: Option<libc::cpu_set_t>,
    realtime: bool,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    // SAFETY: async-signal-safe calls only (dup2, write, sched_*, execve, _exit).
    unsafe {
        if let Some(fd) = stdin
            && libc::dup2(fd, 0) < 0
        {
            libc::_exit(126);
        }
        if let Some(fd) = stdout
            && libc::dup2(fd, 1) < 0
        {
            libc::_exit(126);
        }
        let me = b"0\n";
        for &fd in v1_procs {
            if libc::write(fd, me.as_ptr().cast(), me.len()) < 0 {
                libc::_exit(126);
            }
        }
        if let Some(set) = affinity
            && libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0
        {
            libc::_exit(126);
        }
        if realtime {
            let param = libc::sched_param { sched_priority: 1 };
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) != 0 {
                libc::_exit(126);
            }
        }
        libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
        libc::_exit(127)
    }
}

fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: a two-int array for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A path as given, or a name found in `PATH`.
fn resolve(program: &Path) -> anyhow::Result<PathBuf> {
    if program.components().count() > 1 {
        return Ok(program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{} not found in PATH", program.display()))
}

/// A started workload. Killed and reaped on drop unless already waited for.
pub struct Process {
    pid: libc::pid_t,
    pub stdin: Option<File>,
    pub stdout: Option<BufReader<File>>,
    reaped: bool,
}

/// How a workload ended and what it used, from `wait4`.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: i32,
    /// User + system CPU time, ns.
    pub cpu_ns: u64,
}

impl Exit {
    pub fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }
}

impl Process {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for the line the workload prints when its work is done (`hold`, `touch_file`), and
    /// then until it is blocked reading its stdin, off its CPU: only from then on are its
    /// counters final and its last switch-out accounted (between the print and the block, a busy
    /// machine gave one more major fault, counted by the probe but not in the `/proc` read).
    pub fn ready(&mut self) -> anyhow::Result<()> {
        self.read_line()?;
        self.wait_until_blocked_reading()
    }

    /// `/proc/<pid>/syscall` names the system call a task sleeps in, and the kernel reads it
    /// only once the task is off its CPU ("running" otherwise).
    fn wait_until_blocked_reading(&self) -> anyhow::Result<()> {
        let path = format!("/proc/{}/syscall", self.pid);
        let read = libc::SYS_read.to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            if text.split_whitespace().next() == Some(read.as_str()) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the workload did not block reading its stdin in 60 s ({path}: {})",
                text.trim()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The next line the workload prints, without its newline (`udp recv` prints its port).
    pub fn read_line(&mut self) -> anyhow::Result<String> {
        let stdout = self.stdout.as_mut().context("stdout not piped")?;
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        anyhow::ensure!(!line.is_empty(), "workload exited before it printed a line");
        Ok(line.trim_end().to_owned())
    }

    /// Closes its stdin (which ends the `hold`-style workloads) and waits for it.
    pub fn finish(mut self) -> anyhow::Result<Exit> {
        drop(self.stdin.take());
        self.wait()
    }

    /// Waits for it to end; its CPU time is the kernel's own (rusage).
    pub fn wait(&mut self) -> anyhow::Result<Exit> {
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid value; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers; the child is ours and not yet reaped.
        let rc = unsafe { libc::wait4(self.pid, &mut status, 0, &mut usage) };
        if rc != self.pid {
            bail!("wait4({}): {}", self.pid, io::Error::last_os_error());
        }
        self.reaped = true;
        let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
        Ok(Exit {
            status,
            cpu_ns: ns(usage.ru_utime) + ns(usage.ru_stime),
        })
    }

    /// Sends a signal (SIGSTOP/SIGCONT/SIGKILL).
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        // SAFETY: plain syscall on our child.
        if unsafe { libc::kill(self.pid, signal) } != 0 {
            bail!(
                "kill({}, {signal}): {}",
                self.pid,
                io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: plain syscalls on our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}
