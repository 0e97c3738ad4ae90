"""The transport ceiling: a bare gRPC unary echo between two Python processes.

The server is what the services run on (grpc's thread-pool server, the same worker count) with a
handler that returns the request's bytes: no auth, no protobuf parsing, no database. The client
sends a serialized SendGiftRequest with the same bearer metadata, from the same load generator at
the same concurrency. Run the server as `python -m bench.echo PORT MAX_WORKERS`.
"""

from __future__ import annotations

import sys
import threading
from concurrent import futures

import grpc

METHOD = "/giftcoin.bench.v1.EchoService/Echo"


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def serve(port: int, max_workers: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=[("grpc.so_reuseport", 0)])
    # No (de)serializers: bytes in, bytes out.
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(_echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("giftcoin.bench.v1.EchoService", {"Echo": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    threading.Event().wait()  # until the benchmark terminates the process


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
