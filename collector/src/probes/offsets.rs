//! Kernel struct offsets for the eBPF programs, computed from the running kernel's BTF (Rust eBPF
//! has no CO-RE): each object gets the fields it reads as read-only globals before load.

use collector_common::{CgroupOffsets, SchedOffsets, TaskOffsets};

use super::btf::{Btf, BtfError};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// `task->cgroups->dfl_cgrp->kn->id`: (cgroups, dfl_cgrp, kn, id).
fn task_cgroup_chain(btf: &Btf) -> Result<[u32; 4], BtfError> {
    Ok([
        btf.member_offset("task_struct", "cgroups", Some(8))?,
        btf.member_offset("css_set", "dfl_cgrp", Some(8))?,
        btf.member_offset("cgroup", "kn", Some(8))?,
        btf.member_offset("kernfs_node", "id", Some(8))?,
    ])
}

/// What the `sched` program reads from the outgoing and incoming tasks. Without
/// `task_struct.sched_info` (a kernel built without CONFIG_SCHED_INFO) the run-queue part is
/// off and `has_sched_info` says so; CPU time and faults still work.
pub fn sched_offsets(btf: &Btf) -> Result<SchedOffsets, BtfError> {
    let [task_cgroups, css_set_dfl_cgrp, cgroup_kn, kernfs_node_id] = task_cgroup_chain(btf)?;
    let sched_info = btf
        .member_offset("task_struct", "sched_info.run_delay", Some(8))
        .and_then(|run_delay| {
            Ok((
                run_delay,
                btf.member_offset("task_struct", "sched_info.pcount", Some(8))?,
            ))
        });
    let (run_delay, pcount, has_sched_info) = match sched_info {
        Ok((run_delay, pcount)) => (run_delay, pcount, 1),
        Err(BtfError::NoMember { .. }) => (0, 0, 0),
        Err(e) => return Err(e),
    };
    Ok(SchedOffsets {
        task_pid: btf.member_offset("task_struct", "pid", Some(4))?,
        task_cgroups,
        css_set_dfl_cgrp,
        cgroup_kn,
        kernfs_node_id,
        sum_exec_runtime: btf.member_offset("task_struct", "se.sum_exec_runtime", Some(8))?,
        min_flt: btf.member_offset("task_struct", "min_flt", Some(8))?,
        maj_flt: btf.member_offset("task_struct", "maj_flt", Some(8))?,
        run_delay,
        pcount,
        has_sched_info,
        valid: 1,
    })
}

/// What the `oom` program reads from a victim's `task_struct` (6.8+ signature).
pub fn task_offsets(btf: &Btf) -> Result<TaskOffsets, BtfError> {
    let [task_cgroups, css_set_dfl_cgrp, cgroup_kn, kernfs_node_id] = task_cgroup_chain(btf)?;
    Ok(TaskOffsets {
        task_pid: btf.member_offset("task_struct", "pid", Some(4))?,
        task_comm: btf.member_offset("task_struct", "comm", Some(16))?,
        task_cgroups,
        css_set_dfl_cgrp,
        cgroup_kn,
        kernfs_node_id,
        valid: 1,
        _pad: 0,
    })
}

/// What the `lifecycle` programs read from a `struct cgroup`.
pub fn cgroup_offsets(btf: &Btf) -> Result<CgroupOffsets, BtfError> {
    Ok(CgroupOffsets {
        cgroup_kn: btf.member_offset("cgroup", "kn", Some(8))?,
        kernfs_node_id: btf.member_offset("kernfs_node", "id", Some(8))?,
        cgroup_root: btf.member_offset("cgroup", "root", Some(8))?,
        root_hierarchy_id: btf.member_offset("cgroup_root", "hierarchy_id", Some(4))?,
        valid: 1,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every offset the programs need exists in the running kernel (readable without root).
    #[test]
    fn the_running_kernel_has_every_field() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("SKIP: no {VMLINUX_BTF}");
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let sched = sched_offsets(&btf).unwrap();
        assert_eq!(sched.valid, 1);
        assert_eq!(sched.has_sched_info, 1, "Debian kernels keep sched_info");
        assert!(sched.sum_exec_runtime > 0);
        assert_ne!(sched.min_flt, sched.maj_flt);
        assert_eq!(task_offsets(&btf).unwrap().valid, 1);
        assert_eq!(cgroup_offsets(&btf).unwrap().valid, 1);
    }
}
