//! Kernel struct offsets for the eBPF programs, computed from the running kernel's BTF.

use collector_common::TaskOffsets;

use super::btf::{Btf, BtfError};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Offsets to follow `task_struct *` -> pid, comm and cgroups->dfl_cgrp->kn->id, and
/// `cgroup` -> root->hierarchy_id.
pub fn task_offsets(btf: &Btf) -> Result<TaskOffsets, BtfError> {
    Ok(TaskOffsets {
        task_pid: btf.member_offset("task_struct", "pid", Some(4))?,
        task_cgroups: btf.member_offset("task_struct", "cgroups", Some(8))?,
        css_set_dfl_cgrp: btf.member_offset("css_set", "dfl_cgrp", Some(8))?,
        cgroup_kn: btf.member_offset("cgroup", "kn", Some(8))?,
        kernfs_node_id: btf.member_offset("kernfs_node", "id", Some(8))?,
        valid: 1,
        task_comm: btf.member_offset("task_struct", "comm", Some(16))?,
        cgroup_root: btf.member_offset("cgroup", "root", Some(8))?,
        root_hierarchy_id: btf.member_offset("cgroup_root", "hierarchy_id", Some(4))?,
        _pad: 0,
    })
}
