//! Splitting a big Watch message into chunks under the message size limit.
//!
//! gRPC clients refuse messages above their decode limit (4 MiB by default in most
//! implementations), and a snapshot of thousands of cgroups can exceed it. The lists (`cgroups`,
//! `pods`) are spread over chunks that share the message's `sequence`; every chunk but the last
//! has `more = true`, and the other fields travel in the first chunk.

use prost::Message as _;

use crate::proto::WatchResponse;

/// Default size a chunk stays under.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Room for a chunk's own fields besides its list entries (tags, lengths, sequence, flags).
const CHUNK_OVERHEAD: usize = 64;

/// The chunks of `msg`, each encoding to at most `limit` bytes unless a single list entry alone
/// is bigger (it then travels alone: splitting an entry is not possible).
pub fn split(mut msg: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if msg.encoded_len() <= limit {
        return vec![msg];
    }
    let cgroups = std::mem::take(&mut msg.cgroups);
    let pods = std::mem::take(&mut msg.pods);
    let head = WatchResponse {
        sequence: msg.sequence,
        snapshot: msg.snapshot,
        timestamp_unix_nano: msg.timestamp_unix_nano,
        sent_unix_nano: msg.sent_unix_nano,
        ..Default::default()
    };
    let mut chunks = Vec::new();
    let mut current = msg;
    let mut size = current.encoded_len() + CHUNK_OVERHEAD;
    let mut start_next = |current: &mut WatchResponse, size: &mut usize| {
        let full = std::mem::replace(current, head.clone());
        chunks.push(full);
        *size = head.encoded_len() + CHUNK_OVERHEAD;
    };
    for c in cgroups {
        let len = entry_len(c.encoded_len());
        if size + len > limit && !current.cgroups.is_empty() {
            start_next(&mut current, &mut size);
        }
        size += len;
        current.cgroups.push(c);
    }
    for p in pods {
        let len = entry_len(p.encoded_len());
        if size + len > limit && !(current.cgroups.is_empty() && current.pods.is_empty()) {
            start_next(&mut current, &mut size);
        }
        size += len;
        current.pods.push(p);
    }
    chunks.push(current);
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.iter_mut().enumerate() {
        chunk.more = i < last;
    }
    chunks
}

/// The receiving side: whether `msg` starts a new snapshot (the client should drop what it
/// had), given whether the previous chunk left one open. Later chunks of the same snapshot add
/// to the first.
pub fn starts_snapshot(in_snapshot: &mut bool, msg: &WatchResponse) -> bool {
    let starts = msg.snapshot && !*in_snapshot;
    *in_snapshot = msg.snapshot && msg.more;
    starts
}

/// Bytes a repeated message entry of `len` bytes takes: one tag byte, the length varint, the body.
fn entry_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{CgroupStats, NodeInfo, PodStats};

    fn big_message(cgroups: usize, pods: usize) -> WatchResponse {
        WatchResponse {
            sequence: 7,
            snapshot: true,
            timestamp_unix_nano: 99,
            node: Some(NodeInfo {
                hostname: "n".into(),
                ..Default::default()
            }),
            cgroups: (0..cgroups)
                .map(|i| CgroupStats {
                    cgroup_id: i as u64,
                    path: format!("/kubepods/burstable/pod{i:040}"),
                    ..Default::default()
                })
                .collect(),
            pods: (0..pods)
                .map(|i| PodStats {
                    cgroup_path: format!("/kubepods/pod{i:060}"),
                    ..Default::default()
                })
                .collect(),
            removed_cgroup_ids: vec![1, 2, 3],
            ..Default::default()
        }
    }

    #[test]
    fn a_small_message_is_one_chunk_without_more() {
        let msg = big_message(3, 1);
        let chunks = split(msg.clone(), 1 << 20);
        assert_eq!(chunks, vec![msg]);
    }

    #[test]
    fn chunks_stay_under_the_limit_and_lose_nothing() {
        let msg = big_message(5_000, 300);
        let limit = 16 * 1024;
        let chunks = split(msg.clone(), limit);
        assert!(chunks.len() > 10, "{} chunks", chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            assert!(c.encoded_len() <= limit, "chunk {i}: {}", c.encoded_len());
            assert_eq!(
                (c.sequence, c.snapshot, c.timestamp_unix_nano),
                (7, true, 99)
            );
            assert_eq!(c.more, i + 1 < chunks.len());
        }
        assert!(chunks[0].node.is_some() && chunks[1].node.is_none());
        assert_eq!(chunks[0].removed_cgroup_ids, vec![1, 2, 3]);
        // Reassembled, the chunks are the original message.
        let mut joined = chunks[0].clone();
        for c in &chunks[1..] {
            joined.cgroups.extend(c.cgroups.iter().cloned());
            joined.pods.extend(c.pods.iter().cloned());
        }
        joined.more = false;
        assert_eq!(joined, msg);
    }
}
