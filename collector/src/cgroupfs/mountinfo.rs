//! Finding the cgroup hierarchies from `/proc/self/mountinfo`.
//!
//! Nothing is assumed about where cgroupfs lives: hybrid hosts mount cgroup2 at
//! `/sys/fs/cgroup/unified` beside v1 controllers, pure-v2 nodes at `/sys/fs/cgroup`, containers
//! wherever their runtime chose.

use std::{collections::BTreeMap, io, path::PathBuf};

/// The cgroup mounts visible to this process.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgroupMounts {
    /// The first cgroup2 mount, if any.
    pub v2: Option<PathBuf>,
    /// v1 controller (or `name=…` hierarchy) -> mount point. A co-mounted hierarchy such as
    /// `cpu,cpuacct` appears once per controller.
    pub v1: BTreeMap<String, PathBuf>,
}

impl CgroupMounts {
    /// Reads `/proc/self/mountinfo`.
    pub fn discover() -> io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    }

    /// Parses mountinfo text; lines that are not cgroup mounts or are malformed are skipped.
    pub fn parse(mountinfo: &str) -> Self {
        let mut mounts = Self::default();
        for entry in mountinfo.lines().filter_map(MountEntry::parse) {
            match entry.fs_type {
                "cgroup2" if mounts.v2.is_none() => mounts.v2 = Some(entry.mount_point),
                "cgroup" => {
                    for controller in v1_controllers(entry.super_options) {
                        mounts
                            .v1
                            .entry(controller.to_owned())
                            .or_insert_with(|| entry.mount_point.clone());
                    }
                }
                _ => {}
            }
        }
        mounts
    }
}

/// The fields of one mountinfo line that discovery needs.
#[derive(Debug, PartialEq, Eq)]
pub struct MountEntry<'a> {
    pub root: String,
    pub mount_point: PathBuf,
    pub fs_type: &'a str,
    pub super_options: &'a str,
}

impl<'a> MountEntry<'a> {
    /// `id parent maj:min root mount_point options [optional…] - fstype source super_options`
    pub fn parse(line: &'a str) -> Option<Self> {
        let (before, after) = line.split_once(" - ")?;
        let mut left = before.split(' ');
        let root = left.nth(3)?;
        let mount_point = left.next()?;
        let mut right = after.split(' ');
        let fs_type = right.next().filter(|s| !s.is_empty())?;
        let _source = right.next()?;
        let super_options = right.next().unwrap_or("");
        Some(Self {
            root: unescape(root),
            mount_point: PathBuf::from(unescape(mount_point)),
            fs_type,
            super_options,
        })
    }
}

/// Options of a v1 cgroup mount that are not controllers.
const V1_NON_CONTROLLER_OPTIONS: &[&str] = &[
    "rw",
    "ro",
    "clone_children",
    "noprefix",
    "xattr",
    "nsdelegate",
    "cpuset_v2_mode",
    "favordynmods",
];

fn v1_controllers(super_options: &str) -> impl Iterator<Item = &str> {
    super_options.split(',').filter(|opt| {
        !opt.is_empty()
            && !V1_NON_CONTROLLER_OPTIONS.contains(opt)
            && (!opt.contains('=') || opt.starts_with("name="))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_owned();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from one of our hybrid hosts (kernel 6.18).
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_finds_unified_and_v1_controllers() {
        let m = CgroupMounts::parse(HYBRID);
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(m.v1["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(m.v1["cpuacct"], PathBuf::from("/sys/fs/cgroup/cpuacct"));
        assert_eq!(
            m.v1["name=systemd"],
            PathBuf::from("/sys/fs/cgroup/systemd")
        );
        assert_eq!(m.v1.len(), 4);
    }

    #[test]
    fn pure_v2_node_with_optional_fields() {
        let m = CgroupMounts::parse(
            "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 \
             cgroup2 rw,nsdelegate,memory_recursiveprot\n",
        );
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup")));
        assert!(m.v1.is_empty());
    }

    #[test]
    fn comounted_v1_controllers_and_non_controller_options() {
        let m = CgroupMounts::parse(
            "25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw shared:7 - cgroup cgroup \
             rw,xattr,release_agent=/x,cpu,cpuacct\n",
        );
        let keys: Vec<_> = m.v1.keys().map(String::as_str).collect();
        assert_eq!(keys, ["cpu", "cpuacct"]);
        assert_eq!(m.v1["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
    }

    #[test]
    fn escaped_mount_point() {
        let e = MountEntry::parse("1 2 0:3 / /mnt/with\\040space rw - cgroup2 none rw").unwrap();
        assert_eq!(e.mount_point, PathBuf::from("/mnt/with space"));
    }

    #[test]
    fn garbage_empty_and_truncated_lines_are_skipped() {
        let m = CgroupMounts::parse(
            "\n\ngarbage\n1 2 3\n1 2 0:3 / /x rw -\n41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 c rw\n",
        );
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(CgroupMounts::parse(""), CgroupMounts::default());
    }

    #[test]
    fn first_cgroup2_mount_wins() {
        let m = CgroupMounts::parse(
            "1 0 0:1 / /a rw - cgroup2 cgroup2 rw\n2 0 0:1 / /b rw - cgroup2 cgroup2 rw\n",
        );
        assert_eq!(m.v2, Some(PathBuf::from("/a")));
    }

    #[test]
    fn nested_cgroup_namespace_root_is_kept() {
        let e = MountEntry::parse("1 0 0:1 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw")
            .unwrap();
        assert_eq!(e.root, "/kubepods/pod1");
    }
}
