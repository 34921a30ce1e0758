//! Facts about host processes from procfs: which cgroup a process runs in, when it started, and
//! which processes carry a given name (kubelet's own cgroup is found this way).

use std::{fs, io, path::Path};

/// The cgroup2 path of `pid` (the `0::` line of `/proc/<pid>/cgroup`), e.g.
/// `/system.slice/kubelet.service`. `None` when the process has no cgroup2 membership line.
pub fn cgroup2_path(proc_root: &Path, pid: u32) -> io::Result<Option<String>> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_owned()))
}

/// Processes whose `comm` is exactly `name`, lowest pid first. Processes that exit while we look
/// are skipped.
pub fn pids_named(proc_root: &Path, name: &str) -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if comm.trim_end_matches('\n') == name {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// When `pid` started, Unix ns: field 22 of `/proc/<pid>/stat` (clock ticks after boot) plus the
/// boot time.
pub fn start_time_unix_nano(proc_root: &Path, pid: u32, boot_unix_nano: u64) -> Option<u64> {
    let stat = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // comm may hold spaces and parentheses: the fields after it start at the last ')'.
    let after_comm = stat.rsplit_once(')')?.1;
    let ticks: u64 = after_comm.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    (hz > 0).then(|| boot_unix_nano + ticks * (1_000_000_000 / hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process() {
        let proc = Path::new("/proc");
        let me = std::process::id();
        let comm = fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
        let pids = pids_named(proc, comm.trim()).unwrap();
        assert!(pids.contains(&me), "{pids:?}");
        let boot = procfs::boot_time_secs().unwrap() * 1_000_000_000;
        let start = start_time_unix_nano(proc, me, boot).unwrap();
        let now = crate::unix_time::unix_nanos(std::time::SystemTime::now());
        assert!(
            start > boot && start <= now,
            "{start} not in ({boot}, {now}]"
        );
    }

    #[test]
    fn cgroup_line_of_a_fixture() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("42")).unwrap();
        fs::write(
            dir.path().join("42/cgroup"),
            "12:memory:/system.slice/kubelet.service\n0::/system.slice/kubelet.service\n",
        )
        .unwrap();
        assert_eq!(
            cgroup2_path(dir.path(), 42).unwrap().as_deref(),
            Some("/system.slice/kubelet.service")
        );
        fs::write(dir.path().join("42/cgroup"), "12:memory:/x\n").unwrap();
        assert_eq!(cgroup2_path(dir.path(), 42).unwrap(), None);
        assert!(cgroup2_path(dir.path(), 43).is_err());
    }
}
