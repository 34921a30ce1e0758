//! Pod and container names from the node's container runtime, over the Kubernetes CRI.
//!
//! The cgroup path only carries the pod uid and the container id. kubelet names both from the
//! `io.kubernetes.*` labels it puts on every sandbox and container it asks the runtime to run,
//! so we read those back with `ListPodSandbox` / `ListContainers`: the same source kubelet's
//! own Summary uses. When no runtime answers, pods stay named by uid and containers by id, and
//! the `cri` entry of the probe statuses says why. The same runtime reports filesystem usage
//! (image filesystem, each container's writable layer): the `cri_stats` entry.

pub mod endpoint;
pub mod names;
pub mod resolver;
pub mod stats;

pub use endpoint::CriSetting;
pub use names::NameTable;
pub use resolver::CriNames;

/// The vendored `runtime.v1` API (proto/cri), client side only. Its comments are upstream's,
/// written for Go, not rustdoc.
#[allow(
    clippy::doc_lazy_continuation,
    clippy::doc_overindented_list_items,
    rustdoc::all
)]
pub mod proto {
    tonic::include_proto!("runtime.v1");
}
