"""The composition root: builds every object, starts the transports, drains and stops them."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Any

from inferd.auth import AccessPolicy
from inferd.config import ModelConfig, ServerSettings
from inferd.errors import InferdError
from inferd.observability.metrics import Metrics
from inferd.repository.archives import archive_config, store_archives
from inferd.repository.registry import ModelRegistry
from inferd.runtimes.base import Runtime
from inferd.scheduling.factory import build_scheduler
from inferd.service import InferenceService
from inferd.transport.http.app import HttpApp, Router
from inferd.transport.http.openapi import OpenApiRoutes
from inferd.transport.http.routes import KServeV2Routes, MetricsRoutes
from inferd.transport.http.server import HttpServer
from inferd.transport.http.tfserving_routes import TFServingRoutes
from inferd.transport.http.torchserve_routes import TorchServeRoutes

log = logging.getLogger("inferd.server")


def build_service(settings: ServerSettings) -> InferenceService:
    metrics = Metrics()

    def wrap(runtime: Runtime, config: ModelConfig, name: str, version: str) -> Runtime:
        return build_scheduler(runtime, config, name, version, metrics.for_model(name, version))

    access = AccessPolicy(model_control=settings.model_control == "explicit", token=settings.auth_token,
                          guard_inference=settings.auth_inference)
    service = InferenceService(ModelRegistry(settings.model_repository, wrap=wrap), metrics, settings.model_store,
                               access)
    metrics.watch_states(service.model_states)
    return service


def build_http_app(service: InferenceService, settings: ServerSettings) -> HttpApp:
    router = Router()
    KServeV2Routes(service).register(router)
    MetricsRoutes(service).register(router)
    TorchServeRoutes(service).register(router)
    TFServingRoutes(service).register(router)
    OpenApiRoutes().register(router)
    return HttpApp(router, settings.max_body_bytes)


class Server:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.service = build_service(settings)
        self._stop = asyncio.Event()
        self._http: HttpServer | None = None
        self._grpc: Any = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if self.settings.http_port:
            app = build_http_app(self.service, self.settings)
            self._http = HttpServer(app, self.settings.host, self.settings.http_port)
            await self._http.start()  # answers (503 not ready) while models load
        if self.settings.grpc_port:
            from inferd.transport.grpc.server import GrpcServer  # grpc loads only when gRPC is on

            self._grpc = GrpcServer(self.service, self.settings.host, self.settings.grpc_port,
                                    self.settings.max_body_bytes)
            await self._grpc.start()
        explicit = self.settings.model_control == "explicit"
        await self.service.registry.load_all(self.settings.load_models if explicit else ("*",))
        await self._register_store_archives()
        _settle_garbage_collector()
        self.service.set_ready(True)
        self._announce()
        poller = loop.create_task(self._poll()) if self.settings.model_control == "poll" else None
        await self._stop.wait()
        if poller is not None:
            poller.cancel()
        await self._shutdown()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            try:
                await self.service.registry.poll()
            except Exception:  # a bad scan is logged; the next one tries again
                log.exception("repository poll failed")

    async def _register_store_archives(self) -> None:
        """``--model-store DIR --models ...``: archives served from the start, one worker, no batching
        (TorchServe's defaults); a broken one is logged and the rest still load."""
        store, models = self.settings.model_store, self.settings.models
        if store is None or not models:
            return
        for name, archive in store_archives(store, models):
            try:
                await self.service.register_archive(archive, name, archive_config(1, 1, 0.0))
            except InferdError as exc:
                log.error("archive %s not served: %s", archive.name, exc.message)

    def _announce(self) -> None:
        rows = self.service.repository_index()
        ready = sum(row["state"] == "READY" for row in rows)
        s = self.settings
        where = ", ".join(filter(None, [f"http://{s.host}:{s.http_port}" if s.http_port else "",
                                        f"grpc://{s.host}:{s.grpc_port}" if s.grpc_port else ""]))
        print(f"inferd ready: {where} ({ready} of {len(rows)} model versions ready)", flush=True)

    async def _shutdown(self) -> None:
        log.info("shutting down")
        self.service.start_draining()
        if self._grpc is not None:
            await self._grpc.stop(self.settings.drain_timeout)
        if self._http is not None:
            await self._http.close(self.settings.drain_timeout)
        await self.service.registry.close()

    def stop(self) -> None:
        self._stop.set()


def _settle_garbage_collector() -> None:
    """Move everything alive after loading (frameworks hold millions of objects) out of the
    collector's sight, and collect the young generation less often: full collections over
    torch's objects otherwise stall the event loop for tens of milliseconds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def run(settings: ServerSettings) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        asyncio.run(Server(settings).run())
    else:
        uvloop.run(Server(settings).run())
