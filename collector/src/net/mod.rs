//! Network plumbing shared by the collector's servers, its clients (`collector top`) and the
//! aggregator and the exporters: server TLS with certificate reloading, the listen policy,
//! client connections, retry backoff.

pub mod backoff;
pub mod client;
pub mod listen;
pub mod tls;
