//! Collection cost against real cgroups (run by `cargo xtask bench`; needs root).
//!
//! `collect_bench cost REPEATS N...`: for each N, creates N cgroups under the cgroup2 mount and
//! in every v1 hierarchy (as a container runtime does on a hybrid host), laid out as kubelet's
//! cgroupfs driver does: N/2 pods (`kubepods/besteffort/pod<uid>`) of one container each, every
//! container holding a sleeping process (its pod's sandbox, whose network the collector reads)
//! and 20 of them also a live process that touches memory; then measures in a fresh child
//! process per measurement, the modes alternated:
//! - `baseline`: a cAdvisor-style pass, reading and parsing every readable file of every cgroup
//!   directory of every hierarchy, each pass;
//! - `cgroupfs`: the collector's sampler with no probes (cgroupfs read every pass) plus the
//!   Summary build;
//! - `ebpf`: the sampler with the probes: a full pass (cgroupfs + maps) and a probe-only pass,
//!   combined as the daemon's default schedule at 1 s (one full pass every 10 s):
//!   `fast + full / 10`.
//!
//! Prints one JSON line per (N, mode): CPU per pass and per cgroup, peak RSS, each as median
//! with min and max over REPEATS.
//!
//! `collect_bench files PASSES N`: the full cgroupfs pass file by file over the same kind of
//! tree (the host's cgroups included): per hierarchy and file, reads, missing files, bytes and
//! time per pass; then the walk and the whole reads (parsing included). One JSON line each.
//!
//! `collect_bench daemon N SECONDS WINDOWS`: the real `collector serve` (defaults: eBPF, 1 s
//! passes, cgroupfs every 10 s) over the same kind of tree, in a cgroup of its own so its CPU
//! comes from cpu.stat in microseconds; prints its CPU share and RSS over windows of whole
//! cgroupfs intervals (10 s), median with min and max.

mod bench_util;

use std::{
    fs,
    hint::black_box,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bench_util::{Process, own_cpu_time, own_peak_rss_bytes, spread};
use collector::{
    cgroupfs::CgroupMounts,
    node::NodeInfo,
    probes::{ProbeConfig, Probes},
    rate::CgroupRates,
    sampler::{DEFAULT_CGROUPFS_INTERVAL, Sampler},
    summary,
};
use serde_json::{Value, json};

/// How many of the created cgroups get a live process.
const LIVE_PROCESSES: usize = 20;
const MODES: [&str; 3] = ["baseline", "cgroupfs", "ebpf"];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> anyhow::Result<u64> {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("argument {i} must be a number"))
    };
    match args.first().map(String::as_str) {
        Some("cost") => {
            let repeats = num(1)? as usize;
            for i in 2..args.len() {
                cost(num(i)? as usize, repeats)?;
            }
            Ok(())
        }
        Some("daemon") => daemon(num(1)? as usize, num(2)?, num(3)? as u32),
        Some("files") => files(num(1)? as u32, num(2)? as usize),
        Some("measure") => measure(args.get(1).map_or("", String::as_str), num(2)? as u32),
        Some("idle") => idle(),
        _ => anyhow::bail!(
            "usage: collect_bench cost REPEATS N... | files PASSES N | daemon N SECONDS WINDOWS \
             (as root)"
        ),
    }
}

// ---- the cgroup tree -------------------------------------------------------------------------

/// N cgroups in cgroup2 and every v1 hierarchy, shaped as kubelet's pods, each container with a
/// sleeping process and some with a live one; all removed on drop.
struct Workload {
    dirs: Vec<PathBuf>,
    live: Vec<Process>,
}

/// The cgroup of pod `k`'s only container, relative to a hierarchy's bench directory.
fn container_cgroup(k: usize) -> String {
    format!("kubepods/besteffort/pod{}/{k:064x}", pod_uid(k))
}

/// A uid shaped like the API server's, unique per pod.
fn pod_uid(k: usize) -> String {
    format!("00000000-0000-4000-8000-{k:012x}")
}

