//! The `lifecycle` family: cgroup2 creations and removals, from tp_btf `cgroup_mkdir` and
//! `cgroup_rmdir`, through their own ring buffer. They let user space keep its tree current
//! between walks and name cgroups that lived shorter than a pass.
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes},
    macros::{btf_tracepoint, map},
    maps::RingBuf,
    programs::BtfTracePointContext,
};
use collector_common::{CgroupOffsets, EVENT_PATH_LEN, LifecycleEvent, counter, lifecycle};
use collector_ebpf::{
    counters::bump,
    kernel::{cgroup_id, field},
};

#[unsafe(no_mangle)]
static LIFECYCLE_OFFSETS: Global<CgroupOffsets> = Global::new(CgroupOffsets {
    cgroup_kn: 0,
    kernfs_node_id: 0,
    cgroup_root: 0,
    root_hierarchy_id: 0,
    valid: 0,
    _pad: 0,
});

/// 1 MiB: about 1,900 events between two drains. When it overflows (counted), user space walks
/// the tree, so discovery stays right; only the names of cgroups that lived shorter than a pass
/// can be lost.
#[map]
static LIFECYCLE_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// tp_btf cgroup_mkdir(struct cgroup *cgrp, const char *path)
#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> u32 {
    event(&ctx, lifecycle::CGROUP_MKDIR);
    0
}

/// tp_btf cgroup_rmdir(struct cgroup *cgrp, const char *path)
#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: BtfTracePointContext) -> u32 {
    event(&ctx, lifecycle::CGROUP_RMDIR);
    0
}

#[inline(always)]
fn event(ctx: &BtfTracePointContext, kind: u32) {
    let off = LIFECYCLE_OFFSETS.load();
    if off.valid == 0 {
        return;
    }
    // Argument 0 is the cgroup, argument 1 its path (a kernel string).
    let (cgroup, path): (*const u8, *const u8) = (ctx.arg(0), ctx.arg(1));
    if cgroup.is_null() {
        return;
    }
    // v1 hierarchies raise these too, with ids from their own kernfs roots: keep only cgroup2.
    // SAFETY: BTF-typed `struct cgroup *` and this kernel's offsets.
    let hierarchy: i32 = unsafe {
        let root: *const u8 = field(cgroup, off.cgroup_root);
        field(root, off.root_hierarchy_id)
    };
    if hierarchy != 0 {
        return;
    }
    // SAFETY: as above.
    let id = unsafe { cgroup_id(cgroup, off.cgroup_kn, off.kernfs_node_id) };
    let Some(mut entry) = LIFECYCLE_EVENTS.reserve::<LifecycleEvent>(0) else {
        bump(counter::EVENTS_DROPPED);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: reserved ring buffer memory the size of a LifecycleEvent; every field is written
    // before submit.
    unsafe {
        (*e).kind = kind;
        (*e).cgroup_id = id;
        (*e).time_ns = bpf_ktime_get_ns();
        (*e).path_len = match bpf_probe_read_kernel_str_bytes(path, &mut (*e).path) {
            // A string that filled the buffer may have been cut: say so.
            Ok(bytes) if bytes.len() + 1 >= EVENT_PATH_LEN => {
                bump(counter::PATH_TRUNCATED);
                EVENT_PATH_LEN as u32
            }
            Ok(bytes) => bytes.len() as u32,
            Err(_) => 0,
        };
    }
    entry.submit(0);
}

collector_ebpf::license!();
