//! CPU cost of one sampling pass over this host's real cgroups (cgroupfs + summary build), with
//! and without the eBPF probes: `cargo run --release --example pass_cost [-- PASSES [CREATE]]`.
//! CREATE > 0 first adds that many empty cgroups (in cgroup2 and in every v1 hierarchy, as a
//! container runtime on a hybrid host would) and removes them at the end.
//! Run as root for the eBPF figure. `cargo xtask bench` is the full benchmark; this is the
//! quick check of one number.

use std::{fs, path::PathBuf, time::Duration};

use collector::{
    cgroupfs::CgroupMounts,
    node::NodeInfo,
    probes::{ProbeConfig, Probes},
    sampler::Sampler,
    store::CgroupRates,
    summary,
};

fn cpu_time() -> Duration {
    // SAFETY: zeroed rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Cgroups made for the measurement, removed on drop (children first).
struct Extra(Vec<PathBuf>);

impl Extra {
    fn create(mounts: &CgroupMounts, count: usize) -> anyhow::Result<Self> {
        let mut extra = Self(Vec::new());
        if count == 0 {
            return Ok(extra);
        }
        let parent = format!("pass-cost-{}", std::process::id());
        let mut roots: Vec<&PathBuf> = mounts.v2.iter().collect();
        roots.extend(mounts.v1.values());
        roots.sort();
        roots.dedup();
        for root in roots {
            let dir = root.join(&parent);
            if fs::create_dir(&dir).is_err() {
                continue; // e.g. a named hierarchy we may not write to
            }
            extra.0.push(dir.clone());
            for i in 0..count {
                let child = dir.join(format!("c{i}"));
                fs::create_dir(&child)?;
                extra.0.push(child);
            }
        }
        Ok(extra)
    }
}

impl Drop for Extra {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let passes: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let create: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let mounts = CgroupMounts::discover()?;
    let mount = mounts
        .v2
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no cgroup2 mount"))?;
    let _extra = Extra::create(&mounts, create)?;
    let node = NodeInfo::discover(mounts.clone(), None);
    let measure =
        |probes: Probes, cgroupfs_interval: Duration| -> anyhow::Result<(usize, Duration)> {
            let mut sampler = Sampler::new(mount.clone(), &mounts, probes)
                .with_cgroupfs_interval(cgroupfs_interval);
            // The first pass reads everything (and fills the dentry cache); it is not timed.
            let count = sampler.sample()?.cgroups.len();
            let cpu0 = cpu_time();
            for _ in 0..passes {
                let sample = sampler.sample()?;
                let rates = vec![CgroupRates::default(); sample.cgroups.len()];
                std::hint::black_box(summary::build(&sample, &rates, &node));
            }
            Ok((count, (cpu_time() - cpu0) / passes))
        };
    let disabled = ProbeConfig {
        disabled: true,
        ..ProbeConfig::default()
    };
    let (count, full) = measure(Probes::load(&disabled), Duration::ZERO)?;
    let per_cgroup = |d: Duration| d.as_secs_f64() * 1e6 / count.max(1) as f64;
    println!(
        "{count} cgroups; full cgroupfs pass: {:.1} µs CPU ({:.2} µs per cgroup)",
        full.as_secs_f64() * 1e6,
        per_cgroup(full)
    );
    let probes = Probes::load(&ProbeConfig::default());
    if probes.cpu_time.is_none() {
        println!("eBPF CPU probe not active (run as root): no fast-pass figure");
        return Ok(());
    }
    // Never due again within the run: every timed pass is a probe-only pass.
    let (_, fast) = measure(probes, Duration::from_secs(3600))?;
    let every_10s = fast + full / 10;
    println!(
        "probe-only pass (lifecycle events + maps): {:.1} µs CPU ({:.2} µs per cgroup)",
        fast.as_secs_f64() * 1e6,
        per_cgroup(fast)
    );
    println!(
        "at 1 s: cgroupfs every pass {:.2} % of one core; eBPF every pass + cgroupfs every 10 s \
         {:.2} % ({:.1}x cheaper)",
        full.as_secs_f64() * 100.0,
        every_10s.as_secs_f64() * 100.0,
        full.as_secs_f64() / every_10s.as_secs_f64()
    );
    Ok(())
}