impl Workload {
    fn create(count: usize) -> anyhow::Result<(Self, Duration)> {
        let started = Instant::now();
        let mounts = CgroupMounts::discover()?;
        let mut roots: Vec<PathBuf> = mounts.v2.iter().cloned().collect();
        roots.extend(mounts.v1.values().cloned());
        roots.sort();
        roots.dedup();
        let mut workload = Self {
            dirs: Vec::new(),
            live: Vec::new(),
        };
        let parent = format!("collect-bench-{}", std::process::id());
        let pods = (count / 2).max(1);
        let mut hierarchies = Vec::new();
        for root in roots {
            let dir = root.join(&parent);
            if fs::create_dir(&dir).is_err() {
                continue; // a named hierarchy we may not write to
            }
            workload.dirs.push(dir.clone());
            for level in ["kubepods", "kubepods/besteffort"] {
                let d = dir.join(level);
                fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
                workload.dirs.push(d);
            }
            for k in 0..pods {
                let container = dir.join(container_cgroup(k));
                let pod = container.parent().expect("a pod above the container");
                for d in [pod, container.as_path()] {
                    fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
                    workload.dirs.push(d.to_path_buf());
                }
            }
            hierarchies.push(dir);
        }
        anyhow::ensure!(
            !hierarchies.is_empty(),
            "could not create any cgroup (root?)"
        );
        let join = |child: &Process, k: usize| {
            for dir in &hierarchies {
                // Join the cgroup in every hierarchy, as a container's process would.
                let _ = fs::write(
                    dir.join(container_cgroup(k)).join("cgroup.procs"),
                    child.0.id().to_string(),
                );
            }
        };
        for k in 0..pods {
            let sandbox = Process(
                Command::new("sleep")
                    .arg("infinity")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .context("spawning sleep")?,
            );
            join(&sandbox, k);
            workload.live.push(sandbox);
        }
        let me = std::env::current_exe()?;
        for k in 0..LIVE_PROCESSES.min(pods) {
            let child = Process(
                Command::new(&me)
                    .arg("idle")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()?,
            );
            join(&child, k * pods / LIVE_PROCESSES.min(pods));
            workload.live.push(child);
        }
        Ok((workload, started.elapsed()))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.live.clear(); // killed and reaped first, so the cgroups are empty
        for dir in self.dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// A container's process: some memory, a wake-up every 50 ms.
fn idle() -> anyhow::Result<()> {
    let mut memory = vec![0u8; 4 << 20];
    for (i, page) in memory.chunks_mut(4096).enumerate() {
        page[0] = i as u8;
    }
    loop {
        std::thread::sleep(Duration::from_millis(50));
        black_box(&mut memory)[0] += 1;
    }
}

// ---- one measurement, in its own process -----------------------------------------------------

fn cgroup_dirs(root: &Path, out: &mut Vec<PathBuf>) {
    out.push(root.to_path_buf());
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_dirs(&entry.path(), out);
            }
        }
    }
}

/// The files a cAdvisor-style collector reads: every readable regular file of every cgroup.
fn baseline_files(mounts: &CgroupMounts) -> (usize, Vec<PathBuf>) {
    let mut v2_cgroups = Vec::new();
    if let Some(v2) = &mounts.v2 {
        cgroup_dirs(v2, &mut v2_cgroups);
    }
    let mut roots: Vec<&PathBuf> = mounts.v2.iter().chain(mounts.v1.values()).collect();
    roots.sort();
    roots.dedup();
    let mut dirs = Vec::new();
    for root in roots {
        cgroup_dirs(root, &mut dirs);
    }
    let mut files = Vec::new();
    for dir in dirs {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let readable = entry.metadata().is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o444 != 0
            });
            if readable {
                files.push(entry.path());
            }
        }
    }
    (v2_cgroups.len(), files)
}

