//! Kubernetes identity of cgroups.

pub mod identity;

pub use identity::{ContainerRef, PodRef, QosClass, Runtime, identify};
