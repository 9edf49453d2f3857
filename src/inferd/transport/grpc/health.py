"""gRPC's standard health service (``grpc.health.v1.Health``), for Kubernetes' gRPC probes.

The whole server ("") and each inferd service answer NOT_SERVING until every model was tried,
SERVING once the server is ready (as ``/v2/health/ready``), and NOT_SERVING for good once it drains.
It answers without a token: probes carry none, and it tells nothing about models.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Servicer(health.HealthServicer):
    """grpcio-health-checking's servicer, whose open Watch streams end (status OK, after their
    NOT_SERVING) when the server drains: an open stream would otherwise hold the drain for all
    of --drain-timeout."""

    def __init__(self) -> None:
        # Watch streams are answered from one thread of their own, not one grpc thread each
        super().__init__(experimental_non_blocking=True, experimental_thread_pool=ThreadPoolExecutor(1))
        self._watches: set[Callable[[Any], None]] = set()
        self._watches_lock = threading.Lock()

    def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext,
              send_response_callback: Callable[..., Any] | None = None) -> health_pb2.HealthCheckResponse:
        if send_response_callback is not None:
            send = send_response_callback
            with self._watches_lock:
                self._watches.add(send)
            context.add_callback(lambda: self._forget(send))
        return super().Watch(request, context, send_response_callback)

    def _forget(self, send: Callable[[Any], None]) -> None:
        with self._watches_lock:
            self._watches.discard(send)

    def end_watches(self) -> None:
        with self._watches_lock:
            watches, self._watches = list(self._watches), set()
        for send in watches:
            send(None)  # the stream's end


class Health:
    def __init__(self, server: grpc.Server, services: list[str]) -> None:
        self._servicer = _Servicer()
        self._services = ["", *services]
        for service in self._services:
            self._servicer.set(service, NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    def set_serving(self, serving: bool) -> None:
        for service in self._services:
            self._servicer.set(service, SERVING if serving else NOT_SERVING)

    def drain(self) -> None:
        """NOT_SERVING from now on (later changes are ignored); open Watch streams end."""
        self._servicer.enter_graceful_shutdown()
        self._servicer.end_watches()


class NativeHealth:
    """The same service for inferd's own gRPC server (``native.py``): Check, and Watch as a stream
    that answers at once and again on every change, and ends after NOT_SERVING when draining.
    Runs on the event loop only."""

    name = "grpc.health.v1.Health"

    def __init__(self, services: list[str]) -> None:
        self._status = dict.fromkeys(["", *services], NOT_SERVING)
        self._draining = False
        self._changed: asyncio.Future[None] | None = None

    def methods(self) -> dict[str, tuple[Callable[..., Any], type[Any]]]:
        return {"Check": (self.check, health_pb2.HealthCheckRequest)}

    def streams(self) -> dict[str, tuple[Callable[..., Any], type[Any]]]:
        return {"Watch": (self.watch, health_pb2.HealthCheckRequest)}

    async def check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def watch(self, request: health_pb2.HealthCheckRequest, context: Any
                    ) -> AsyncGenerator[health_pb2.HealthCheckResponse, None]:
        last = None
        while True:
            status = self._status.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            if self._draining:
                return
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._changed)

    def set_serving(self, serving: bool) -> None:
        if not self._draining:
            self._set(SERVING if serving else NOT_SERVING)

    def drain(self) -> None:
        self._set(NOT_SERVING)
        self._draining = True
        self._wake()

    def _set(self, status: int) -> None:
        for service in self._status:
            self._status[service] = status
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)
