//! The events ring buffer: OOM kills and cgroup creation/removal, drained once per pass.

use aya::maps::{MapData, RingBuf};
use collector_common::{Event, event};

/// One event, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    OomKill {
        /// CLOCK_MONOTONIC ns.
        time_ns: u64,
        pid: u32,
        comm: String,
        cgroup_id: u64,
    },
    CgroupCreated {
        cgroup_id: u64,
        /// Relative to the cgroup2 root, with a leading `/`.
        path: String,
    },
    CgroupRemoved {
        cgroup_id: u64,
        path: String,
    },
}

pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring }
    }

    /// Everything queued since the last drain, oldest first. Malformed records are skipped.
    pub fn drain(&mut self) -> Vec<ProbeEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(e) = decode(&item) {
                out.push(e);
            }
        }
        out
    }
}

fn decode(bytes: &[u8]) -> Option<ProbeEvent> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: the kernel side wrote an `Event` (repr(C), every bit pattern valid); the length
    // was checked and read_unaligned copes with any alignment.
    let e: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    Some(match e.kind {
        event::OOM_KILL => ProbeEvent::OomKill {
            time_ns: e.time_ns,
            pid: e.pid_or_level,
            comm: text(&e.comm),
            cgroup_id: e.cgroup_id,
        },
        event::CGROUP_MKDIR => ProbeEvent::CgroupCreated {
            cgroup_id: e.cgroup_id,
            path: text(&e.path),
        },
        event::CGROUP_RMDIR => ProbeEvent::CgroupRemoved {
            cgroup_id: e.cgroup_id,
            path: text(&e.path),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: u32, id: u64, comm: &[u8], path: &[u8]) -> Vec<u8> {
        let mut e = Event {
            kind,
            pid_or_level: 42,
            cgroup_id: id,
            time_ns: 7,
            comm: [0; 16],
            path: [0; collector_common::EVENT_PATH_LEN],
        };
        e.comm[..comm.len()].copy_from_slice(comm);
        e.path[..path.len()].copy_from_slice(path);
        // SAFETY: plain repr(C) integers and byte arrays.
        unsafe { std::slice::from_raw_parts((&e as *const Event).cast::<u8>(), size_of::<Event>()) }
            .to_vec()
    }

    #[test]
    fn decodes_each_kind_and_rejects_garbage() {
        assert_eq!(
            decode(&raw(event::OOM_KILL, 9, b"hog", b"")),
            Some(ProbeEvent::OomKill {
                time_ns: 7,
                pid: 42,
                comm: "hog".into(),
                cgroup_id: 9
            })
        );
        assert_eq!(
            decode(&raw(event::CGROUP_MKDIR, 5, b"", b"/a/b")),
            Some(ProbeEvent::CgroupCreated {
                cgroup_id: 5,
                path: "/a/b".into()
            })
        );
        // A path that fills the buffer with no NUL is taken whole, not overrun.
        let long = [b'x'; collector_common::EVENT_PATH_LEN];
        let Some(ProbeEvent::CgroupRemoved { path, .. }) =
            decode(&raw(event::CGROUP_RMDIR, 5, b"", &long))
        else {
            panic!()
        };
        assert_eq!(path.len(), collector_common::EVENT_PATH_LEN);
        assert_eq!(decode(&raw(99, 1, b"", b"")), None);
        assert_eq!(decode(&[0u8; 8]), None);
    }
}
