//! A BTF-defined task local storage map (`BPF_MAP_TYPE_TASK_STORAGE`): a value per task that the
//! kernel frees with the task. aya-ebpf has cgroup storage but no task storage, so this follows
//! its `btf_maps` layout: a `#[repr(C)]` definition in `.maps` whose pointer fields' types encode
//! the map's type, key, value, size and flags in BTF for the loader.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type},
    helpers::generated::bpf_task_storage_get,
};

#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholder pointers the loader patches; never dereferenced from Rust.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> Default for TaskStorage<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    fn as_ptr(&self) -> *mut c_void {
        ptr::from_ref(self).cast_mut().cast()
    }

    /// The value of `task`, if it has one.
    ///
    /// # Safety
    /// `task` must be a BTF-typed `struct task_struct *`.
    #[inline(always)]
    pub unsafe fn get(&self, task: *const u8) -> Option<*mut T> {
        // SAFETY: the caller's contract; the verifier checks the pointer's type.
        let v = unsafe {
            bpf_task_storage_get(self.as_ptr(), task.cast_mut().cast(), ptr::null_mut(), 0)
        };
        (!v.is_null()).then_some(v.cast())
    }

    /// The value of `task`, created from `init` when it has none. Only where allocating is safe:
    /// never under the runqueue lock (`sched_switch`) on kernels before 6.4.
    ///
    /// # Safety
    /// `task` must be a BTF-typed `struct task_struct *`.
    #[inline(always)]
    pub unsafe fn get_or_insert(&self, task: *const u8, init: &mut T) -> Option<*mut T> {
        // SAFETY: the caller's contract.
        let v = unsafe {
            bpf_task_storage_get(
                self.as_ptr(),
                task.cast_mut().cast(),
                ptr::from_mut(init).cast(),
                BPF_LOCAL_STORAGE_GET_F_CREATE.into(),
            )
        };
        (!v.is_null()).then_some(v.cast())
    }
}
