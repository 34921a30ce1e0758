//! Disk usage of a tree, as kubelet measures volumes, logs and etc-hosts
//! (`pkg/volume/util/fs` `DiskUsage`, cAdvisor's `GetDirUsage`): every entry's `st_blocks` × 512
//! bytes and one inode each, the top included; entries on another device neither counted nor
//! descended into; a hard-linked inode counted once; entries that vanish mid-walk skipped; any
//! other error fails the walk (kubelet then reports nothing for that path).
//!
//! A [`Budget`] bounds the walk: at most so many entries per walk, and a duty cycle, so that a
//! node with millions of files in its volumes costs a bounded share of a core.

use std::{
    collections::HashSet,
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// `st_blocks` counts 512-byte units whatever the filesystem's block size.
const STAT_BLOCK_SIZE: u64 = 512;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DuError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: more than {limit} entries; not measured")]
    TooLarge { path: PathBuf, limit: u64 },
}

/// How much a walk may cost: entries per walk, and the share of wall time spent walking.
#[derive(Debug)]
pub struct Budget {
    max_entries: u64,
    /// Walking time allowed per second of wall time, as a fraction (0.02 = 2 % of a core).
    duty: f64,
    /// Work since the last pause, and when it began.
    worked: Duration,
    since: Instant,
    /// Entries visited over the budget's life (for the walker's own figures).
    pub entries: u64,
    /// Time spent pausing to keep the duty cycle.
    pub paused: Duration,
}

/// Entries between duty-cycle checks: a check reads the clock, a stat costs about as much.
const CHECK_EVERY: u64 = 256;

impl Budget {
    pub fn new(max_entries: u64, duty: f64) -> Self {
        Self {
            max_entries,
            duty: duty.clamp(0.001, 1.0),
            worked: Duration::ZERO,
            since: Instant::now(),
            entries: 0,
            paused: Duration::ZERO,
        }
    }

    /// Counts one entry; every [`CHECK_EVERY`] entries sleeps long enough that walking stays
    /// within the duty cycle.
    fn tick(&mut self) {
        self.entries += 1;
        if !self.entries.is_multiple_of(CHECK_EVERY) || self.duty >= 1.0 {
            return;
        }
        self.worked += self.since.elapsed();
        let rest = self.worked.mul_f64(1.0 / self.duty - 1.0);
        std::thread::sleep(rest);
        self.paused += rest;
        self.worked = Duration::ZERO;
        self.since = Instant::now();
    }
}

/// The usage of everything under `top` (`top` itself included), within `budget`.
pub fn disk_usage(top: &Path, budget: &mut Budget) -> Result<Usage, DuError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| DuError::Io { path, source }
    };
    let root = fs::symlink_metadata(top).map_err(io_err(top))?;
    let device = root.dev();
    let mut usage = Usage::default();
    let mut linked: HashSet<u64> = HashSet::new();
    let start = budget.entries;
    let mut count = |meta: &fs::Metadata, usage: &mut Usage| {
        if meta.nlink() > 1 && !linked.insert(meta.ino()) {
            return;
        }
        usage.bytes += meta.blocks() * STAT_BLOCK_SIZE;
        usage.inodes += 1;
    };
    count(&root, &mut usage);
    budget.tick();
    if !root.is_dir() {
        return Ok(usage);
    }
    let mut pending = vec![top.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed since we saw it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir)(e)),
            };
            if budget.entries - start >= budget.max_entries {
                return Err(DuError::TooLarge {
                    path: top.to_owned(),
                    limit: budget.max_entries,
                });
            }
            budget.tick();
            // fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW): what filepath.Walk's Lstat sees.
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&entry.path())(e)),
            };
            if meta.dev() != device {
                continue;
            }
            count(&meta, &mut usage);
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unbounded() -> Budget {
        Budget::new(u64::MAX, 1.0)
    }

    #[test]
    fn counts_blocks_and_inodes_like_du() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("vol");
        fs::create_dir_all(top.join("a/b")).unwrap();
        fs::write(top.join("a/one"), vec![1u8; 10_000]).unwrap();
        fs::write(top.join("a/b/two"), vec![2u8; 100_000]).unwrap();
        fs::hard_link(top.join("a/b/two"), top.join("two-again")).unwrap();
        std::os::unix::fs::symlink("a/one", top.join("link")).unwrap();
        let usage = disk_usage(&top, &mut unbounded()).unwrap();
        // The ground truth: lstat of every path, the hard link once.
        let mut expected = Usage::default();
        for p in ["", "a", "a/b", "a/one", "a/b/two", "link"] {
            let m = fs::symlink_metadata(top.join(p)).unwrap();
            expected.bytes += m.blocks() * 512;
            expected.inodes += 1;
        }
        assert_eq!(usage, expected);
        assert!(usage.bytes >= 110_000, "{usage:?}");
        // A single file is its own usage.
        let file = disk_usage(&top.join("a/one"), &mut unbounded()).unwrap();
        assert_eq!(file.inodes, 1);
        let missing = disk_usage(&top.join("absent"), &mut unbounded()).unwrap_err();
        assert!(matches!(missing, DuError::Io { .. }), "{missing}");
    }

    #[test]
    fn a_walk_over_its_entry_budget_fails_instead_of_undercounting() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10 {
            fs::write(dir.path().join(i.to_string()), "x").unwrap();
        }
        let mut budget = Budget::new(5, 1.0);
        let err = disk_usage(dir.path(), &mut budget).unwrap_err();
        assert!(matches!(err, DuError::TooLarge { limit: 5, .. }), "{err}");
        let mut budget = Budget::new(11, 1.0);
        assert_eq!(disk_usage(dir.path(), &mut budget).unwrap().inodes, 11);
    }

    #[test]
    fn the_duty_cycle_paces_long_walks() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..(CHECK_EVERY * 2) {
            fs::write(dir.path().join(i.to_string()), "").unwrap();
        }
        let mut budget = Budget::new(u64::MAX, 0.5);
        let started = Instant::now();
        disk_usage(dir.path(), &mut budget).unwrap();
        // At 50 %, every stretch of work is followed by as long a pause.
        assert!(budget.paused > Duration::ZERO);
        assert!(started.elapsed() >= budget.paused);
    }
}
