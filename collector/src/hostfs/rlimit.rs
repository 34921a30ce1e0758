//! The node's task limit and task count, as kubelet reports them in `node.rlimit`
//! (`pkg/kubelet/stats/pidlimit/pidlimit_linux.go`): `maxpid` = min(`kernel.pid_max`,
//! `kernel.threads-max`), both system-wide ceilings on tasks; `curproc` = the number of tasks
//! (threads) now, the denominator of `/proc/loadavg`'s fourth field, since sysinfo(2)'s `procs`
//! is a u16 that wraps above 65,535 (kubernetes#107107), which kubelet only falls back to.

use std::{path::Path, time::SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub max_pid: Option<i64>,
    pub cur_proc: Option<i64>,
    pub time: SystemTime,
}

/// Reads the three files under `proc_root` (`/proc` on a live node). sysinfo(2) is the fallback
/// for the task count only when `proc_root` is the live `/proc`, as it always describes this
/// kernel.
pub fn read(proc_root: &Path, buf: &mut Vec<u8>) -> Rlimit {
    let mut number = |relative: &str| -> Option<String> {
        super::read_small(&proc_root.join(relative), buf).ok()?;
        Some(String::from_utf8_lossy(buf).into_owned())
    };
    let max_pid = ["sys/kernel/pid_max", "sys/kernel/threads-max"]
        .iter()
        .filter_map(|f| number(f)?.trim().parse::<i64>().ok())
        .min();
    let cur_proc = number("loadavg")
        .as_deref()
        .and_then(tasks_in_loadavg)
        .or_else(|| {
            (proc_root == Path::new("/proc"))
                .then(sysinfo_procs)
                .flatten()
        });
    Rlimit {
        max_pid,
        cur_proc,
        time: SystemTime::now(),
    }
}

/// "1.36 3.49 4.53 2/3518 3715089" → 3518.
pub fn tasks_in_loadavg(text: &str) -> Option<i64> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() < 5 {
        return None;
    }
    let (_, total) = fields[3].split_once('/')?;
    total.parse().ok()
}

fn sysinfo_procs() -> Option<i64> {
    // SAFETY: an all-zero sysinfo is valid for the kernel to fill.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: valid, writable pointer.
    (unsafe { libc::sysinfo(&mut info) } == 0).then_some(i64::from(info.procs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_denominator_is_the_task_count() {
        assert_eq!(
            tasks_in_loadavg("1.36 3.49 4.53 2/3518 3715089\n"),
            Some(3518)
        );
        assert_eq!(tasks_in_loadavg("1.36 3.49 4.53 2-3518 3715089"), None);
        assert_eq!(tasks_in_loadavg("1.36 3.49"), None);
    }

    #[test]
    fn maxpid_is_the_smaller_ceiling() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("sys/kernel");
        std::fs::create_dir_all(&kernel).unwrap();
        std::fs::write(kernel.join("pid_max"), "4194304\n").unwrap();
        std::fs::write(kernel.join("threads-max"), "192730\n").unwrap();
        std::fs::write(dir.path().join("loadavg"), "0.10 0.20 0.30 3/119 6340\n").unwrap();
        let r = read(dir.path(), &mut Vec::new());
        assert_eq!((r.max_pid, r.cur_proc), (Some(192_730), Some(119)));
        // Without loadavg, a fixture tree has no task count (sysinfo is the live kernel's).
        std::fs::remove_file(dir.path().join("loadavg")).unwrap();
        std::fs::remove_file(kernel.join("threads-max")).unwrap();
        let r = read(dir.path(), &mut Vec::new());
        assert_eq!((r.max_pid, r.cur_proc), (Some(4_194_304), None));
    }

    #[test]
    fn live_node() {
        let r = read(Path::new("/proc"), &mut Vec::new());
        assert!(r.max_pid.is_some_and(|m| m > 0));
        assert!(r.cur_proc.is_some_and(|c| c > 0 && c <= r.max_pid.unwrap()));
    }
}
