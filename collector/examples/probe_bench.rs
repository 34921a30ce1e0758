//! Probe overhead (run by `cargo xtask bench`; needs root and BPF).
//!
//! `probe_bench REPEATS ROUNDTRIPS PAGES`: two microbenchmarks, each run in four states: no
//! probes, every probe attached with bpf_stats on (`--bpf-stats`, for the per-program figures),
//! every probe attached with bpf_stats off (the default), and the floor: only an empty program
//! on `sched_switch` (the sched object's, with its offsets left unwritten, so it returns at its
//! first check), what any program on that hook costs before doing anything; the order rotates
//! every repeat so machine noise hits all alike:
//! - context switches: this process and a child, both pinned to CPU 0, ping-pong one byte over
//!   two pipes ROUNDTRIPS times (every round trip is two wake-ups and two context switches),
//!   timed by the wall clock and by the two tasks' CPU time (`ping_pong_cpu`);
//! - page faults: touching PAGES fresh 4 KiB pages of an anonymous mapping (huge pages off), ten
//!   times over.
//!
//! Also reports each BPF program's average run time from bpf_stats, taken over the attached
//! windows, and the kernel memory of the maps (now, and projected to 64 and 128 possible CPUs).
//! Prints one JSON line.

mod bench_util;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bench_util::{Process, spread};
use collector::probes::{ProbeConfig, ProbeState, Probes, attach, family, object};
use collector_common::names;
use serde_json::json;

const PAGE: usize = 4096;
const FAULT_ROUNDS: usize = 10;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("pong") {
        return pong();
    }
    let num = |i: usize| -> anyhow::Result<usize> {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .context("usage: probe_bench REPEATS ROUNDTRIPS PAGES (as root)")
    };
    pin_to_first_cpu()?;
    run(num(0)?, num(1)?, num(2)?)
}

/// Both ends of the ping-pong on one CPU (the child inherits this): every round trip is then two
/// direct context switches, not cross-CPU wake-ups whose cost in a VM dwarfs what we measure.
fn pin_to_first_cpu() -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        anyhow::ensure!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) == 0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The other end of the ping-pong: echo every byte back, unbuffered.
fn pong() -> anyhow::Result<()> {
    let (mut input, mut output) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut byte = [0u8; 1];
    while input.read(&mut byte)? == 1 {
        output.write_all(&byte)?;
        output.flush()?;
    }
    Ok(())
}

/// `sum_exec_runtime` of one thread (`/proc/<pid>/task/<tid>/schedstat`, first field): its CPU
/// time as the scheduler accounts it, without steal, IRQ time or other tasks' runs.
fn thread_cpu_ns(pid: u32, tid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/task/{tid}/schedstat");
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    text.split_ascii_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .with_context(|| format!("{path}: {text:?}"))
}

