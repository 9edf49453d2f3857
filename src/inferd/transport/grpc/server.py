"""The gRPC server: grpc.aio on its own port, every servicer registered under its protocol's name.

Bounded like the HTTP front end: at most ``max_calls`` calls at once (grpc answers the next one
RESOURCE_EXHAUSTED before reading it), 100 streams per connection, and every request message
counted against the byte budget HTTP shares while its call runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from inferd.core import Core
from inferd.transport.budget import ByteBudget
from inferd.transport.grpc.servicers import Context, KServeV2Servicer, ModelServicer, PredictionServicer, Servicer

MAX_STREAMS_PER_CONNECTION = 100


def _budgeted(method: Callable[[Any, Context], Awaitable[Message]], budget: ByteBudget
              ) -> Callable[[Any, Context], Awaitable[Message]]:
    async def call(request: Any, context: Context) -> Message:
        size = request.ByteSize()
        if not budget.take(size):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, budget.refusal(size))
        try:
            return await method(request, context)
        finally:
            budget.give(size)

    return call


def _handler(servicer: Servicer, budget: ByteBudget) -> grpc.GenericRpcHandler[Any, Any]:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _budgeted(method, budget), request_deserializer=request_type.FromString,
            response_serializer=lambda message: message.SerializeToString())
        for name, (method, request_type) in servicer.methods().items()
    }
    return grpc.method_handlers_generic_handler(servicer.name, handlers)


class GrpcServer:
    def __init__(self, core: Core, host: str, port: int, max_message_bytes: int,
                 budget: ByteBudget | None = None, max_calls: int = 1000) -> None:
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0),
                   ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION)]
        self._server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_calls)
        budget = budget or ByteBudget(8 * max_message_bytes)
        servicers: list[Servicer] = [KServeV2Servicer(core), PredictionServicer(core), ModelServicer(core)]
        self._server.add_generic_rpc_handlers([_handler(s, budget) for s in servicers])
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {host}:{port}")

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float) -> None:
        await self._server.stop(grace)
