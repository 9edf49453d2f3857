"""gRPC's standard health service (``grpc.health.v1.Health``), for Kubernetes' gRPC probes.

The whole server ("") and each inferd service answer NOT_SERVING until every model was tried,
SERVING once the server is ready (as ``/v2/health/ready``), and NOT_SERVING for good once it drains.
It answers without a token: probes carry none, and it tells nothing about models.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
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
