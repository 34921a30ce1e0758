//! Walking the cgroup2 hierarchy: every cgroup's id (its directory inode) and path.

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
    /// Path relative to the mount, `/` for the root.
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
                path: Arc::from(format!("/{}", relative.to_string_lossy())),
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
    fn missing_mount_is_an_error() {
        assert!(walk(Path::new("/nonexistent/cgroup/mount")).is_err());
    }
}
