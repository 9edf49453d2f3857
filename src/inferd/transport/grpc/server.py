"""The gRPC server: grpc.aio on its own port, every servicer registered under its protocol's name."""

from __future__ import annotations

from typing import Any

import grpc

from inferd.core import Core
from inferd.transport.grpc.servicers import KServeV2Servicer, ModelServicer, PredictionServicer, Servicer


def _handler(servicer: Servicer) -> grpc.GenericRpcHandler[Any, Any]:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=request_type.FromString,
            response_serializer=lambda message: message.SerializeToString())
        for name, (method, request_type) in servicer.methods().items()
    }
    return grpc.method_handlers_generic_handler(servicer.name, handlers)


class GrpcServer:
    def __init__(self, core: Core, host: str, port: int, max_message_bytes: int, socket_path: str | None = None,
                 extra_options: tuple[tuple[str, str | int], ...] = ()) -> None:
        options: list[tuple[str, str | int]] = [("grpc.max_receive_message_length", max_message_bytes),
                                                ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)]
        options += extra_options  # later wins (TF Serving's --grpc_channel_arguments)
        self._server = grpc.aio.server(options=options)
        servicers: list[Servicer] = [KServeV2Servicer(core), PredictionServicer(core), ModelServicer(core)]
        self._server.add_generic_rpc_handlers([_handler(s) for s in servicers])
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {host}:{port}")
        if socket_path and not self._server.add_insecure_port(f"unix:{socket_path}"):
            raise OSError(f"cannot listen for gRPC on unix:{socket_path}")

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float) -> None:
        await self._server.stop(grace)
