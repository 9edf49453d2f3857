"""The composition root: builds every object, starts the transports, drains and stops them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Iterator

import uvicorn

from inferd.config import ModelConfig, ServerSettings
from inferd.observability.metrics import Metrics
from inferd.repository.registry import ModelRegistry
from inferd.runtimes.base import Runtime
from inferd.scheduling.factory import build_scheduler
from inferd.service import InferenceService
from inferd.transport.http.app import HttpApp, Router
from inferd.transport.http.routes import KServeV2Routes, MetricsRoutes

log = logging.getLogger("inferd.server")


def build_service(settings: ServerSettings) -> InferenceService:
    metrics = Metrics()

    def wrap(runtime: Runtime, config: ModelConfig, name: str, version: str) -> Runtime:
        return build_scheduler(runtime, config, name, version, metrics.for_model(name, version))

    service = InferenceService(ModelRegistry(settings.model_repository, wrap=wrap), metrics)
    metrics.watch_states(service.model_states)
    return service


def build_http_app(service: InferenceService, settings: ServerSettings) -> HttpApp:
    router = Router()
    KServeV2Routes(service, model_control=settings.model_control == "explicit").register(router)
    MetricsRoutes(service).register(router)
    return HttpApp(router, settings.max_body_bytes)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the Server below decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Server:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.service = build_service(settings)
        self._stop = asyncio.Event()
        self._http: _Uvicorn | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        http_task = self._start_http()
        await self.service.registry.load_all()
        _settle_garbage_collector()
        if self._http is not None:
            while not self._http.started:
                if http_task is not None and http_task.done():
                    await http_task  # startup failed (port in use): raise its error
                    raise SystemExit(1)
                await asyncio.sleep(0.01)
        self.service.set_ready(True)
        self._announce()
        await self._stop.wait()
        await self._shutdown(http_task)

    def _start_http(self) -> asyncio.Task[None] | None:
        if self.settings.http_port == 0:
            return None
        app = build_http_app(self.service, self.settings)
        config = uvicorn.Config(app, host=self.settings.host, port=self.settings.http_port,
                                loop="none", http="httptools", lifespan="off", access_log=False,
                                log_level="warning", timeout_keep_alive=30, backlog=4096,
                                proxy_headers=False, server_header=False, date_header=False)
        self._http = _Uvicorn(config)
        return asyncio.create_task(self._http.serve())

    def _announce(self) -> None:
        rows = self.service.repository_index()
        ready = sum(row["state"] == "READY" for row in rows)
        s = self.settings
        where = f"http://{s.host}:{s.http_port}" if s.http_port else "no HTTP"
        print(f"inferd ready: {where} ({ready} of {len(rows)} model versions ready)", flush=True)

    async def _shutdown(self, http_task: asyncio.Task[None] | None) -> None:
        log.info("shutting down")
        self.service.start_draining()
        if self._http is not None and http_task is not None:
            self._http.should_exit = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(http_task, self.settings.drain_timeout)
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