/// Per round trip: wall-clock nanoseconds, and CPU nanoseconds of the two tasks together. The
/// CPU figure leaves out what a busy VM adds to the wall clock (steal, interrupts, other tasks
/// on the CPU), which on this class of machine varies more from window to window than the
/// probes cost; the probes' own time is in it (the switch path runs in the two tasks' time).
fn ping_pong(roundtrips: usize) -> anyhow::Result<(f64, f64)> {
    let mut child = Process(
        Command::new(std::env::current_exe()?)
            .arg("pong")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut to = child.0.stdin.take().context("child stdin")?;
    let mut from = child.0.stdout.take().context("child stdout")?;
    let mut byte = [7u8; 1];
    // Warm-up: the child is up and both sides are scheduled.
    for _ in 0..1000 {
        to.write_all(&byte)?;
        from.read_exact(&mut byte)?;
    }
    // SAFETY: gettid has no preconditions.
    let (me, thread) = (std::process::id(), unsafe { libc::gettid() } as u32);
    let other = child.0.id();
    let cpu =
        || -> anyhow::Result<u64> { Ok(thread_cpu_ns(me, thread)? + thread_cpu_ns(other, other)?) };
    let cpu_before = cpu()?;
    let started = Instant::now();
    for _ in 0..roundtrips {
        to.write_all(&byte)?;
        from.read_exact(&mut byte)?;
    }
    let wall = started.elapsed().as_nanos() as f64;
    let cpu = cpu()?.saturating_sub(cpu_before) as f64;
    Ok((wall / roundtrips as f64, cpu / roundtrips as f64))
}

/// Nanoseconds per page fault (first touch of a fresh anonymous page).
fn page_faults(pages: usize) -> anyhow::Result<f64> {
    let len = pages * PAGE;
    let mut elapsed = Duration::ZERO;
    for _ in 0..FAULT_ROUNDS {
        // SAFETY: a fresh private anonymous mapping; checked for MAP_FAILED below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        anyhow::ensure!(base != libc::MAP_FAILED, "mmap failed");
        // SAFETY: the mapping is ours; huge pages would turn 512 faults into one.
        unsafe { libc::madvise(base, len, libc::MADV_NOHUGEPAGE) };
        let started = Instant::now();
        for i in 0..pages {
            // SAFETY: inside the mapping, which is writable.
            unsafe { std::ptr::write_volatile(base.cast::<u8>().add(i * PAGE), 1) };
        }
        elapsed += started.elapsed();
        // SAFETY: unmapping exactly what was mapped.
        unsafe { libc::munmap(base, len) };
    }
    Ok(elapsed.as_nanos() as f64 / (pages * FAULT_ROUNDS) as f64)
}

/// The states each repeat measures.
#[derive(Clone, Copy, PartialEq)]
enum State {
    Detached,
    Attached,
    AttachedNoStats,
    EmptyProgram,
}

const STATES: [State; 4] = [
    State::Detached,
    State::Attached,
    State::AttachedNoStats,
    State::EmptyProgram,
];

#[derive(Default)]
struct Series {
    /// ns per operation, indexed like STATES.
    ns: [Vec<f64>; STATES.len()],
    /// Each repeat's state / detached - 1, in percent, for the other states (STATES[1..]).
    slowdown: [Vec<f64>; STATES.len() - 1],
}

impl Series {
    fn push(&mut self, figures: [f64; STATES.len()]) {
        for (i, ns) in figures.into_iter().enumerate() {
            self.ns[i].push(ns);
        }
        for i in 0..STATES.len() - 1 {
            self.slowdown[i].push((figures[i + 1] / figures[0] - 1.0) * 100.0);
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "detached_ns": spread(&self.ns[0]),
            "attached_ns": spread(&self.ns[1]),
            "attached_no_stats_ns": spread(&self.ns[2]),
            "slowdown_percent": spread(&self.slowdown[0]),
            "slowdown_no_stats_percent": spread(&self.slowdown[1]),
            "empty_program_ns": spread(&self.ns[3]),
            "slowdown_empty_program_percent": spread(&self.slowdown[2]),
        })
    }
}

fn load(run_stats: bool) -> anyhow::Result<Probes> {
    // Every family, as the daemon loads them: the net probe attaches at the cgroup2 root.
    let mounts = collector::cgroupfs::CgroupMounts::discover()?;
    let probes = Probes::load(&ProbeConfig {
        run_stats,
        cgroup2_root: mounts.v2,
        ..ProbeConfig::default()
    });
    let inactive: Vec<_> = probes
        .statuses()
        .into_iter()
        .filter(|s| !s.is_active())
        .collect();
    anyhow::ensure!(inactive.is_empty(), "probes not active: {inactive:?}");
    Ok(probes)
}

