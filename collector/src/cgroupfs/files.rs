//! Cheap file reads for a sampling pass: directory handles plus one reused buffer.
//!
//! What a pass costs is mostly the kernel's path walk, not the parsing: kernfs revalidates every
//! dentry of `/sys/fs/cgroup/memory/kubepods/burstable/pod…/…/memory.stat` on each open. So each
//! hierarchy's root is opened once, each cgroup's directory once per hierarchy (`openat` from
//! the root), and each file with `openat(dir, name)`: a one-component lookup. Reads skip std's
//! `read_to_string` probing (an extra `statx` and `lseek` per file) and stop at the first short
//! read: a cgroup file is one seq_file record, which the kernel copies whole when it fits. The
//! exception is a list such as `cgroup.procs` (one record per process, at most one page per
//! `read`), which [`FileBuffer::read_list`] reads to EOF.

use super::name;
use std::{
    ffi::CStr,
    fs::File,
    io::{self, Read as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::OpenOptionsExt as _,
    },
    path::{Path, PathBuf},
};

/// The first read asks for this much; cgroup files are far smaller except v1 memory.stat with
/// many NUMA-free keys (~1.5 KiB) and io.stat on hosts with many devices.
const INITIAL_BUFFER: usize = 8192;

/// A hierarchy's mount point, opened on first use and kept open.
#[derive(Debug)]
pub struct Root {
    path: PathBuf,
    fd: Option<OwnedFd>,
}

impl Root {
    pub fn new(path: PathBuf) -> Self {
        Self { path, fd: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the cgroup at `relative` (no leading slash; empty = the root; names that are not
    /// UTF-8 escaped as [`name::to_str`] does). `Ok(None)` when it does not exist in this
    /// hierarchy.
    pub fn open(&mut self, relative: &str, name: &mut Vec<u8>) -> io::Result<Option<OwnedFd>> {
        if self.fd.is_none() {
            self.fd = Some(open_dir(&self.path)?);
        }
        let root = self.fd.as_ref().map_or(-1, |fd| fd.as_raw_fd());
        let relative = if relative.is_empty() { "." } else { relative };
        name.clear();
        name::push_bytes(relative, name);
        openat_scratch(root, libc::O_PATH | libc::O_DIRECTORY, name)
    }
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(path)?;
    Ok(file.into())
}

/// `openat(dir, name, flags | O_CLOEXEC)`, `Ok(None)` on ENOENT. `scratch` holds the
/// NUL-terminated name so nothing is allocated per call.
fn openat(dir: i32, name: &[u8], flags: i32, scratch: &mut Vec<u8>) -> io::Result<Option<OwnedFd>> {
    scratch.clear();
    scratch.extend_from_slice(name);
    openat_scratch(dir, flags, scratch)
}

/// [`openat`] of the name already in `scratch` (without its NUL).
fn openat_scratch(dir: i32, flags: i32, scratch: &mut Vec<u8>) -> io::Result<Option<OwnedFd>> {
    scratch.push(0);
    let Ok(c_name) = CStr::from_bytes_with_nul(scratch) else {
        // A NUL inside a name cannot exist on disk.
        return Ok(None);
    };
    // SAFETY: `c_name` is NUL-terminated and outlives the call; the fd we get is ours to own.
    let fd = unsafe { libc::openat(dir, c_name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::NotFound => Ok(None),
            _ => Err(err),
        };
    }
    // SAFETY: a fresh descriptor returned by openat.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Where a read stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The first read that does not fill the buffer: the whole record of a one-record file.
    ShortRead,
    /// `read` returning 0.
    Eof,
}

/// The text buffer of a pass, reused for every file.
#[derive(Debug)]
pub struct FileBuffer {
    bytes: Vec<u8>,
    len: usize,
    name: Vec<u8>,
}

impl Default for FileBuffer {
    fn default() -> Self {
        Self {
            bytes: vec![0; INITIAL_BUFFER],
            len: 0,
            name: Vec::with_capacity(256),
        }
    }
}

impl FileBuffer {
    /// Scratch for NUL-terminated names (shared with [`Root::open`]).
    pub fn name_scratch(&mut self) -> &mut Vec<u8> {
        &mut self.name
    }

    /// Reads `dir/name`, a one-record file, up to its first short read. `Ok(None)` when the file
    /// does not exist; text that is not UTF-8 reads as empty (garbage parses to nothing, which
    /// the parsers count where it matters).
    pub fn read(&mut self, dir: &OwnedFd, name: &CStr) -> io::Result<Option<&str>> {
        self.read_until(dir, name, Until::ShortRead)
    }

    /// Reads `dir/name` to EOF: for multi-record seq_files such as `cgroup.procs`, which the
    /// kernel hands out at most a page per `read` however big the buffer.
    pub fn read_list(&mut self, dir: &OwnedFd, name: &CStr) -> io::Result<Option<&str>> {
        self.read_until(dir, name, Until::Eof)
    }

    /// Reads `dir/name` up to `until`; see [`Self::read`] and [`Self::read_list`].
    pub fn read_until(
        &mut self,
        dir: &OwnedFd,
        name: &CStr,
        until: Until,
    ) -> io::Result<Option<&str>> {
        let Some(fd) = openat(
            dir.as_raw_fd(),
            name.to_bytes(),
            libc::O_RDONLY,
            &mut self.name,
        )?
        else {
            return Ok(None);
        };
        let mut file = File::from(fd);
        self.len = 0;
        loop {
            if self.len == self.bytes.len() {
                self.bytes.resize(self.bytes.len() * 2, 0);
            }
            let room = self.bytes.len() - self.len;
            let n = match file.read(&mut self.bytes[self.len..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.len += n;
            let done = match until {
                Until::ShortRead => n < room,
                Until::Eof => n == 0,
            };
            if done {
                break;
            }
        }
        Ok(Some(
            std::str::from_utf8(&self.bytes[..self.len]).unwrap_or(""),
        ))
    }
}
