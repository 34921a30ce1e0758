//! eBPF-augmented container resource collector.
//!
//! Data flows one way: [`cgroupfs`] and [`probes`] are read by the [`sampler`], whose passes the
//! [`store`] task owns and publishes as snapshots, which the [`server`] streams to subscribers
//! such as [`top`].

pub mod aggregate;
pub mod app;
pub mod cgroupfs;
pub mod client;
pub mod cri;
pub mod http;
pub mod k8s;
pub mod node;
pub mod percentiles;
pub mod probes;
pub mod rate;
pub mod runq;
pub mod sampler;
pub mod server;
pub mod store;
pub mod summary;
pub mod top;

/// Generated from proto/collector/v1/collector.proto.
pub mod proto {
    tonic::include_proto!("collector.v1");

    /// Encoded descriptors of the API, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/collector_v1_descriptor.bin"));
}
