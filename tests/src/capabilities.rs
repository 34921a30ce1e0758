//! Which of a manifest's capabilities this host can grant at all. A runtime (runc) cannot give
//! a container a capability outside its own bounding set, and fails the container with
//! "unable to apply caps: operation not permitted"; a host that is itself a restricted
//! container (a CI sandbox) may lack some, as kubelet's node would then too.

use anyhow::{Context as _, bail};

/// Linux capability numbers (`linux/capability.h`), by the name Kubernetes uses.
const NUMBERS: &[(&str, u32)] = &[
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("DAC_READ_SEARCH", 2),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("LINUX_IMMUTABLE", 9),
    ("NET_BIND_SERVICE", 10),
    ("NET_BROADCAST", 11),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("IPC_LOCK", 14),
    ("IPC_OWNER", 15),
    ("SYS_MODULE", 16),
    ("SYS_RAWIO", 17),
    ("SYS_CHROOT", 18),
    ("SYS_PTRACE", 19),
    ("SYS_PACCT", 20),
    ("SYS_ADMIN", 21),
    ("SYS_BOOT", 22),
    ("SYS_NICE", 23),
    ("SYS_RESOURCE", 24),
    ("SYS_TIME", 25),
    ("SYS_TTY_CONFIG", 26),
    ("MKNOD", 27),
    ("LEASE", 28),
    ("AUDIT_WRITE", 29),
    ("AUDIT_CONTROL", 30),
    ("SETFCAP", 31),
    ("MAC_OVERRIDE", 32),
    ("MAC_ADMIN", 33),
    ("SYSLOG", 34),
    ("WAKE_ALARM", 35),
    ("BLOCK_SUSPEND", 36),
    ("AUDIT_READ", 37),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

/// The capability's number; `name` as in a securityContext (`BPF`, also `CAP_BPF`).
pub fn number(name: &str) -> anyhow::Result<u32> {
    let bare = name.strip_prefix("CAP_").unwrap_or(name);
    match NUMBERS.iter().find(|(n, _)| n.eq_ignore_ascii_case(bare)) {
        Some((_, number)) => Ok(*number),
        None => bail!("unknown capability {name}"),
    }
}

/// This process's bounding set (`CapBnd` of /proc/self/status).
pub fn bounding_set() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .context("no CapBnd in /proc/self/status")?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

/// `names` split into those in `bounding` and those outside it, each in the given order.
pub fn split_by_bounding_set(
    names: &[String],
    bounding: u64,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut inside = Vec::new();
    let mut outside = Vec::new();
    for name in names {
        if bounding & (1u64 << number(name)?) != 0 {
            inside.push(name.clone());
        } else {
            outside.push(name.clone());
        }
    }
    Ok((inside, outside))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_the_kernels_numbers_and_split_by_the_bounding_set() {
        assert_eq!(number("BPF").unwrap(), 39);
        assert_eq!(number("CAP_PERFMON").unwrap(), 38);
        assert_eq!(number("sys_resource").unwrap(), 24);
        assert!(number("FLY").is_err());
        // A bounding set like a sandbox's: everything up to CHECKPOINT_RESTORE but
        // SYS_RESOURCE.
        let bounding = 0x0000_01ff_feff_ffff;
        let names = ["BPF", "PERFMON", "SYS_RESOURCE"].map(String::from);
        let (inside, outside) = split_by_bounding_set(&names, bounding).unwrap();
        assert_eq!(inside, ["BPF", "PERFMON"]);
        assert_eq!(outside, ["SYS_RESOURCE"]);
        // This process's own set parses (every process has one).
        bounding_set().unwrap();
    }
}