/// Reads and parses every file the way a generic stats reader does: each line into its words,
/// numbers parsed, everything allocated.
fn baseline_pass(files: &[PathBuf]) -> usize {
    let mut values = 0;
    for path in files {
        let Ok(text) = fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines() {
            let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            let numbers: Vec<u64> = words.iter().filter_map(|w| w.parse().ok()).collect();
            values += black_box((words, numbers)).1.len();
        }
    }
    values
}

fn timed_passes(passes: u32, mut pass: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    pass()?; // untimed: fills the dentry cache and the sampler's tree
    let cpu0 = own_cpu_time();
    for _ in 0..passes {
        pass()?;
    }
    Ok((own_cpu_time() - cpu0).as_secs_f64() * 1e6 / f64::from(passes))
}

fn sampler_pass(sampler: &mut Sampler, node: &NodeInfo) -> anyhow::Result<()> {
    let sample = sampler.sample()?;
    let rates = vec![CgroupRates::default(); sample.cgroups.len()];
    black_box(summary::build(&sample, &rates, node, &Default::default()));
    Ok(())
}

fn measure(mode: &str, passes: u32) -> anyhow::Result<()> {
    let mounts = CgroupMounts::discover()?;
    let mount = mounts.v2.clone().context("no cgroup2 mount")?;
    let node = NodeInfo::discover(mounts.clone(), None);
    let sampler = |probes: Probes, every: Duration| {
        Sampler::new(mount.clone(), &mounts, probes).with_cgroupfs_interval(every)
    };
    let mut row = json!({ "mode": mode });
    match mode {
        "baseline" => {
            let (cgroups, files) = baseline_files(&mounts);
            let per_pass = timed_passes(passes, || {
                black_box(baseline_pass(&files));
                Ok(())
            })?;
            row["cgroups"] = json!(cgroups);
            row["files"] = json!(files.len());
            row["pass_us"] = json!(per_pass);
        }
        "cgroupfs" => {
            let off = ProbeConfig {
                disabled: true,
                ..ProbeConfig::default()
            };
            let mut s = sampler(Probes::load(&off), Duration::ZERO);
            let per_pass = timed_passes(passes, || sampler_pass(&mut s, &node))?;
            row["cgroups"] = json!(s.sample()?.cgroups.len());
            row["pass_us"] = json!(per_pass);
        }
        "ebpf" => {
            // Every family, as the daemon loads them (the net probe at the cgroup2 root).
            let every_probe = || ProbeConfig {
                cgroup2_root: Some(mount.clone()),
                ..ProbeConfig::default()
            };
            let probes = Probes::load(&every_probe());
            anyhow::ensure!(
                probes.sched.is_some() && probes.lifecycle_active(),
                "eBPF probes not active: {:?}",
                probes.statuses()
            );
            // cgroupfs due on every pass: the full pass of the daemon's schedule, every cgroup
            // read (a fresh daemon's; idle cgroups left unread are the daemon's figure).
            let mut s = sampler(probes, Duration::ZERO).with_idle_max_age(Duration::ZERO);
            let full = timed_passes(passes, || sampler_pass(&mut s, &node))?;
            row["cgroups"] = json!(s.sample()?.cgroups.len());
            drop(s);
            // Never due within the run: every timed pass is probe-only.
            let mut s = sampler(Probes::load(&every_probe()), Duration::from_secs(3600));
            let fast = timed_passes(passes * 10, || sampler_pass(&mut s, &node))?;
            let every = DEFAULT_CGROUPFS_INTERVAL.as_secs_f64();
            row["full_pass_us"] = json!(full);
            row["fast_pass_us"] = json!(fast);
            row["pass_us"] = json!(fast + full / every);
        }
        other => anyhow::bail!("unknown mode {other:?}"),
    }
    row["peak_rss_bytes"] = json!(own_peak_rss_bytes());
    println!("{row}");
    Ok(())
}

// ---- the parent: alternated repeats ---------------------------------------------------------

