"""The transport ceiling: a bare gRPC unary echo between two Python processes.

The server is what the services run on (a grpc.aio server on an asyncio event loop) with a handler
that returns the request's bytes: no auth, no protobuf parsing, no database. The client sends a
serialized SendGiftRequest with the same bearer metadata, from the same load generator at the same
concurrency. Run the server as `python -m bench.echo PORT`.
"""

from __future__ import annotations

import asyncio
import sys

import grpc

METHOD = "/giftcoin.bench.v1.EchoService/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    # No (de)serializers: bytes in, bytes out.
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(_echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("giftcoin.bench.v1.EchoService", {"Echo": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()  # until the benchmark terminates the process


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