/// What [`State::EmptyProgram`] attaches: the sched object's `sched_switch`, its offsets left
/// unwritten, so that it returns at its first check (`ready()`).
fn load_empty_program() -> anyhow::Result<aya::Ebpf> {
    let btf = aya::Btf::from_sys_fs()?;
    let (mut ebpf, _) = object::load(&family::SCHED, &btf, None::<&u64>, &[])?;
    match attach::btf_tracepoint(&mut ebpf, names::SCHED_SWITCH_PROG, "sched_switch", &btf) {
        ProbeState::Active { .. } => Ok(ebpf),
        state => anyhow::bail!("the empty sched_switch program: {state:?}"),
    }
}

fn run(repeats: usize, roundtrips: usize, pages: usize) -> anyhow::Result<()> {
    let (mut switches, mut switches_cpu, mut faults) =
        (Series::default(), Series::default(), Series::default());
    // Per program: average ns per run over each bpf_stats window.
    let mut programs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut runs_total: BTreeMap<String, u64> = BTreeMap::new();
    let mut load_ms = Vec::new();
    for rep in 0..repeats {
        let (mut switch_ns, mut switch_cpu_ns, mut fault_ns) = (
            [0.0; STATES.len()],
            [0.0; STATES.len()],
            [0.0; STATES.len()],
        );
        for k in 0..STATES.len() {
            let i = (k + rep) % STATES.len();
            let t0 = Instant::now();
            let (probes, empty_program) = match STATES[i] {
                State::Detached => (None, None),
                State::Attached => (Some(load(true)?), None),
                State::AttachedNoStats => (Some(load(false)?), None),
                State::EmptyProgram => (None, Some(load_empty_program()?)),
            };
            if probes.is_some() {
                load_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            let before = probes.as_ref().map(Probes::run_stats).unwrap_or_default();
            (switch_ns[i], switch_cpu_ns[i]) = ping_pong(roundtrips)?;
            fault_ns[i] = page_faults(pages)?;
            for after in probes.as_ref().map(Probes::run_stats).unwrap_or_default() {
                let Some(b) = before.iter().find(|b| b.name == after.name) else {
                    continue;
                };
                let runs = after.run_count.saturating_sub(b.run_count);
                *runs_total.entry(after.name.clone()).or_default() += runs;
                if runs > 0 {
                    let ns = after.run_time_ns.saturating_sub(b.run_time_ns) as f64;
                    programs
                        .entry(after.name)
                        .or_default()
                        .push(ns / runs as f64);
                }
            }
            drop((probes, empty_program)); // detaches every program
        }
        switches.push(switch_ns);
        switches_cpu.push(switch_cpu_ns);
        faults.push(fault_ns);
    }
    let programs: serde_json::Map<String, serde_json::Value> = programs
        .into_iter()
        .map(|(name, ns)| (name, spread(&ns)))
        .collect();
    let maps = load(false)?.map_memory().to_vec();
    let total = |f: &dyn Fn(&collector::probes::MapMemory) -> u64| maps.iter().map(f).sum::<u64>();
    let map_memory = json!({
        "possible_cpus": aya::util::nr_cpus().unwrap_or(0),
        "kernel_bytes": total(&|m| m.kernel_bytes.unwrap_or(0)),
        "projected_64_bytes": total(&|m| m.projected_bytes(64)),
        "projected_128_bytes": total(&|m| m.projected_bytes(128)),
        "maps": maps.iter().map(|m| json!({
            "object": m.object, "name": m.name, "max_entries": m.max_entries,
            "value_size": m.value_size, "kernel_bytes": m.kernel_bytes,
            "projected_128_bytes": m.projected_bytes(128),
        })).collect::<Vec<_>>(),
    });
    println!(
        "{}",
        json!({
            "kind": "probes", "repeats": repeats, "roundtrips": roundtrips,
            "pages": pages * FAULT_ROUNDS,
            "ping_pong": switches.json(), "ping_pong_cpu": switches_cpu.json(),
            "page_fault": faults.json(),
            "program_ns": programs, "program_runs": runs_total, "load_ms": spread(&load_ms),
            "map_memory": map_memory,
        })
    );
    Ok(())
}
