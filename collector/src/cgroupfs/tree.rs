//! Walking the cgroup2 hierarchy: every cgroup's id (its directory inode) and path.

use super::name;
use std::{
    fs, io,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
};

/// One cgroup found by a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupNode {
    /// Directory inode number: the kernel's cgroup id, as `bpf_get_current_cgroup_id()` returns.
    pub id: u64,
    /// Path relative to the mount, `/` for the root; bytes that are not UTF-8 escaped
    /// reversibly ([`super::name`]), so the reader still opens the directory.
    pub path: Arc<str>,
    /// Index of the parent in the walk's output; `None` for the root.
    pub parent: Option<usize>,
}

/// Walks the hierarchy mounted at `mount`, parents before children (pre-order).
///
/// A directory that vanishes while being walked is simply absent from the result. Any other
/// failure (out of file descriptors, permission denied) is an error: a subtree we could not
/// list is not a subtree that is gone.
pub fn walk(mount: &Path) -> io::Result<Vec<CgroupNode>> {
    let root_id = fs::metadata(mount)?.ino();
    let mut nodes = vec![CgroupNode {
        id: root_id,
        path: Arc::from("/"),
        parent: None,
    }];
    let mut stack: Vec<(usize, PathBuf)> = vec![(0, mount.to_path_buf())];
    while let Some((parent, dir)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed since we listed its parent: skip that subtree.
            Err(e) if dir.as_path() != mount && vanished(&e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "cgroup vanished during walk");
                continue;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("listing {}: {e}", dir.display()),
                ));
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if vanished(&e) => break,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("listing {}: {e}", dir.display()),
                    ));
                }
            };
            // d_type from readdir: no stat per cgroup.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            let Ok(relative) = path.strip_prefix(mount) else {
                continue;
            };
            nodes.push(CgroupNode {
                // kernfs reports the node id as d_ino, which is the cgroup id.
                id: entry.ino(),
                path: Arc::from(format!("/{}", name::to_str(relative.as_os_str()))),
                parent: Some(parent),
            });
            stack.push((nodes.len() - 1, path));
        }
    }
    Ok(nodes)
}

/// ENOENT or ENODEV: the directory was removed (kernfs answers ENODEV for a removed node).
fn vanished(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_nested_directories_with_parent_links() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::create_dir_all(dir.path().join("c")).unwrap();
        fs::write(dir.path().join("a/cpu.stat"), "usage_usec 1\n").unwrap();

        let nodes = walk(dir.path()).unwrap();
        let paths: Vec<&str> = nodes.iter().map(|n| &*n.path).collect();
        assert_eq!(nodes.len(), 4, "{paths:?}");
        assert_eq!(nodes[0].path.as_ref(), "/");
        let b = nodes.iter().find(|n| &*n.path == "/a/b").unwrap();
        let a_index = nodes.iter().position(|n| &*n.path == "/a").unwrap();
        assert_eq!(b.parent, Some(a_index));
        assert_eq!(b.id, fs::metadata(dir.path().join("a/b")).unwrap().ino());
        // Parents come before children.
        for (i, n) in nodes.iter().enumerate() {
            assert!(n.parent.is_none_or(|p| p < i));
        }
    }

    #[test]
    fn names_that_are_not_utf8_are_walked_and_opened_with_their_subtree() {
        use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _};
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join(OsStr::from_bytes(b"caf\xe9"));
        fs::create_dir_all(odd.join("child")).unwrap();
        fs::create_dir_all(dir.path().join(OsStr::from_bytes(b"caf\xe8"))).unwrap();
        fs::write(odd.join("child/cpu.stat"), "usage_usec 7\n").unwrap();

        let nodes = walk(dir.path()).unwrap();
        let paths: Vec<&str> = nodes.iter().map(|n| &*n.path).collect();
        assert_eq!(nodes.len(), 4, "{paths:?}");
        let child = nodes.iter().find(|n| n.path.ends_with("/child")).unwrap();
        let e9 = nodes
            .iter()
            .position(|n| n.id == fs::metadata(&odd).unwrap().ino())
            .unwrap();
        assert_eq!(
            child.parent,
            Some(e9),
            "the child hangs under its own parent"
        );
        assert!(
            paths.iter().all(|p| !p.contains('\u{FFFD}')),
            "two names must not collapse into one lossy path: {paths:?}"
        );

        // The reader opens the child through the escaped path and reads its file.
        let mut root = super::super::files::Root::new(dir.path().to_path_buf());
        let mut scratch = Vec::new();
        let fd = root
            .open(child.path.trim_start_matches('/'), &mut scratch)
            .unwrap()
            .expect("the escaped path names the directory");
        let mut buffer = super::super::files::FileBuffer::default();
        assert_eq!(
            buffer.read(&fd, c"cpu.stat").unwrap(),
            Some("usage_usec 7\n")
        );
    }

    #[test]
    fn missing_mount_is_an_error() {
        assert!(walk(Path::new("/nonexistent/cgroup/mount")).is_err());
    }
}
