//! A newc ("070701") cpio archive, the format the kernel unpacks as its initramfs. Written here
//! rather than by cpio(1) so that paths inside the archive need not exist on the host.

use std::{
    collections::BTreeSet,
    fs,
    io::{self, Write},
    path::Path,
};

const FILE: u32 = 0o100_000;
const DIR: u32 = 0o040_000;
const SYMLINK: u32 = 0o120_000;

pub struct Archive<W: Write> {
    out: W,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> Archive<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// Adds `path` (absolute in the guest) with `data`; parent directories are added as needed.
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> io::Result<()> {
        self.parents(path)?;
        self.entry(path, FILE | mode, data)
    }

    /// Adds a host file at `guest_path`, keeping its executable bit.
    pub fn host_file(&mut self, guest_path: &str, host: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let data = fs::read(host)?;
        let mode = fs::metadata(host)?.permissions().mode() & 0o777;
        self.file(guest_path, &data, mode)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.parents(path)?;
        self.entry(path, SYMLINK | 0o777, target.as_bytes())
    }

    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        self.parents(path)?;
        let path = path.trim_end_matches('/');
        if self.dirs.insert(path.to_owned()) {
            self.entry(path, DIR | 0o755, &[])?;
        }
        Ok(())
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, &[])?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut prefix = String::new();
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for c in &components[..components.len().saturating_sub(1)] {
            prefix.push('/');
            prefix.push_str(c);
            if self.dirs.insert(prefix.clone()) {
                self.entry(&prefix, DIR | 0o755, &[])?;
            }
        }
        Ok(())
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        // Names are relative in the archive ("bin/sh"), except the trailer.
        let name = path.trim_start_matches('/');
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & DIR == DIR { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).map_err(|_| io::Error::other("file over 4 GiB"))?,
            0,
            0,
            0,
            0,
            (name.len() + 1) as u32,
            0, // check
        ];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, written: usize) -> io::Result<()> {
        let pad = (4 - written % 4) % 4;
        self.out.write_all(&[0; 3][..pad])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_round_trips_through_cpio() {
        let mut a = Archive::new(Vec::new());
        a.file("/bin/hello", b"hi\n", 0o755).unwrap();
        a.symlink("/bin/sh", "busybox").unwrap();
        let bytes = a.finish().unwrap();
        assert!(bytes.starts_with(b"070701"));
        // Every entry starts on a 4-byte boundary: the second header is at an aligned offset.
        let second = bytes
            .windows(6)
            .skip(1)
            .position(|w| w == b"070701")
            .unwrap()
            + 1;
        assert_eq!(second % 4, 0);
        // cpio(1), when present, lists what we wrote.
        if let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            child.stdin.take().unwrap().write_all(&bytes).unwrap();
            let out = child.wait_with_output().unwrap();
            let listed = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                listed.lines().collect::<Vec<_>>(),
                ["bin", "bin/hello", "bin/sh"]
            );
        }
    }
}
