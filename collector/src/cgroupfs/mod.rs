//! The kernel's own accounting, read from cgroupfs.

pub mod costs;
pub mod cpu_stat;
pub mod files;
pub mod memory_stat;
pub mod mountinfo;
pub mod name;
pub mod parse;
pub mod reader;
pub mod reading;
pub mod tree;

use std::{
    fs::File,
    io::{self, Read},
    path::Path,
};

pub use cpu_stat::CpuStat;
pub use mountinfo::CgroupMounts;
pub use tree::{CgroupNode, walk};

/// Reads one cgroup file into `buf` (cleared first), so a pass reuses one buffer for every file.
pub fn read_into(path: &Path, buf: &mut String) -> io::Result<()> {
    buf.clear();
    File::open(path)?.read_to_string(buf)?;
    Ok(())
}
