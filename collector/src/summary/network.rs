//! Network blocks: one namespace's interfaces, eth0 named the default as kubelet names it.

use crate::{
    hostfs::net_dev::{DEFAULT_INTERFACE, Interface},
    proto,
    sampler::host::NetworkReading,
    unix_time::unix_nanos,
};

pub fn stats(n: &NetworkReading) -> proto::NetworkStats {
    let interfaces: Vec<proto::InterfaceStats> = n.interfaces.iter().map(interface).collect();
    proto::NetworkStats {
        time_unix_nano: unix_nanos(n.time),
        default_interface: interfaces
            .iter()
            .find(|i| i.name == DEFAULT_INTERFACE)
            .cloned(),
        interfaces,
    }
}

fn interface(i: &Interface) -> proto::InterfaceStats {
    proto::InterfaceStats {
        name: i.name.clone(),
        rx_bytes: Some(i.rx_bytes),
        rx_errors: Some(i.rx_errors),
        tx_bytes: Some(i.tx_bytes),
        tx_errors: Some(i.tx_errors),
        rx_packets: Some(i.rx_packets),
        rx_dropped: Some(i.rx_dropped),
        tx_packets: Some(i.tx_packets),
        tx_dropped: Some(i.tx_dropped),
    }
}
