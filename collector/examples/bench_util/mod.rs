//! Helpers shared by the bench programs (`cargo xtask bench` runs them): process CPU and memory
//! from /proc, the sibling `collector` binary, and the median-with-spread every figure carries.
#![allow(dead_code)] // each bench program uses its own subset

use std::{
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// CPU time of this process (all threads) with microsecond resolution.
pub fn own_cpu_time() -> Duration {
    // SAFETY: zeroed rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
}

/// Resident set size now, bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    status_kib(&pid.to_string(), "VmRSS:") * 1024
}

/// Peak resident set size of a process so far (start-up included), bytes.
pub fn peak_rss_bytes(pid: u32) -> u64 {
    status_kib(&pid.to_string(), "VmHWM:") * 1024
}

/// Peak resident set size of this process, bytes.
pub fn own_peak_rss_bytes() -> u64 {
    status_kib("self", "VmHWM:") * 1024
}

/// `target/<profile>/collector`, next to the examples directory this program runs from.
pub fn collector_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("collector"))
        .expect("collector binary next to the examples directory")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed and reaped when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Nearest-rank percentile of sorted values; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Median, min and max of repeated measurements, as a JSON object.
pub fn spread(values: &[f64]) -> serde_json::Value {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    serde_json::json!({
        "median": percentile(&v, 0.5),
        "min": v.first().copied().unwrap_or(f64::NAN),
        "max": v.last().copied().unwrap_or(f64::NAN),
        "n": v.len(),
    })
}

/// CPU share of a core used by `pid` in each of `windows` consecutive windows of `each`.
pub async fn cpu_windows(pid: u32, windows: u32, each: Duration) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..windows {
        let cpu0 = cpu_seconds(pid);
        let t0 = std::time::Instant::now();
        tokio::time::sleep(each).await;
        out.push((cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64());
    }
    out
}