fn run_child(mode: &str, passes: u32) -> anyhow::Result<Value> {
    let output = Command::new(std::env::current_exe()?)
        .args(["measure", mode, &passes.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(output.status.success(), "measure {mode} failed");
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(serde_json::from_str(text.trim())?)
}

fn cost(count: usize, repeats: usize) -> anyhow::Result<()> {
    let (workload, created_in) = Workload::create(count)?;
    eprintln!(
        "  {count} cgroups x {} hierarchies created in {:.1} s",
        workload.dirs.len() / (count + 3),
        created_in.as_secs_f64()
    );
    // Enough passes to dwarf timer resolution, few enough that 5,000 cgroups stay quick.
    let passes = (3000 / count.max(1)).clamp(3, 30) as u32;
    let mut rows: Vec<Vec<Value>> = vec![Vec::new(); MODES.len()];
    for rep in 0..repeats {
        for k in 0..MODES.len() {
            let m = (k + rep) % MODES.len(); // rotate the order so drift hits every mode alike
            rows[m].push(run_child(MODES[m], passes)?);
        }
    }
    for (mode, rows) in MODES.iter().zip(&rows) {
        let get = |key: &str| -> Vec<f64> { rows.iter().filter_map(|r| r[key].as_f64()).collect() };
        let cgroups = rows
            .first()
            .map_or(0.0, |r| r["cgroups"].as_f64().unwrap_or(0.0));
        let per_cgroup: Vec<f64> = get("pass_us")
            .iter()
            .map(|p| p / cgroups.max(1.0))
            .collect();
        let mut out = json!({
            "kind": "cost", "created": count, "mode": mode, "cgroups": cgroups,
            "passes": passes, "repeats": repeats,
            "pass_us": spread(&get("pass_us")),
            "per_cgroup_us": spread(&per_cgroup),
            "peak_rss_bytes": spread(&get("peak_rss_bytes")),
        });
        if *mode == "ebpf" {
            out["full_pass_us"] = spread(&get("full_pass_us"));
            out["fast_pass_us"] = spread(&get("fast_pass_us"));
        }
        if *mode == "baseline" {
            out["files"] = rows.first().map_or(json!(0), |r| r["files"].clone());
        }
        println!("{out}");
    }
    Ok(())
}

// ---- file by file ---------------------------------------------------------------------------

/// Reads every cgroup of the tree with the collector's reader, PASSES times after one untimed
/// pass, and prints what each file cost per pass.
fn files(passes: u32, count: usize) -> anyhow::Result<()> {
    use collector::cgroupfs::{self, reader::CgroupReader};
    let (_workload, _) = Workload::create(count)?;
    let mounts = CgroupMounts::discover()?;
    let v2 = mounts.v2.clone().context("no cgroup2 mount")?;
    let mut reader = CgroupReader::new(v2.clone(), &mounts);
    let pass = |reader: &mut CgroupReader| -> anyhow::Result<(usize, Duration)> {
        let started = cgroupfs::costs::thread_cpu();
        let nodes = cgroupfs::walk(&v2)?;
        let walk = cgroupfs::costs::thread_cpu().saturating_sub(started);
        reader.refresh_controllers();
        for node in &nodes {
            let _ = black_box(reader.read(&node.path));
        }
        Ok((nodes.len(), walk))
    };
    pass(&mut reader)?; // untimed: fills the dentry cache
    reader.measure_files();
    let mut walk = Duration::ZERO;
    let mut cgroups = 0;
    for _ in 0..passes {
        let (n, w) = pass(&mut reader)?;
        (cgroups, walk) = (n, walk + w);
    }
    let costs = reader.file_costs().context("measuring")?;
    let per_pass = |d: Duration| d.as_secs_f64() * 1e3 / f64::from(passes);
    for (hierarchy, file, c) in costs.rows() {
        let attempts = (c.reads + c.missing + c.errors).max(1);
        println!(
            "{}",
            json!({
                "kind": "file", "created": count, "hierarchy": hierarchy, "file": file,
                "reads_per_pass": c.reads as f64 / f64::from(passes),
                "missing_per_pass": c.missing as f64 / f64::from(passes),
                "errors_per_pass": c.errors as f64 / f64::from(passes),
                "bytes_per_read": c.bytes as f64 / c.reads.max(1) as f64,
                "us_per_attempt": c.time.as_secs_f64() * 1e6 / attempts as f64,
                "ms_per_pass": per_pass(c.time),
            })
        );
    }
    println!(
        "{}",
        json!({
            "kind": "files_total", "created": count, "cgroups": cgroups, "passes": passes,
            "walk_ms_per_pass": per_pass(walk),
            "file_ms_per_pass": per_pass(costs.file_time()),
            "parse_ms_per_pass": per_pass(costs.parse_time()),
            "clock_overhead_ns": costs.overhead.as_nanos() as u64,
        })
    );
    Ok(())
}

// ---- the real daemon -------------------------------------------------------------------------

/// A cgroup2 cgroup for the daemon alone, so its CPU time is exact (cpu.stat, µs).
struct OwnCgroup(PathBuf);

impl OwnCgroup {
    fn usage_usec(&self) -> anyhow::Result<f64> {
        let stat = fs::read_to_string(self.0.join("cpu.stat"))?;
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .context("usage_usec missing from cpu.stat")
    }
}

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

fn daemon(count: usize, seconds: u64, windows: u32) -> anyhow::Result<()> {
    let (_workload, _) = Workload::create(count)?;
    let mounts = CgroupMounts::discover()?;
    let v2 = mounts.v2.context("no cgroup2 mount")?;
    let port = bench_util::free_port();
    let child = Process(
        Command::new(bench_util::collector_binary())
            .args([
                "serve",
                "--http-listen",
                "off",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let pid = child.0.id();
    let own = OwnCgroup(v2.join(format!("collect-bench-daemon-{pid}")));
    fs::create_dir(&own.0)?;
    fs::write(own.0.join("cgroup.procs"), pid.to_string())?;
    let probes = tokio::runtime::Runtime::new()?.block_on(probe_states(port))?;
    // Let startup (BTF parsing, program load, the first full pass) finish, and the second
    // full pass too: a cgroup counts as idle only once it stood still across a reading, so the
    // steady state starts with the third.
    std::thread::sleep(Duration::from_secs(3) + DEFAULT_CGROUPFS_INTERVAL * 2);
    // Whole multiples of the cgroupfs interval, so every window holds the same number of full
    // passes.
    let each = DEFAULT_CGROUPFS_INTERVAL * (seconds as u32 / windows.max(1)).div_ceil(10).max(1);
    let (mut cpu, mut rss) = (Vec::new(), Vec::new());
    for _ in 0..windows {
        let (u0, t0) = (own.usage_usec()?, Instant::now());
        std::thread::sleep(each);
        cpu.push((own.usage_usec()? - u0) / 1e6 / t0.elapsed().as_secs_f64() * 100.0);
        rss.push(bench_util::rss_bytes(pid) as f64);
    }
    println!(
        "{}",
        json!({
            "kind": "daemon", "created": count, "seconds": seconds, "windows": windows,
            "cpu_percent": spread(&cpu), "rss_bytes": spread(&rss), "probes": probes,
            "peak_rss_bytes": bench_util::peak_rss_bytes(pid),
        })
    );
    drop(child);
    Ok(())
}

/// Waits for the daemon's first summary; returns each probe's state ("active" or the reason).
async fn probe_states(port: u16) -> anyhow::Result<Value> {
    use collector::proto::{self, GetSummaryRequest, collector_client::CollectorClient};
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        if let Ok(client) = CollectorClient::connect(endpoint.clone()).await {
            let summary = client
                .max_decoding_message_size(64 << 20)
                .get_summary(GetSummaryRequest::default())
                .await?
                .into_inner();
            let states = summary
                .probes
                .iter()
                .map(|p| {
                    let active = p.state == proto::probe_status::State::Active as i32;
                    let state = if active { "active" } else { p.reason.as_str() };
                    (p.name.clone(), json!(state))
                })
                .collect::<serde_json::Map<_, _>>();
            return Ok(Value::Object(states));
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "collector did not start on {endpoint}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
