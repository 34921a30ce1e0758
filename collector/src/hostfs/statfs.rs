//! A filesystem's size and free space, as kubelet's cAdvisor reads it (`fs.go` `getVfsStats`):
//! capacity = f_blocks × f_frsize, free = f_bfree × f_frsize, available = f_bavail × f_frsize,
//! inodes = f_files, free inodes = f_ffree; used = capacity − free.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path, time::SystemTime};

/// tmpfs (and ramfs-backed emptyDir `medium: Memory`), from `linux/magic.h`.
pub const TMPFS_MAGIC: i64 = 0x0102_1994;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsCapacity {
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    /// What unprivileged users may still write (free minus the root reserve).
    pub available_bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
    /// `f_type`: which filesystem this is (e.g. [`TMPFS_MAGIC`]).
    pub fs_type: i64,
    /// When it was read.
    pub time: SystemTime,
}

impl FsCapacity {
    pub fn used_bytes(&self) -> u64 {
        self.capacity_bytes.saturating_sub(self.free_bytes)
    }

    pub fn inodes_used(&self) -> u64 {
        self.inodes.saturating_sub(self.inodes_free)
    }
}

/// statfs(2) of the filesystem holding `path`.
pub fn statfs(path: &Path) -> io::Result<FsCapacity> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: an all-zero statfs is a valid value for the kernel to overwrite.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `s` is a valid, writable statfs.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let time = SystemTime::now();
    // f_frsize is the unit of the block counts; filesystems that leave it 0 mean f_bsize.
    let unit = if s.f_frsize > 0 {
        s.f_frsize
    } else {
        s.f_bsize
    };
    let unit = u64::try_from(unit).unwrap_or(0);
    let bytes = |blocks: u64| blocks.saturating_mul(unit);
    Ok(FsCapacity {
        capacity_bytes: bytes(s.f_blocks),
        free_bytes: bytes(s.f_bfree),
        available_bytes: bytes(s.f_bavail),
        inodes: s.f_files,
        inodes_free: s.f_ffree,
        fs_type: s.f_type,
        time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statfs_matches_the_kernels_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let fs = statfs(dir.path()).unwrap();
        assert!(fs.capacity_bytes > 0);
        assert!(fs.free_bytes <= fs.capacity_bytes);
        assert!(fs.available_bytes <= fs.free_bytes);
        assert_eq!(fs.used_bytes(), fs.capacity_bytes - fs.free_bytes);
        // /proc is always procfs: a different filesystem from anything on disk.
        let proc = statfs(Path::new("/proc")).unwrap();
        assert_ne!(proc.fs_type, TMPFS_MAGIC);
        let err = statfs(&dir.path().join("absent")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
