"""An independent gRPC client (Python grpcio, no generated code): discovers the API through
server reflection, subscribes to collector.v1.Collector/Watch and prints, as JSON, what the
snapshot and the first update said. Used by tests/python_client.rs."""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main(address: str) -> None:
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName("collector.v1.Collector").FindMethodByName("Watch")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    watch = channel.unary_stream(
        "/collector.v1.Collector/Watch",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    stream = watch(request_class(interval_ms=200), timeout=20)
    snapshot = next(stream)
    update = next(stream)
    stream.cancel()
    print(
        json.dumps(
            {
                "snapshot": snapshot.snapshot,
                "snapshot_paths": sorted(c.path for c in snapshot.cgroups),
                "node_name": snapshot.node.node_name,
                "update_sequence": update.sequence,
                "update_snapshot": update.snapshot,
                "update": json_format.MessageToDict(update),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
