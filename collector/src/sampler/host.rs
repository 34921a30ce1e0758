//! What a full pass reads besides cgroupfs: the node's task limits and kubelet-root filesystem,
//! the host's network namespace, and each pod's, through one of its processes.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use crate::{
    cri::NameTable,
    hostfs::{
        net_dev::{self, Interface, NetDevError},
        rlimit::{self, Rlimit},
        statfs::{self, FsCapacity},
    },
    k8s::identity::Identity,
};

/// One network namespace's interfaces (cAdvisor's filter applied) and when they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkReading {
    pub interfaces: Vec<Interface>,
    pub time: SystemTime,
}

/// The node-wide reads of a full pass; each `None` when it could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostReading {
    pub rlimit: Option<Rlimit>,
    /// statfs of the kubelet root dir's filesystem (kubelet's node fs).
    pub node_fs: Option<FsCapacity>,
}

/// Reads of the host outside cgroupfs; owns the buffer they share.
#[derive(Debug)]
pub struct HostReader {
    proc_root: PathBuf,
    kubelet_root: Option<PathBuf>,
    buf: Vec<u8>,
    /// Failed reads other than a vanished process (counted for /metrics).
    pub errors: u64,
}

impl HostReader {
    pub fn new(proc_root: PathBuf, kubelet_root: Option<PathBuf>) -> Self {
        Self {
            proc_root,
            kubelet_root,
            buf: Vec::new(),
            errors: 0,
        }
    }

    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    pub fn set_proc_root(&mut self, proc_root: PathBuf) {
        self.proc_root = proc_root;
    }

    pub fn set_kubelet_root(&mut self, kubelet_root: Option<PathBuf>) {
        self.kubelet_root = kubelet_root;
    }

    pub fn node(&mut self) -> HostReading {
        let node_fs = self.kubelet_root.as_deref().and_then(|root| {
            statfs::statfs(root)
                .inspect_err(|e| {
                    self.errors += 1;
                    tracing::debug!(path = %root.display(), error = %e, "kubelet root dir statfs");
                })
                .ok()
        });
        HostReading {
            rlimit: Some(rlimit::read(&self.proc_root, &mut self.buf)),
            node_fs,
        }
    }

    /// The network namespace of `pid` (pid 1: the host's). `None` when the process is gone or
    /// its file is unreadable (counted unless the process vanished).
    pub fn network(&mut self, pid: u32) -> Option<NetworkReading> {
        match net_dev::read(&self.proc_root, pid, &mut self.buf) {
            Ok(interfaces) => Some(NetworkReading {
                interfaces,
                time: SystemTime::now(),
            }),
            Err(NetDevError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                None
            }
            Err(e) => {
                self.errors += 1;
                tracing::debug!(pid, error = %e, "network namespace unreadable");
                None
            }
        }
    }
}

/// Which process to read each pod's network through: the sandbox's (kubelet reads the pause
/// container's), else the first container's that has one; all of a pod's containers share its
/// network namespace. Keyed by pod uid; the candidates in order of preference.
pub fn pod_pids<'a>(
    cgroups: impl Iterator<Item = (Option<&'a Identity>, Option<u32>)>,
    names: &NameTable,
) -> HashMap<&'a str, Vec<u32>> {
    let mut pids: HashMap<&str, Vec<u32>> = HashMap::new();
    for (identity, pid) in cgroups {
        let (Some(Identity::Container(pod, container)), Some(pid)) = (identity, pid) else {
            continue;
        };
        let list = pids.entry(pod.uid.as_str()).or_default();
        if names.is_sandbox(&container.id) {
            list.insert(0, pid);
        } else {
            list.push(pid);
        }
    }
    pids
}

/// Reads one network per pod, trying its candidates in order (a process may exit meanwhile).
pub fn pod_networks(
    reader: &mut HostReader,
    pids: HashMap<&str, Vec<u32>>,
) -> HashMap<String, Arc<NetworkReading>> {
    pids.into_iter()
        .filter_map(|(uid, candidates)| {
            let network = candidates.into_iter().find_map(|pid| reader.network(pid))?;
            Some((uid.to_owned(), Arc::new(network)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::identity::identify;

    #[test]
    fn the_sandbox_is_read_first() {
        let pod = "/kubepods/besteffort/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789";
        let app = identify(&format!("{pod}/{}", "a".repeat(64)));
        let sandbox = identify(&format!("{pod}/{}", "b".repeat(64)));
        let pod_itself = identify(pod);
        let cgroups = [
            (app.as_ref(), Some(20)),
            (sandbox.as_ref(), Some(10)),
            (pod_itself.as_ref(), None),
        ];
        let uid = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
        let no_names = pod_pids(cgroups.into_iter(), &NameTable::default());
        assert_eq!(
            no_names[uid],
            [20, 10],
            "without CRI: any process of the pod"
        );
        let names = NameTable::with_sandboxes([&"b".repeat(64)]);
        let named = pod_pids(cgroups.into_iter(), &names);
        assert_eq!(named[uid], [10, 20], "the sandbox's first");
    }

    #[test]
    fn a_vanished_process_falls_through_to_the_next() {
        let mut reader = HostReader::new("/proc".into(), None);
        let me = std::process::id();
        let pids = HashMap::from([("uid", vec![u32::MAX, me])]);
        let networks = pod_networks(&mut reader, pids);
        let own = net_dev::read(Path::new("/proc"), me, &mut Vec::new()).unwrap();
        assert_eq!(networks["uid"].interfaces.len(), own.len());
        assert_eq!(reader.errors, 0, "a missing process is not an error");
    }
}
