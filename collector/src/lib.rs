//! eBPF-augmented container resource collector.
//!
//! ## Layers
//!
//! Data flows one way: the kernel's counters are read by the [`probes`] and [`cgroupfs`], merged
//! per cgroup by the [`sampler`], turned into rates and the kubelet Summary model, published by
//! the [`store`] task, served by the [`server`] (gRPC) and [`http`] endpoints to the
//! [`aggregate`]or and [`top`], and pushed by the [`export`]ers into Prometheus-compatible and
//! OpenTelemetry receivers. Imports follow the same direction: each module may use only the
//! modules listed above it in this table. `cargo xtask test` checks every `use` and every
//! `crate::` path against it (`xtask/src/layers.rs`), and a new module must be given a row.
//!
//! | order | module | holds |
//! |---|---|---|
//! | 1 | [`proto`] | the generated `collector.v1` wire types |
//! | 2 | [`unix_time`] | wall-clock times as the wire formats carry them |
//! | 3 | [`net`] | accepting connections, server TLS, authentication, the listen policy, clients |
//! | 4 | [`cgroupfs`] | reading and parsing the kernel's cgroup files, v1 and v2 |
//! | 5 | [`k8s`] | Kubernetes identities from cgroup paths |
//! | 6 | [`node`] | facts about this node (name, kernel, mounts, CPUs) |
//! | 7 | [`hostfs`] | procfs and filesystem reads: net/dev, statfs, du walks, rlimit |
//! | 8 | [`probes`] | loading the eBPF programs and reading their maps |
//! | 9 | [`cri`] | pod and container names, and filesystem usage, from the container runtime |
//! | 10 | [`host_scan`] | the slow du walks (volumes, logs, etc-hosts) and kubelet's cgroup |
//! | 11 | [`sampler`] | one pass: cgroupfs and probes merged per cgroup |
//! | 12 | [`rate`] | counter rates and run-queue windows with kubelet's rules |
//! | 13 | [`summary`] | the kubelet Summary model and its formulas |
//! | 14 | [`percentiles`] | sliding-window usage percentiles of pods and containers |
//! | 15 | [`convert`] | samples -> protobuf records (statuses, stats, events) |
//! | 16 | [`store`] | the task that owns the samples and publishes snapshots |
//! | 17 | [`server`] | the gRPC API: Collector, Watch fan-out, health, reflection |
//! | 18 | [`http`] | kubelet's HTTP endpoints and Prometheus metrics |
//! | 19 | [`export`] | pushing snapshots to Prometheus remote-write and OTLP receivers |
//! | 20 | [`aggregate`] | the cluster aggregator fed by many collectors |
//! | 21 | [`top`] | `collector top`, a client of either |
//! | 22 | [`app`] | assembling a running collector from its configuration |

pub mod aggregate;
pub mod app;
pub mod cgroupfs;
pub mod convert;
pub mod cri;
pub mod export;
pub mod host_scan;
pub mod hostfs;
pub mod http;
pub mod k8s;
pub mod net;
pub mod node;
pub mod percentiles;
pub mod probes;
pub mod rate;
pub mod sampler;
pub mod server;
pub mod store;
pub mod summary;
pub mod top;
pub mod unix_time;

/// Generated from proto/collector/v1/collector.proto.
pub mod proto {
    tonic::include_proto!("collector.v1");

    /// Encoded descriptors of the API, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/collector_v1_descriptor.bin"));
}
