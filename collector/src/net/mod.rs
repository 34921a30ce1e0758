//! Network plumbing shared by the collector's servers, its clients (`collector top`) and the
//! aggregator: server TLS with certificate reloading, the listen policy, client connections.

pub mod client;
pub mod listen;
pub mod tls;
