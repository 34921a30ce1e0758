//! Root + BPF: the `cgroup_skb` network probe, read through the Watch API. Two cgroups under a
//! common parent; a process born in one sends N UDP datagrams of S bytes over loopback to a
//! socket of a process born in the other, which answers each with one byte before the next is
//! sent (so no datagram can be dropped by a full receive queue). At L3 a datagram is S + 28 bytes
//! (20 of IPv4 header, 8 of UDP header) and an answer 1 + 28: each cgroup must show exactly
//! those bytes and packets in each direction, and the parent their sum.

use std::time::Duration;

use collector::proto::EbpfNetwork;
use collector_integration_tests::{
    TestCgroup, Workload,
    watch::{catch_up, start_watching_with},
};

const DATAGRAMS: u64 = 200;
const PAYLOAD: u64 = 1000;
const ANSWER: u64 = 1;
/// IPv4 header without options, and the UDP header.
const IPV4_UDP_HEADERS: u64 = 20 + 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_over_loopback_is_charged_to_each_sockets_cgroup_exactly() {
    let test = "udp_over_loopback_is_charged_to_each_sockets_cgroup_exactly";
    let Some((running, mut stream, mut view)) =
        start_watching_with(test, 200, Duration::ZERO, &["net_ingress", "net_egress"]).await
    else {
        return;
    };
    let parent = TestCgroup::create("net").unwrap();
    let sender = parent.child("tx").unwrap();
    let receiver = parent.child("rx").unwrap();
    let udp = |args: &[&str]| Workload::new(env!("CARGO_BIN_EXE_udp")).args(args).piped();

    let mut rx = receiver
        .start(&udp(&["recv", &DATAGRAMS.to_string()]))
        .unwrap();
    let port = rx.read_line().unwrap();
    let mut tx = sender
        .start(&udp(&[
            "send",
            &port,
            &DATAGRAMS.to_string(),
            &PAYLOAD.to_string(),
        ]))
        .unwrap();
    assert_eq!(tx.read_line().unwrap(), "sent");
    assert_eq!(
        rx.read_line().unwrap(),
        (DATAGRAMS * PAYLOAD).to_string(),
        "payload bytes received"
    );
    assert!(tx.wait().unwrap().success() && rx.wait().unwrap().success());

    catch_up(&mut stream, &mut view, Duration::from_millis(100)).await;
    let network = |c: &TestCgroup| -> EbpfNetwork {
        let record = view
            .cgroups
            .get(&c.id())
            .unwrap_or_else(|| panic!("{} not in the stream", c.relative));
        record
            .ebpf_network
            .unwrap_or_else(|| panic!("{} has no ebpf_network", c.relative))
    };
    let datagram = PAYLOAD + IPV4_UDP_HEADERS;
    let answer = ANSWER + IPV4_UDP_HEADERS;
    let sent = network(&sender);
    let received = network(&receiver);
    let both = network(&parent);
    eprintln!("sender {sent:?}\nreceiver {received:?}\nparent {both:?}");
    let counts = |n: &EbpfNetwork| (n.tx_bytes, n.tx_packets, n.rx_bytes, n.rx_packets);
    assert_eq!(
        counts(&sent),
        (
            DATAGRAMS * datagram,
            DATAGRAMS,
            DATAGRAMS * answer,
            DATAGRAMS
        ),
        "sender: (tx bytes, tx packets, rx bytes, rx packets)"
    );
    assert_eq!(
        counts(&received),
        (
            DATAGRAMS * answer,
            DATAGRAMS,
            DATAGRAMS * datagram,
            DATAGRAMS
        ),
        "receiver: (tx bytes, tx packets, rx bytes, rx packets)"
    );
    let total = DATAGRAMS * (datagram + answer);
    assert_eq!(
        counts(&both),
        (total, 2 * DATAGRAMS, total, 2 * DATAGRAMS),
        "parent: both children, nothing of its own"
    );
    running.stop().await.unwrap();
}
