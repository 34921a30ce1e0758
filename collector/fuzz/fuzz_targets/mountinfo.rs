//! /proc/self/mountinfo: never panics on any line, escaped paths included; every mount found
//! comes from a line of the right filesystem type.
#![no_main]

use collector::cgroupfs::{CgroupMounts, mountinfo::MountEntry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let mounts = CgroupMounts::parse(text);
    let entries: Vec<MountEntry> = text.lines().filter_map(MountEntry::parse).collect();
    if let Some(v2) = &mounts.v2 {
        assert!(
            entries
                .iter()
                .any(|e| e.fs_type == "cgroup2" && &e.mount_point == v2)
        );
    }
    for point in mounts.v1.values() {
        assert!(
            entries
                .iter()
                .any(|e| e.fs_type == "cgroup" && &e.mount_point == point)
        );
    }
});
