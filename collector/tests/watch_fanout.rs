//! Watch fan-out over a real loopback connection, without root: subscribers of the same shape
//! receive the same messages (only their own `sequence` differs), one that joins late starts
//! with its own snapshot, another shape gets its own messages, and every message says when it
//! was queued.

mod common;

use std::{collections::HashMap, fs, path::Path, time::Duration};

use collector::{
    app,
    proto::{WatchRequest, WatchResponse, collector_client::CollectorClient},
};
use tonic::{Streaming, transport::Channel};

const INTERVAL_MS: u32 = 100;

fn write_cpu(root: &Path, name: &str, usec: u64) {
    fs::write(
        root.join(name).join("cpu.stat"),
        format!("usage_usec {usec}\n"),
    )
    .unwrap();
}

async fn watch(client: &mut CollectorClient<Channel>, prefix: &str) -> Streaming<WatchResponse> {
    client
        .watch(WatchRequest {
            interval_ms: Some(INTERVAL_MS),
            cgroup_path_prefix: prefix.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn next(stream: &mut Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("no message within 10 s")
        .unwrap()
        .expect("stream ended")
}

/// A message as its subscriber saw it, without its own sequence.
fn shared_part(msg: &WatchResponse) -> WatchResponse {
    WatchResponse {
        sequence: 0,
        ..msg.clone()
    }
}

#[tokio::test]
async fn subscribers_of_one_shape_share_messages_and_a_late_one_starts_with_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("cpu.stat"), "usage_usec 1\n").unwrap();
    for name in ["a", "b"] {
        fs::create_dir(root.join(name)).unwrap();
        write_cpu(root, name, 1);
    }
    let running = app::start(common::cgroupfs_only(root)).await.unwrap();
    let mut client = CollectorClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap();

    let mut first = watch(&mut client, "").await;
    let snapshot = next(&mut first).await;
    assert!(snapshot.snapshot && snapshot.sequence == 0);
    let mut usec = 1;
    // Let the first subscriber's feed run a few updates, then a second joins the same shape
    // and a third asks for one subtree.
    let mut from_first = Vec::new();
    for _ in 0..3 {
        usec += 1000;
        write_cpu(root, "a", usec);
        from_first.push(next(&mut first).await);
    }
    let mut second = watch(&mut client, "").await;
    let mut only_b = watch(&mut client, "/b").await;
    let late = next(&mut second).await;
    assert!(late.snapshot, "a late subscriber starts with a snapshot");
    assert_eq!(late.sequence, 0);
    assert_eq!(late.cgroups.len(), 3, "{late:?}");
    let b_snapshot = next(&mut only_b).await;
    assert!(b_snapshot.snapshot);
    assert_eq!(b_snapshot.cgroups.len(), 1);

    // Both cgroups move each round; collect a few updates from each subscriber.
    let mut from_second = Vec::new();
    let mut from_b = Vec::new();
    for _ in 0..4 {
        usec += 1000;
        write_cpu(root, "a", usec);
        write_cpu(root, "b", usec);
        from_first.push(next(&mut first).await);
        from_second.push(next(&mut second).await);
        from_b.push(next(&mut only_b).await);
    }
    // The first may be behind the second (it had messages queued when the second joined):
    // let it catch up with the second's last sample.
    let last_of_second = from_second.last().unwrap().timestamp_unix_nano;
    while from_first.last().unwrap().timestamp_unix_nano < last_of_second {
        from_first.push(next(&mut first).await);
    }
    // Each stream numbers its own messages from 0.
    for (stream, expected_first) in [(&from_first, 1), (&from_second, 1), (&from_b, 1)] {
        let sequences: Vec<u64> = stream.iter().map(|m| m.sequence).collect();
        let expected: Vec<u64> = (expected_first..).take(stream.len()).collect();
        assert_eq!(sequences, expected);
    }
    // Every update the late subscriber got is, but for its sequence, one the first got: the
    // same bytes, encoded once.
    let by_sample: HashMap<u64, WatchResponse> = from_first
        .iter()
        .map(|m| (m.timestamp_unix_nano, shared_part(m)))
        .collect();
    let mut matched = 0;
    for msg in &from_second {
        assert!(!msg.snapshot);
        if let Some(same) = by_sample.get(&msg.timestamp_unix_nano) {
            assert_eq!(&shared_part(msg), same);
            matched += 1;
        }
    }
    // The same feed sends every update to both.
    assert_eq!(matched, from_second.len(), "{by_sample:?}");
    // The other shape: only its subtree, in messages of its own.
    for msg in &from_b {
        assert!(msg.cgroups.iter().all(|c| c.path == "/b"), "{msg:?}");
    }
    assert!(from_b.iter().any(|m| !m.cgroups.is_empty()));
    // Every message says when it was queued: after its sample, before it arrived.
    for msg in from_first.iter().chain(&from_second).chain(&from_b) {
        assert!(
            msg.sent_unix_nano >= msg.timestamp_unix_nano && msg.timestamp_unix_nano > 0,
            "sent {} for a sample at {}",
            msg.sent_unix_nano,
            msg.timestamp_unix_nano
        );
    }
    assert!(late.sent_unix_nano >= late.timestamp_unix_nano);
    running.stop().await.unwrap();
}
