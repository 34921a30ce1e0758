//! The two event rings: OOM kills and cgroup creations/removals, each drained once per pass.

use aya::maps::{MapData, RingBuf};
use collector_common::{EVENT_PATH_LEN, LifecycleEvent, OomEvent, lifecycle};

/// One OOM kill, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomKillEvent {
    /// CLOCK_MONOTONIC ns.
    pub time_ns: u64,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

/// One cgroup creation or removal, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupEvent {
    pub created: bool,
    pub cgroup_id: u64,
    /// Relative to the cgroup2 root, with a leading `/`; `None` when the kernel's path did not
    /// fit in the event or is not UTF-8 (the caller then walks the tree to learn it).
    pub path: Option<String>,
}

/// A ring buffer of `T` records.
pub struct EventRing<T> {
    ring: RingBuf<MapData>,
    decode: fn(&[u8]) -> Option<T>,
}

impl<T> EventRing<T> {
    /// Everything queued since the last drain, oldest first. Malformed records are skipped.
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(e) = (self.decode)(&item) {
                out.push(e);
            }
        }
        out
    }
}

pub fn oom_ring(ring: RingBuf<MapData>) -> EventRing<OomKillEvent> {
    EventRing {
        ring,
        decode: decode_oom,
    }
}

pub fn lifecycle_ring(ring: RingBuf<MapData>) -> EventRing<CgroupEvent> {
    EventRing {
        ring,
        decode: decode_lifecycle,
    }
}

/// A `T` from the start of `bytes`, when there are enough of them.
fn record<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `T` is Pod (every bit pattern valid); the length was checked and read_unaligned
    // copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn decode_oom(bytes: &[u8]) -> Option<OomKillEvent> {
    let e: OomEvent = record(bytes)?;
    Some(OomKillEvent {
        time_ns: e.time_ns,
        pid: e.pid,
        comm: text(&e.comm),
        cgroup_id: e.cgroup_id,
    })
}

fn decode_lifecycle(bytes: &[u8]) -> Option<CgroupEvent> {
    let e: LifecycleEvent = record(bytes)?;
    let created = match e.kind {
        lifecycle::CGROUP_MKDIR => true,
        lifecycle::CGROUP_RMDIR => false,
        _ => return None,
    };
    let len = e.path_len as usize;
    let path = (len < EVENT_PATH_LEN)
        .then(|| std::str::from_utf8(&e.path[..len]).ok())
        .flatten()
        .map(str::to_owned);
    Some(CgroupEvent {
        created,
        cgroup_id: e.cgroup_id,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: plain repr(C) integers and byte arrays.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn lifecycle_event(kind: u32, path: &[u8], path_len: u32) -> Vec<u8> {
        let mut e = LifecycleEvent {
            kind,
            path_len,
            cgroup_id: 5,
            time_ns: 7,
            path: [0; EVENT_PATH_LEN],
        };
        e.path[..path.len()].copy_from_slice(path);
        bytes_of(&e)
    }

    #[test]
    fn decodes_each_kind_and_rejects_garbage() {
        let oom = OomEvent {
            pid: 42,
            _pad: 0,
            cgroup_id: 9,
            time_ns: 7,
            comm: *b"hog\0\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        assert_eq!(
            decode_oom(&bytes_of(&oom)),
            Some(OomKillEvent {
                time_ns: 7,
                pid: 42,
                comm: "hog".into(),
                cgroup_id: 9
            })
        );
        assert_eq!(
            decode_lifecycle(&lifecycle_event(lifecycle::CGROUP_MKDIR, b"/a/b", 4)),
            Some(CgroupEvent {
                created: true,
                cgroup_id: 5,
                path: Some("/a/b".into())
            })
        );
        assert_eq!(decode_lifecycle(&lifecycle_event(99, b"", 0)), None);
        assert_eq!(decode_oom(&[0u8; 8]), None);
        assert_eq!(decode_lifecycle(&[0u8; 8]), None);
    }

    #[test]
    fn a_cut_or_foreign_path_is_unknown_not_wrong() {
        let long = [b'x'; EVENT_PATH_LEN];
        let cut = decode_lifecycle(&lifecycle_event(
            lifecycle::CGROUP_RMDIR,
            &long,
            EVENT_PATH_LEN as u32,
        ))
        .unwrap();
        assert_eq!((cut.created, cut.path), (false, None));
        let latin1 = decode_lifecycle(&lifecycle_event(lifecycle::CGROUP_MKDIR, b"/caf\xe9", 5));
        assert_eq!(latin1.unwrap().path, None);
    }
}
