//! Network plumbing shared by the collector's servers, its clients (`collector top`) and the
//! aggregator and the exporters: accepting connections (caps, backoff, idle timeout), server TLS
//! with certificate reloading, the listen policy, client connections, retry backoff.

pub mod accept;
pub mod auth;
pub mod backoff;
pub mod client;
pub mod kube;
pub mod listen;
pub mod tls;
