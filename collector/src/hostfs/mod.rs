//! Reads outside cgroupfs that kubelet's Summary needs: a network namespace's interfaces
//! (`/proc/<pid>/net/dev`), a filesystem's capacity (statfs), the disk usage of a tree (kubelet's
//! du walk), the node's task limits (rlimit) and which cgroup a process runs in.

pub mod du;
pub mod net_dev;
pub mod process;
pub mod rlimit;
pub mod statfs;

use std::{
    fs::File,
    io::{self, Read as _},
    path::Path,
};

/// The first read asks for this much; procfs files we read are smaller (a node with many
/// interfaces has a longer net/dev, which then takes a second read).
const INITIAL_BUFFER: usize = 4096;

/// Reads a small procfs file into `buf` (cleared first) without std's size probing (a `statx`
/// and an `lseek` per file): one `read` for files that fit, more until EOF for the rest.
pub fn read_small(path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut file = File::open(path)?;
    buf.clear();
    if buf.capacity() < INITIAL_BUFFER {
        buf.reserve(INITIAL_BUFFER);
    }
    loop {
        let len = buf.len();
        if len == buf.capacity() {
            buf.reserve(len);
        }
        let spare = buf.capacity() - len;
        buf.resize(len + spare, 0);
        match file.read(&mut buf[len..]) {
            Ok(0) => {
                buf.truncate(len);
                return Ok(());
            }
            Ok(n) => buf.truncate(len + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(len),
            Err(e) => {
                buf.truncate(len);
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_larger_than_the_first_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let text: String = (0..3000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let mut buf = Vec::new();
        read_small(&path, &mut buf).unwrap();
        assert_eq!(buf, text.as_bytes());
        read_small(&path, &mut buf).unwrap();
        assert_eq!(
            buf.len(),
            text.len(),
            "the buffer is reused, not appended to"
        );
        assert!(read_small(&dir.path().join("absent"), &mut buf).is_err());
    }
}
