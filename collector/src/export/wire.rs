//! Generated wire types of the two push protocols, from the vendored protos under `proto/`:
//! Prometheus remote-write 1.0 (`proto/prompb`) and the OTLP metrics service (`proto/otlp`).

/// `prometheus.WriteRequest` and its parts (remote-write 1.0).
pub mod prompb {
    #![allow(clippy::all)]
    tonic::include_proto!("prometheus");
}

/// The OTLP packages, nested as their names are, so the generated cross-references resolve.
pub mod opentelemetry {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                #![allow(clippy::all)]
                tonic::include_proto!("opentelemetry.proto.common.v1");
            }
        }
        pub mod resource {
            pub mod v1 {
                #![allow(clippy::all)]
                tonic::include_proto!("opentelemetry.proto.resource.v1");
            }
        }
        pub mod metrics {
            pub mod v1 {
                #![allow(clippy::all)]
                tonic::include_proto!("opentelemetry.proto.metrics.v1");
            }
        }
        pub mod collector {
            pub mod metrics {
                pub mod v1 {
                    #![allow(clippy::all)]
                    tonic::include_proto!("opentelemetry.proto.collector.metrics.v1");
                }
            }
        }
    }
}

pub use opentelemetry::proto::{
    collector::metrics::v1 as otlp_service, common::v1 as otlp_common, metrics::v1 as otlp,
    resource::v1 as otlp_resource,
};
