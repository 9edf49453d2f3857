"""The composition root: builds every object, starts the transports, drains and stops them."""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from inferd.auth import AccessPolicy
from inferd.compat.tfserving import read_model_config
from inferd.config import ModelConfig, ModelSource, ServerSettings
from inferd.core import Core, DataPlane, ModelControl
from inferd.core.cache import ResponseCache
from inferd.errors import InferdError
from inferd.observability.metrics import Metrics
from inferd.observability.torchserve_metrics import TorchServeMetrics
from inferd.repository.archives import store_archives
from inferd.repository.layout import single_model
from inferd.repository.registry import ModelRegistry
from inferd.runtimes.base import Runtime
from inferd.scheduling.ensemble import EnsembleScheduler
from inferd.scheduling.factory import build_scheduler
from inferd.scheduling.scheduler import Scheduler
from inferd.transport.budget import ByteBudget
from inferd.transport.http.app import HttpApp, Router
from inferd.transport.http.openapi import OpenApiRoutes
from inferd.transport.http.routes import KServeV2Routes, MetricsRoutes
from inferd.transport.http.server import HttpLimits, HttpServer
from inferd.transport.http.tfserving_routes import TFServingRoutes
from inferd.transport.http.torchserve_routes import CountingApp, TorchServeRoutes
from inferd.types import ModelState

if TYPE_CHECKING:
    from inferd.transport.grpc.server import GrpcServer

log = logging.getLogger("inferd.server")


def build_core(settings: ServerSettings) -> Core:
    metrics = Metrics()

    def wrap(runtime: Runtime, config: ModelConfig, name: str, version: str) -> Scheduler:
        if config.backend == "ensemble":  # its steps go through the data plane, as requests of their own
            return EnsembleScheduler(runtime, config, f"{name}:{version}", lambda request: data.run_step(request))
        return build_scheduler(runtime, config, name, version, metrics.for_model(name, version))

    access = AccessPolicy(model_control=settings.model_control == "explicit", token=settings.auth_token,
                          guard_inference=settings.auth_inference)
    root, sources = repository_roots(settings)
    registry = ModelRegistry(root, wrap=wrap, sources=sources, batching=settings.batching)
    control = ModelControl(registry, access, settings.model_store, settings.torchserve)
    metrics.watch_states(lambda: [(row.name, row.version, row.state.value) for row in control.states()])
    cache = ResponseCache(settings.cache_size) if settings.cache_size > 0 else None
    data = DataPlane(registry, metrics, access, settings.server_name, cache)
    return Core(data, control, metrics)


def repository_roots(settings: ServerSettings) -> tuple[Path | None, tuple[ModelSource, ...]]:
    """The repository folder and the models in folders of their own: a folder that holds one
    model (KServe's /mnt/models) is served as that model, named --model-name or after the folder."""
    root, sources = settings.model_repository, settings.model_sources
    if root is None or not single_model(root):
        if root is not None and settings.model_name is not None:
            log.info("%s is a repository: its models keep their own names (--model-name %s names a "
                     "single model's folder)", root, settings.model_name)
        return root, sources
    return None, (ModelSource(settings.model_name or root.resolve().name, root), *sources)


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
        self._budget = ByteBudget(settings.max_inflight_bytes)  # HTTP and gRPC share it

    async def run(self) -> bool:
        """Serve until SIGTERM/SIGINT; True when the drain finished everything in time."""
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
        if self._grpc is not None:
            self._grpc.health.set_serving(True)
        self._announce()
        pollers = [loop.create_task(self._poll())] if self.settings.model_control == "poll" else []
        if self.settings.model_config_file is not None and self.settings.model_config_poll > 0:
            pollers.append(loop.create_task(self._poll_model_config(self.settings.model_config_file)))
        await self._stop.wait()
        for poller in pollers:
            poller.cancel()
        finished = await self._shutdown()
        if not finished:
            _exit_now()
        return finished

    async def _listen(self) -> None:
        s = self.settings
        limits = HttpLimits(max_connections=s.max_connections, header_timeout_s=s.header_timeout,
                            body_timeout_s=s.body_timeout)
        if self.settings.http_port:
            app = build_http_app(self.core, self.settings, self.ts_metrics)
            self._http = HttpServer(app, s.host, s.http_port, limits, self._budget)
            await self._http.start()
        for listener in self.settings.listeners:
            app = build_listener_app(self.core, self.settings, listener.apis, self.ts_metrics)
            server = HttpServer(app, listener.host, listener.port, limits, self._budget)
            await server.start()
            self._listeners.append(server)
        if self.settings.grpc_port:
            from inferd.transport.grpc.server import GrpcServer  # grpc loads only when gRPC is on

            self._grpc = GrpcServer(self.core, self.settings.host, self.settings.grpc_port,
                                    self.settings.max_body_bytes, self._budget, self.settings.max_connections,
                                    self.settings.grpc_socket_path, self.settings.grpc_options)
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
        rows = self.core.control.states()
        ready = sum(row.state is ModelState.READY for row in rows)
        s = self.settings
        where = ", ".join(filter(None, [f"http://{s.host}:{s.http_port}" if s.http_port else "",
                                        f"grpc://{s.host}:{s.grpc_port}" if s.grpc_port else "",
                                        *(f"{'+'.join(x.apis)} http://{x.host}:{x.port}" for x in s.listeners)]))
        print(f"inferd ready: {where} ({ready} of {len(rows)} model versions ready)", flush=True)

    async def _shutdown(self) -> bool:
        """Both transports drain at once, then the models; ``--drain-timeout`` bounds it all (plus
        the grace runtimes get to stop their instances)."""
        log.info("shutting down")
        deadline = time.monotonic() + self.settings.drain_timeout
        self.core.data.start_draining()
        closing = []
        if self._grpc is not None:
            closing.append(self._grpc.stop(self.settings.drain_timeout))
        if self._http is not None:
            closing.append(self._http.close(self.settings.drain_timeout))
        closing.extend(listener.close(self.settings.drain_timeout) for listener in self._listeners)
        await asyncio.gather(*closing)
        if self.settings.pid_file is not None:
            self.settings.pid_file.unlink(missing_ok=True)
        finished = await self.core.control.close(max(deadline - time.monotonic(), 0.0))
        if not finished:
            log.warning("--drain-timeout %g s passed with work still running: it is abandoned",
                        self.settings.drain_timeout)
        return finished

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


def _exit_now() -> None:
    """Exit 0 without joining threads: a model call that never returns would hold a normal exit
    (the event loop's executor and every instance pool join their threads) past --drain-timeout."""
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)
