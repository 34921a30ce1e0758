//! The soak's cgroups: the tree, the churn (cgroups created, given a short process, removed),
//! the long-lived busy ones, and the churn parent's `cpu.stat` sampled with its read times, the
//! truth the collector's eBPF total of the parent is held against.

use std::{
    ffi::CString,
    fs,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use collector::{
    proto::{GetSummaryRequest, collector_client::CollectorClient},
    unix_time::unix_nanos,
};
use tonic::transport::Channel;

/// Work of each short-lived process: a few ms of shell arithmetic.
const SHORT_WORK: &str = "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done";
/// The busy cgroups' processes: a quarter of a core each, for as long as the soak runs.
const BUSY_WORK: &str =
    "while :; do i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 0.1; done";
const KERNEL_SAMPLE_EVERY: Duration = Duration::from_millis(20);

pub struct SoakTree {
    pub mount: PathBuf,
    pub root: PathBuf,
    /// Relative to the mount, as the collector names it.
    pub relative: String,
}

impl SoakTree {
    pub fn create() -> anyhow::Result<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let mount = mountinfo
            .lines()
            .find_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                (right.split(' ').next()? == "cgroup2").then(|| left.split(' ').nth(4))?
            })
            .map(PathBuf::from)
            .context("no cgroup2 mount")?;
        let relative = format!("/collector-soak-{}", std::process::id());
        let root = mount.join(relative.trim_start_matches('/'));
        for dir in [&root, &root.join("churn"), &root.join("busy")] {
            fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Self {
            mount,
            root,
            relative,
        })
    }

    pub fn churn_path(&self) -> String {
        format!("{}/churn", self.relative)
    }

    pub fn busy_path(&self, i: usize) -> String {
        format!("{}/busy/b{i}", self.relative)
    }

    /// `n` busy cgroups with one process each, killed on drop.
    pub fn start_busy(&self, n: usize) -> anyhow::Result<Busy> {
        let mut children = Vec::new();
        for i in 0..n {
            let dir = self.root.join(format!("busy/b{i}"));
            fs::create_dir(&dir)?;
            children.push(spawn_in(&dir, BUSY_WORK)?);
        }
        Ok(Busy(children))
    }

    /// Creates and removes cgroups under `churn` at `per_minute`, each with a short process.
    pub fn start_churn(self: Arc<Self>, per_minute: u64) -> Arc<Churn> {
        let churn = Arc::new(Churn::default());
        let state = churn.clone();
        std::thread::spawn(move || {
            let every = Duration::from_secs(60) / u32::try_from(per_minute).unwrap_or(1000);
            let mut next = Instant::now();
            let mut k = 0u64;
            while !state.stop.load(Ordering::Relaxed) {
                let dir = self.root.join(format!("churn/c{k}"));
                k += 1;
                if fs::create_dir(&dir).is_err() {
                    state.failures.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                state.created.fetch_add(1, Ordering::Relaxed);
                match spawn_in(&dir, SHORT_WORK) {
                    Ok(mut child) => {
                        let _ = child.wait();
                    }
                    Err(_) => {
                        state.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // A killed task can linger a moment as a zombie of the cgroup: retry.
                let deadline = Instant::now() + Duration::from_secs(2);
                while fs::remove_dir(&dir).is_err() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if !dir.exists() {
                    state.removed.fetch_add(1, Ordering::Relaxed);
                }
                next += every;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
        churn
    }
}

impl Drop for SoakTree {
    fn drop(&mut self) {
        remove_tree(&self.root);
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten().filter(|e| e.path().is_dir()) {
            remove_tree(&e.path());
        }
    }
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `sh -c work` born in `cgroup` (it moves itself in before exec).
fn spawn_in(cgroup: &Path, work: &str) -> anyhow::Result<Child> {
    let procs = CString::new(
        cgroup
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )?;
    let mut command = Command::new("sh");
    command.args(["-c", work]);
    // SAFETY: between fork and exec only async-signal-safe calls (open, write, close) on a
    // path prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            libc::close(fd);
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(command.spawn()?)
}

#[derive(Default)]
pub struct Churn {
    pub created: AtomicU64,
    pub removed: AtomicU64,
    pub failures: AtomicU64,
    stop: AtomicBool,
}

impl Churn {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub struct Busy(Vec<Child>);

impl Drop for Busy {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The churn parent's `usage_usec` every 20 ms, with the wall time around each read.
pub struct KernelSeries {
    samples: Arc<Mutex<Vec<(u64, u64, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl KernelSeries {
    pub fn start(tree: Arc<SoakTree>) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let file = tree.root.join("churn/cpu.stat");
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let before = unix_nanos(SystemTime::now());
                if let Some(v) = usage_ns(&file) {
                    s.lock()
                        .unwrap()
                        .push((before, unix_nanos(SystemTime::now()), v));
                }
                std::thread::sleep(KERNEL_SAMPLE_EVERY);
            }
        });
        Self { samples, stop }
    }

    /// The counter at `at` (Unix ns), interpolated between the reads around it.
    pub fn at(&self, at: u64) -> Option<f64> {
        let samples = self.samples.lock().unwrap();
        let w = samples.windows(2).find(|w| w[0].1 <= at && at <= w[1].0)?;
        let (t0, v0, t1, v1) = (w[0].1, w[0].2 as f64, w[1].0, w[1].2 as f64);
        Some(v0 + (v1 - v0) * (at - t0) as f64 / (t1 - t0).max(1) as f64)
    }
}

impl Drop for KernelSeries {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn usage_ns(cpu_stat: &Path) -> Option<u64> {
    let text = fs::read_to_string(cpu_stat).ok()?;
    let usec: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))?
        .trim()
        .parse()
        .ok()?;
    Some(usec * 1000)
}

/// The churn parent's eBPF total against the kernel's, minute by minute within one collector
/// process: the time of every removed child must have reached the parent.
pub struct Segment {
    path: String,
    ebpf0: u64,
    kernel0: f64,
}

pub struct ChurnCheck {
    pub kernel_ns: f64,
    pub ebpf_ns: f64,
}

impl ChurnCheck {
    /// The part of the kernel's CPU of the churn parent that the collector's total misses.
    pub fn lost_fraction(&self) -> f64 {
        (self.kernel_ns - self.ebpf_ns) / self.kernel_ns.max(1.0)
    }
}

impl Segment {
    pub async fn begin(
        client: &mut CollectorClient<Channel>,
        tree: &SoakTree,
        series: &KernelSeries,
    ) -> anyhow::Result<Self> {
        let path = tree.churn_path();
        let (at, ebpf) = churn_ebpf(client, &path).await?;
        Ok(Self {
            path,
            ebpf0: ebpf,
            kernel0: kernel_at(series, at).await?,
        })
    }

    pub async fn check(
        &mut self,
        client: &mut CollectorClient<Channel>,
        series: &KernelSeries,
    ) -> anyhow::Result<ChurnCheck> {
        let (at, ebpf) = churn_ebpf(client, &self.path).await?;
        let kernel = kernel_at(series, at).await?;
        let check = ChurnCheck {
            kernel_ns: kernel - self.kernel0,
            ebpf_ns: ebpf.saturating_sub(self.ebpf0) as f64,
        };
        // The next check covers the next minute alone, so a loss is not diluted.
        (self.ebpf0, self.kernel0) = (ebpf, kernel);
        Ok(check)
    }
}

async fn kernel_at(series: &KernelSeries, at: u64) -> anyhow::Result<f64> {
    // The sampler may not have read past `at` yet.
    for _ in 0..50 {
        if let Some(v) = series.at(at) {
            return Ok(v);
        }
        tokio::time::sleep(KERNEL_SAMPLE_EVERY).await;
    }
    anyhow::bail!("no kernel reads around {at}")
}

/// (sample time, eBPF on-CPU ns) of the churn parent from the newest sample.
async fn churn_ebpf(
    client: &mut CollectorClient<Channel>,
    path: &str,
) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let summary = client
            .get_summary(GetSummaryRequest::default())
            .await?
            .into_inner();
        let ebpf = summary
            .cgroups
            .iter()
            .find(|c| c.path == path)
            .and_then(|c| c.ebpf_cpu.as_ref())
            .map(|e| e.on_cpu_nano_seconds);
        if let Some(v) = ebpf {
            return Ok((summary.timestamp_unix_nano, v));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no eBPF CPU for {path}: are the probes active?"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the cgroup `id` (its directory inode) still exists at `relative`.
pub fn alive(mount: &Path, relative: &str, id: u64) -> bool {
    fs::metadata(mount.join(relative.trim_start_matches('/'))).is_ok_and(|m| m.ino() == id)
}
