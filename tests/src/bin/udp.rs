//! Test workload: UDP datagrams over loopback, for the network probe, one in flight at a time
//! (each answered with one byte before the next is sent), so none is dropped by a full receive
//! queue and every datagram sent is a datagram received.
//!
//! Usage: `udp recv N` binds 127.0.0.1:0, prints its port, answers N datagrams, then prints the
//! payload bytes it received; `udp send PORT N SIZE` sends N datagrams of SIZE bytes to
//! 127.0.0.1:PORT and prints `sent`.

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::Duration,
};

/// Longest wait for an answer (loopback answers in microseconds; this is a loaded machine's).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> usize {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("usage: udp recv N | udp send PORT N SIZE"))
    };
    match args.first().map(String::as_str) {
        Some("recv") => receive(number(1)),
        Some("send") => send(number(1) as u16, number(2), number(3)),
        _ => panic!("usage: udp recv N | udp send PORT N SIZE"),
    }
}

fn receive(count: usize) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    println!("{}", socket.local_addr().expect("local address").port());
    let mut buf = vec![0u8; 65_536];
    let mut bytes = 0;
    for _ in 0..count {
        let (n, from) = socket.recv_from(&mut buf).expect("recv");
        bytes += n;
        socket.send_to(&[1], from).expect("answer");
    }
    println!("{bytes}");
}

fn send(port: u16, count: usize, size: usize) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    socket
        .connect((Ipv4Addr::LOCALHOST, port))
        .expect("connect");
    socket
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("timeout");
    let payload = vec![7u8; size];
    let mut answer = [0u8; 1];
    for i in 0..count {
        assert_eq!(socket.send(&payload).expect("send"), size);
        socket
            .recv(&mut answer)
            .unwrap_or_else(|e| panic!("no answer to datagram {i}: {e}"));
    }
    println!("sent");
}
