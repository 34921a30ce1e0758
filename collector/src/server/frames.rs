//! Watch messages encoded once and shared: every subscriber of one shape (see
//! [`super::fanout`]) is sent the same bytes, with only its own `sequence` in front.
//!
//! `sequence` is field 1 of `WatchResponse`, so prost writes it first: a message encoded with
//! `sequence = 0` (which proto3 leaves out) and prefixed with that field is byte for byte what
//! prost would have written for the subscriber's own sequence. tonic's streaming codec takes
//! the bytes through [`FrameCodec`] on the one route that serves Watch ([`CollectorRoutes`]);
//! every other call goes to the generated server as before.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use prost::Message as _;
use tonic::{
    Status,
    body::Body,
    codec::{Codec, EncodeBuf, Encoder},
    codegen::{Body as HttpBody, BoxFuture, StdError},
    server::NamedService,
};
use tonic_prost::ProstDecoder;

use super::{CollectorService, chunk, outbox::QueueItem};
use crate::proto::{self, collector_server::CollectorServer};

/// One Watch message as it goes on the wire: its chunks (each under the message limit),
/// encoded without a sequence, shared by every subscriber it is sent to.
#[derive(Debug, Clone)]
pub struct Encoded {
    chunks: Arc<[Bytes]>,
    bytes: usize,
}

impl Encoded {
    /// Splits `msg` under `limit` bytes and encodes each chunk; `msg.sequence` is ignored
    /// (each subscriber's own goes in front when sending).
    pub fn new(mut msg: proto::WatchResponse, limit: usize) -> Self {
        msg.sequence = 0;
        let chunks: Arc<[Bytes]> = chunk::split(msg, limit)
            .into_iter()
            .map(|c| Bytes::from(c.encode_to_vec()))
            .collect();
        let bytes = chunks.iter().map(Bytes::len).sum();
        Self { chunks, bytes }
    }

    /// The frames of this message for a subscriber at `sequence` (all its chunks share it).
    pub fn frames(&self, sequence: u64) -> impl Iterator<Item = Frame> + use<> {
        let chunks = self.chunks.clone();
        (0..chunks.len()).map(move |i| Frame {
            sequence,
            body: chunks[i].clone(),
        })
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }
}

impl QueueItem for Encoded {
    fn queued_bytes(&self) -> usize {
        self.bytes
    }
}

/// One gRPC message of a Watch stream: a shared encoded chunk and the subscriber's sequence.
#[derive(Debug, Clone)]
pub struct Frame {
    sequence: u64,
    body: Bytes,
}

impl Frame {
    /// Writes the message: `sequence` (field 1, varint) when non-zero, then the shared body.
    pub fn write(&self, out: &mut impl bytes::BufMut) {
        if self.sequence != 0 {
            prost::encoding::encode_key(1, prost::encoding::WireType::Varint, out);
            prost::encoding::encode_varint(self.sequence, out);
        }
        out.put_slice(&self.body);
    }

    /// The message as a subscriber decodes it (tests, and the generated trait's path).
    pub fn decode(&self) -> Result<proto::WatchResponse, prost::DecodeError> {
        let mut buf = Vec::with_capacity(self.body.len() + 11);
        self.write(&mut buf);
        proto::WatchResponse::decode(buf.as_slice())
    }
}

/// The Watch route's codec: frames out as they are, requests in through prost.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

#[derive(Debug, Default, Clone, Copy)]
pub struct FrameEncoder;

impl Encoder for FrameEncoder {
    type Item = Frame;
    type Error = Status;

    fn encode(&mut self, item: Frame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.body.len() + 11);
        item.write(dst);
        Ok(())
    }
}

impl Codec for FrameCodec {
    type Encode = Frame;
    type Decode = proto::WatchRequest;
    type Encoder = FrameEncoder;
    type Decoder = ProstDecoder<proto::WatchRequest>;

    fn encoder(&mut self) -> FrameEncoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// The gRPC path of Watch.
pub const WATCH_PATH: &str = "/collector.v1.Collector/Watch";

/// `collector.v1.Collector`: Watch through [`FrameCodec`], every other method through the
/// generated server.
#[derive(Clone)]
pub struct CollectorRoutes {
    service: Arc<CollectorService>,
    generated: CollectorServer<CollectorService>,
}

impl CollectorRoutes {
    pub fn new(service: CollectorService) -> Self {
        let service = Arc::new(service);
        Self {
            generated: CollectorServer::from_arc(service.clone()),
            service,
        }
    }
}

impl NamedService for CollectorRoutes {
    const NAME: &'static str = <CollectorServer<CollectorService> as NamedService>::NAME;
}

/// Watch as tonic's streaming server calls it.
struct WatchCall(Arc<CollectorService>);

impl tonic::server::ServerStreamingService<proto::WatchRequest> for WatchCall {
    type Response = Frame;
    type ResponseStream = super::outbox::SubscriberStream<Frame>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<proto::WatchRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.watch_frames(request) })
    }
}

impl<B> tower::Service<http::Request<B>> for CollectorRoutes
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != WATCH_PATH {
            return self.generated.call(req);
        }
        let call = WatchCall(self.service.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(FrameCodec);
            Ok(grpc.server_streaming(call, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_what_prost_writes_for_the_subscribers_sequence() {
        let msg = proto::WatchResponse {
            sequence: 99,
            timestamp_unix_nano: 7,
            cgroups: vec![proto::CgroupStats {
                cgroup_id: 3,
                path: "/a".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let encoded = Encoded::new(msg.clone(), 1 << 20);
        for sequence in [0, 1, 300, u64::MAX] {
            let frames: Vec<Frame> = encoded.frames(sequence).collect();
            assert_eq!(frames.len(), 1);
            let mut wire = Vec::new();
            frames[0].write(&mut wire);
            let expected = proto::WatchResponse {
                sequence,
                ..msg.clone()
            };
            assert_eq!(wire, expected.encode_to_vec(), "sequence {sequence}");
            assert_eq!(frames[0].decode().unwrap(), expected);
        }
    }

    #[test]
    fn a_big_message_is_chunks_sharing_one_sequence() {
        let msg = proto::WatchResponse {
            cgroups: (0..2_000)
                .map(|i| proto::CgroupStats {
                    cgroup_id: i,
                    path: format!("/kubepods/pod{i:040}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let encoded = Encoded::new(msg, 16 * 1024);
        assert!(encoded.chunk_count() > 3);
        let frames: Vec<Frame> = encoded.frames(5).collect();
        let decoded: Vec<_> = frames.iter().map(|f| f.decode().unwrap()).collect();
        assert!(decoded.iter().all(|c| c.sequence == 5));
        assert_eq!(decoded.iter().filter(|c| !c.more).count(), 1);
        let cgroups: usize = decoded.iter().map(|c| c.cgroups.len()).sum();
        assert_eq!(cgroups, 2_000);
    }
}
