//! Reading kernel structs from the typed pointers tp_btf programs receive.
//!
//! Rust eBPF has no CO-RE, so field offsets come from the running kernel's BTF, computed in user
//! space and written into each object's read-only data before load. The verifier sees them as
//! constants (the section is frozen), so `base + offset` keeps its BTF type and every read below
//! is a direct load that the verifier checks against BTF and the JIT guards against faults (a
//! NULL or stale pointer reads as 0): no `bpf_probe_read_kernel` call on the hot path.

/// `*(base + offset)` as a `T`.
///
/// A volatile read, so LLVM never merges it with a load from a map at the same place in both
/// arms of a branch (one instruction reached with two kinds of pointer is something the
/// verifier rejects: "same insn cannot be used with different pointers").
///
/// # Safety
/// `base` must be a BTF-typed kernel pointer (a tp_btf argument or a pointer loaded through
/// one) and `offset` the offset of a `T`-sized field of its type, from the kernel's BTF.
#[inline(always)]
pub unsafe fn field<T: Copy>(base: *const u8, offset: u32) -> T {
    // SAFETY: the caller's contract; the verifier rejects any other access at load time.
    unsafe { core::ptr::read_volatile(base.add(offset as usize).cast::<T>()) }
}

/// `cgroup->kn->id`: a cgroup's id in its hierarchy (for cgroup2, the directory's inode).
///
/// # Safety
/// `cgroup` must be a BTF-typed `struct cgroup *`; the offsets those of the running kernel.
#[inline(always)]
pub unsafe fn cgroup_id(cgroup: *const u8, kn: u32, kn_id: u32) -> u64 {
    // SAFETY: the caller's contract: both are fields of the pointed-to types.
    unsafe {
        let node: *const u8 = field(cgroup, kn);
        field(node, kn_id)
    }
}

/// `css_set->dfl_cgrp->kn->id`: the v2 cgroup id of a task whose `cgroups` is `css_set`.
///
/// # Safety
/// `css_set` must be a BTF-typed `struct css_set *`; the offsets those of the running kernel.
#[inline(always)]
pub unsafe fn dfl_cgroup_id(css_set: *const u8, dfl_cgrp: u32, kn: u32, kn_id: u32) -> u64 {
    // SAFETY: the caller's contract.
    unsafe {
        let cgroup: *const u8 = field(css_set, dfl_cgrp);
        cgroup_id(cgroup, kn, kn_id)
    }
}
