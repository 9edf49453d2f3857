"""The composition root: builds every object, starts the transports, drains and stops them."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from inferd.auth import AccessPolicy
from inferd.compat.tfserving import read_model_config
from inferd.config import ModelConfig, ServerSettings
from inferd.core import Core, DataPlane, ModelControl
from inferd.errors import InferdError
from inferd.observability.metrics import Metrics
from inferd.observability.torchserve_metrics import TorchServeMetrics
from inferd.repository.archives import store_archives
from inferd.repository.registry import ModelRegistry
from inferd.runtimes.base import Runtime
from inferd.scheduling.factory import build_scheduler
from inferd.scheduling.scheduler import Scheduler
from inferd.transport.http.app import HttpApp, Router
from inferd.transport.http.openapi import OpenApiRoutes
from inferd.transport.http.routes import KServeV2Routes, MetricsRoutes
from inferd.transport.http.server import HttpServer
from inferd.transport.http.tfserving_routes import TFServingRoutes
from inferd.transport.http.torchserve_routes import CountingApp, TorchServeRoutes
from inferd.types import ModelState

if TYPE_CHECKING:
    from inferd.transport.grpc.server import GrpcServer

log = logging.getLogger("inferd.server")


def build_core(settings: ServerSettings) -> Core:
    metrics = Metrics()

    def wrap(runtime: Runtime, config: ModelConfig, name: str, version: str) -> Scheduler:
        return build_scheduler(runtime, config, name, version, metrics.for_model(name, version))

    access = AccessPolicy(model_control=settings.model_control == "explicit", token=settings.auth_token,
                          guard_inference=settings.auth_inference)
    registry = ModelRegistry(settings.model_repository, wrap=wrap, sources=settings.model_sources,
                             batching=settings.batching)
    control = ModelControl(registry, access, settings.model_store, settings.torchserve)
    metrics.watch_states(lambda: [(row.name, row.version, row.state.value) for row in control.index()])
    return Core(DataPlane(registry, metrics, access), control, metrics)


def build_http_app(core: Core, settings: ServerSettings, ts_metrics: TorchServeMetrics | None = None) -> HttpApp:
    router = Router()
    KServeV2Routes(core).register(router)
    MetricsRoutes(core).register(router, settings.metrics_paths)
    TorchServeRoutes(core, ts_metrics).register(router)
    TFServingRoutes(core).register(router)
    OpenApiRoutes().register(router)
    return HttpApp(router, settings.max_body_bytes)


def build_listener_app(core: Core, settings: ServerSettings, apis: tuple[str, ...],
                       ts_metrics: TorchServeMetrics) -> HttpApp:
    """One of TorchServe's addresses (``inferd torchserve``): its APIs only; the inference and
    management ones count their answers in TorchServe's Requests2XX/4XX/5XX."""
    router = Router()
    TorchServeRoutes(core, ts_metrics).register(router, apis)
    if "metrics" in apis and len(apis) == 1:
        return HttpApp(router, settings.max_body_bytes)
    return CountingApp(router, settings.max_body_bytes, ts_metrics)


class Server:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.core = build_core(settings)
        self._stop = asyncio.Event()
        self._http: HttpServer | None = None
        self._listeners: list[HttpServer] = []
        self.ts_metrics = TorchServeMetrics()
        self._grpc: GrpcServer | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if self.settings.pid_file is not None:
            self.settings.pid_file.write_text(str(os.getpid()))
        if not self.settings.listen_after_load:
            await self._listen()  # answers (503 not ready) while models load
        explicit = self.settings.model_control == "explicit"
        await self.core.control.load_at_start(self.settings.load_models if explicit else ("*",))
        await self._register_store_archives()
        if self.settings.listen_after_load:
            await self._listen()
        _settle_garbage_collector()
        self.core.data.set_ready(True)
        self._announce()
        pollers = [loop.create_task(self._poll())] if self.settings.model_control == "poll" else []
        if self.settings.model_config_file is not None and self.settings.model_config_poll > 0:
            pollers.append(loop.create_task(self._poll_model_config(self.settings.model_config_file)))
        await self._stop.wait()
        for poller in pollers:
            poller.cancel()
        await self._shutdown()

    async def _listen(self) -> None:
        if self.settings.http_port:
            app = build_http_app(self.core, self.settings, self.ts_metrics)
            self._http = HttpServer(app, self.settings.host, self.settings.http_port)
            await self._http.start()
        for listener in self.settings.listeners:
            app = build_listener_app(self.core, self.settings, listener.apis, self.ts_metrics)
            server = HttpServer(app, listener.host, listener.port)
            await server.start()
            self._listeners.append(server)
        if self.settings.grpc_port:
            from inferd.transport.grpc.server import GrpcServer  # grpc loads only when gRPC is on

            self._grpc = GrpcServer(self.core, self.settings.host, self.settings.grpc_port,
                                    self.settings.max_body_bytes, self.settings.grpc_socket_path,
                                    self.settings.grpc_options)
            await self._grpc.start()

    async def _poll_model_config(self, path: Path) -> None:
        """TF Serving's --model_config_file_poll_wait_seconds: read models.config again and apply
        it; a file that does not parse is logged and the models served stay."""
        while True:
            await asyncio.sleep(self.settings.model_config_poll)
            try:
                sources = read_model_config(path)
            except InferdError as exc:
                log.error("model config not applied: %s", exc.message)
                continue
            try:
                await self.core.control.apply_model_sources(sources)
            except Exception:
                log.exception("applying the model config failed")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            try:
                await self.core.control.poll()
            except Exception:  # a bad scan is logged; the next one tries again
                log.exception("repository poll failed")

    async def _register_store_archives(self) -> None:
        """``--model-store DIR --models ...``: archives served from the start (TorchServe's start-up
        workers, no batching unless their model-config.yaml says); a broken one is logged."""
        store, models = self.settings.model_store, self.settings.models
        if store is None or not models:
            return
        for name, archive in store_archives(store, models):
            try:
                await self.core.control.register_archive(archive, name)
            except InferdError as exc:
                log.error("archive %s not served: %s", archive.name, exc.message)

    def _announce(self) -> None:
        rows = self.core.control.index()
        ready = sum(row.state is ModelState.READY for row in rows)
        s = self.settings
        where = ", ".join(filter(None, [f"http://{s.host}:{s.http_port}" if s.http_port else "",
                                        f"grpc://{s.host}:{s.grpc_port}" if s.grpc_port else "",
                                        *(f"{'+'.join(x.apis)} http://{x.host}:{x.port}" for x in s.listeners)]))
        print(f"inferd ready: {where} ({ready} of {len(rows)} model versions ready)", flush=True)

    async def _shutdown(self) -> None:
        log.info("shutting down")
        self.core.data.start_draining()
        if self._grpc is not None:
            await self._grpc.stop(self.settings.drain_timeout)
        if self._http is not None:
            await self._http.close(self.settings.drain_timeout)
        for listener in self._listeners:
            await listener.close(self.settings.drain_timeout)
        if self.settings.pid_file is not None:
            self.settings.pid_file.unlink(missing_ok=True)
        await self.core.control.close()

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
