"""The composition root: builds every object, starts the transports, drains and stops them."""

from __future__ import annotations

import asyncio
import atexit
import functools
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from inferd.auth import AccessPolicy, TorchServeKeys
from inferd.compat import torchserve_logs, torchserve_snapshots
from inferd.compat.tfserving import read_model_config, reloaded_model_config
from inferd.config import NAME_RULE, ModelConfig, ModelSource, ServerSettings, header_pattern
from inferd.core import Core, DataPlane, ModelControl
from inferd.core.cache import ResponseCache
from inferd.core.model_calls import LoopModelCalls
from inferd.core.shared_memory import SharedMemoryRegions
from inferd.errors import ConfigError, InferdError
from inferd.isolation.process import remove_leftovers
from inferd.observability.metrics import Metrics
from inferd.observability.torchserve_metrics import TorchServeMetrics
from inferd.observability.tracing import TRACE_WORKERS_REFUSAL, Tracer, TraceValues
from inferd.observability.triton_metrics import TritonRow
from inferd.repository.archives import store_archives
from inferd.repository.layout import misnamed, scan, single_model
from inferd.repository.registry import ModelRegistry
from inferd.repository.remote import RemoteRepository, default_cache
from inferd.runtimes import model_calls
from inferd.runtimes.base import Runtime
from inferd.scheduling.ensemble import EnsembleScheduler
from inferd.scheduling.factory import build_scheduler
from inferd.scheduling.ratelimit import RateLimiter
from inferd.scheduling.scheduler import Scheduler
from inferd.transport.budget import ByteBudget
from inferd.transport.http.app import HttpApp, Router
from inferd.transport.http.openapi import OpenApiRoutes
from inferd.transport.http.routes import KServeV2Routes, MetricsRoutes
from inferd.transport.http.server import HttpLimits, HttpServer
from inferd.transport.http.tfserving_routes import TFServingRoutes
from inferd.transport.http.torchserve_routes import CountingApp, TorchServeRoutes, torchserve_refusal
from inferd.transport.shared_counts import SharedCount, forget_worker, worker_counts
from inferd.types import ModelState, ModelStatistics

if TYPE_CHECKING:
    from inferd.transport.grpc.native import NativeGrpcServer
    from inferd.transport.grpc.server import GrpcServer
    from inferd.workers.owner import Workers

log = logging.getLogger("inferd.server")


class CannotListen(Exception):
    """A port could not be opened (in use, or not ours to take); the command line names its flag."""

    def __init__(self, what: str, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen for {what} on {host}:{port}: {reason}")
        self.what, self.host, self.port, self.reason = what, host, port, reason


async def _open(what: str, host: str, port: int, start: Callable[[], Awaitable[None]]) -> None:
    try:
        await start()
    except (OSError, RuntimeError) as exc:  # asyncio: OSError(EADDRINUSE); grpc: RuntimeError("Failed to bind")
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if "bind" in reason.lower() or "in use" in reason.lower():
            reason = "the port is in use"
        raise CannotListen(what, host, port, reason) from None


def build_core(settings: ServerSettings) -> Core:
    metrics = Metrics()
    # one for every model the core serves: rate limiter resources are the server's, not a model's
    limiter = RateLimiter(settings.rate_limit_resources) if settings.rate_limit == "execution_count" else None

    def wrap(runtime: Runtime, config: ModelConfig, name: str, version: str) -> Scheduler:
        if config.backend == "ensemble":  # its steps go through the data plane, as requests of their own
            return EnsembleScheduler(runtime, config, f"{name}:{version}", lambda request: data.run_step(request),
                                     step_model=step_model)
        return build_scheduler(runtime, config, name, version, metrics.for_model(name, version), limiter,
                               settings.batch_wait)

    def step_model(name: str, version: int) -> Scheduler | None:
        """An ensemble step's model as it serves now, for the checks between them."""
        try:
            return registry.get(name, str(version) if version > 0 else None)[0]
        except InferdError:
            return None

    ts = settings.torchserve
    keys = TorchServeKeys(ts.key_file, ts.token_expiration_min * 60) if ts.key_file is not None else None
    access = AccessPolicy(model_control=settings.model_control == "explicit" or settings.control_api,
                          token=settings.auth_token, guard_inference=settings.auth_inference, keys=keys)
    root, sources = repository_roots(settings)
    registry = ModelRegistry(root, wrap=wrap, sources=sources, batching=settings.batching,
                             builds_at_once=settings.model_load_threads, prefer_tflite=settings.prefer_tflite)
    control = ModelControl(registry, access, settings.model_store, settings.torchserve, reloaded_model_config,
                           settings.labels_for_unavailable_versions)
    metrics.watch_states(lambda: [(row.name, row.version, row.state.value) for row in control.states()])
    try:
        metrics.torchserve_models.configure(ts.metrics_mode, ts.metrics_config, ts.model_metrics_auto_detect)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cache = ResponseCache(settings.cache_size) if settings.cache_size > 0 else None
    regions = SharedMemoryRegions(settings.allow_client_shm, settings.max_body_bytes, settings.max_inflight_bytes)
    tracer = Tracer(TraceValues(settings.trace_level, settings.trace_rate, settings.trace_count,
                                settings.trace_log_frequency, settings.trace_file),
                    refusal=TRACE_WORKERS_REFUSAL if settings.workers else "")
    data = DataPlane(registry, metrics, access, settings.server_name, settings.strict_readiness, cache, regions,
                     tracer)
    metrics.watch_statistics(lambda: [_triton_row(row) for row in data.loaded_statistics(None, None)])
    return Core(data, control, metrics, tracer)


def _triton_row(row: ModelStatistics) -> TritonRow:
    """A version's statistics as Triton's nv_inference_* families count them."""
    r = row.requests
    return TritonRow(row.name, row.version, r.success.count, r.fail.count, row.inference_count - r.cached_rows,
                     row.execution_count, r.success.ns, r.queue.ns, r.compute_input.ns, r.compute_infer.ns,
                     r.compute_output.ns, row.pending, row.cached, r.cache_hit.count, r.cache_miss.count,
                     r.cache_hit.ns, r.cache_miss.ns, tuple(r.failures.items()))


def repository_roots(settings: ServerSettings) -> tuple[Path | None, tuple[ModelSource, ...]]:
    """The repository folder and the models in folders of their own: a folder that holds one
    model (KServe's /mnt/models) is served as that model, named --model-name or after the folder."""
    root, sources = settings.model_repository, settings.model_sources
    if root is None or not single_model(root):
        if root is not None and not scan(root) and not sources:
            skipped = misnamed(root)
            log.warning("model repository %s holds no models: expected <model>/<version>/<artifact> folders "
                        "(e.g. mlp/1/model.onnx), or one model's folder (model.onnx at the top)%s", root,
                        f"; skipped for their names: {', '.join(map(repr, skipped))} ({NAME_RULE})" if skipped else "")
        if root is not None and settings.model_name is not None:
            log.info("%s is a repository: its models keep their own names (--model-name %s names a "
                     "single model's folder)", root, settings.model_name)
        return root, sources
    return None, (ModelSource(settings.model_name or root.resolve().name, root), *sources)


def remote_repository(settings: ServerSettings) -> RemoteRepository | None:
    if settings.remote_repository is None:
        return None
    return RemoteRepository(settings.remote_repository, settings.repository_cache or default_cache())


def mirror_remote(settings: ServerSettings) -> ServerSettings:
    """A remote repository's first sync (its errors are the user's: ConfigError); the settings
    then serve the local mirror."""
    remote = remote_repository(settings)
    if remote is None:
        return settings
    report = remote.sync()
    log.info("%s mirrored in %s (%d files downloaded, %d unchanged)", remote.url, remote.mirror,
             len(report.downloaded), report.unchanged)
    return replace(settings, model_repository=remote.mirror)


def build_http_app(core: Core, settings: ServerSettings, ts_metrics: TorchServeMetrics | None = None) -> HttpApp:
    router = Router()
    forward = header_pattern(settings.http_header_forward_pattern, "--http-header-forward-pattern")
    KServeV2Routes(core, settings.http_restrictions, forward).register(router)
    MetricsRoutes(core).register(router, settings.metrics_paths)
    TorchServeRoutes(core, ts_metrics).register(router)
    TFServingRoutes(core).register(router)
    OpenApiRoutes().register(router)
    return HttpApp(router, settings.max_body_bytes, settings.access_log)


def build_listener_app(core: Core, settings: ServerSettings, apis: tuple[str, ...],
                       ts_metrics: TorchServeMetrics) -> HttpApp:
    """One of TorchServe's addresses (``inferd torchserve``): its APIs only; the inference and
    management ones count their answers in TorchServe's Requests2XX/4XX/5XX; an unknown path or
    method is answered in TorchServe's words."""
    if apis == ("kserve_metrics",):  # Triton's --metrics-port: inferd's /metrics alone
        metrics_only = Router()
        MetricsRoutes(core).register(metrics_only, settings.metrics_paths)
        return HttpApp(metrics_only, settings.max_body_bytes)
    router = Router(torchserve_refusal)
    TorchServeRoutes(core, ts_metrics).register(router, apis, kserve_predict=True)
    if "metrics" in apis and len(apis) == 1:
        return HttpApp(router, settings.max_body_bytes, settings.access_log)
    return CountingApp(router, settings.max_body_bytes, ts_metrics, settings.access_log)


def _shown(apis: tuple[str, ...]) -> str:
    """A listener's APIs as the ready line names them (--metrics-port's is "metrics")."""
    return "+".join("metrics" if api == "kserve_metrics" else api for api in apis)


def split(total: int, parts: int, part: int) -> int:
    """Part ``part`` of ``total`` shared by ``parts`` workers: the parts add up to ``total``
    (1000 connections over 3 workers: 334, 333, 333)."""
    return (total + parts - 1 - part) // parts


class Transports:
    """The ports one process serves (HTTP, TorchServe's addresses, gRPC) over a core: the whole
    server's, or a front-end worker's that forwards to the model process. ``share`` workers split
    the connection limit and the in-flight byte budget, so the server's totals hold."""

    def __init__(self, core: Core, settings: ServerSettings, ts_metrics: TorchServeMetrics, share: int = 1,
                 part: int = 0, counts: tuple[SharedCount, SharedCount] | None = None) -> None:
        """``counts``: a worker's gRPC calls at once and request bytes, held with the other workers'
        against the server's limits (``transport/shared_counts.py``)."""
        self.core, self.settings, self.ts_metrics, self.share, self.part = core, settings, ts_metrics, share, part
        self.shared_calls = None if counts is None else counts[0]
        self._budget = ByteBudget(settings.max_inflight_bytes, counts[1]) if counts is not None \
            else ByteBudget(max(split(settings.max_inflight_bytes, share, part), settings.max_body_bytes))
        self._http: HttpServer | None = None
        self._listeners: list[HttpServer] = []
        self._grpc: GrpcServer | NativeGrpcServer | None = None

    async def start(self) -> None:
        s = self.settings
        shared = bool(s.workers)  # a worker's ports: every worker listens on the same ones
        connections = split(s.max_connections, self.share, self.part)
        limits = HttpLimits(max_connections=connections, header_timeout_s=s.header_timeout,
                            body_timeout_s=s.body_timeout, large_body_rate=s.large_body_rate)
        if s.http_port:
            app = build_http_app(self.core, s, self.ts_metrics)
            self._http = HttpServer(app, s.host, s.http_port, limits, self._budget, reuse_port=shared)
            await _open("HTTP", s.host, s.http_port, self._http.start)
        for listener in s.listeners:
            app = build_listener_app(self.core, s, listener.apis, self.ts_metrics)
            server = HttpServer(app, listener.host, listener.port, limits, self._budget)
            await _open("+".join(listener.apis), listener.host, listener.port, server.start)
            self._listeners.append(server)
        if s.grpc_port:
            grpc_forward = header_pattern(s.grpc_header_forward_pattern, "--grpc-header-forward-pattern")
            if s.grpc_server == "grpcio":
                from inferd.transport.grpc.server import GrpcServer  # grpc loads only when gRPC is on

                options = (*s.grpc_options, ("grpc.so_reuseport", 1)) if shared else s.grpc_options

                async def start_grpc() -> None:  # the port is bound as the server is built
                    self._grpc = GrpcServer(self.core, s.host, s.grpc_port, s.max_body_bytes, self._budget,
                                            connections if self.shared_calls is None else s.max_connections,
                                            s.grpc_socket_path, options, s.grpc_extra_ports,
                                            s.grpc_restrictions, grpc_forward,
                                            None if self.shared_calls is None
                                            else (self.shared_calls, s.max_connections))
                    await self._grpc.start()
            else:
                from inferd.transport.grpc.native import NativeGrpcServer, channel_arguments

                async def start_grpc() -> None:
                    self._grpc = NativeGrpcServer(self.core, s.host, s.grpc_port, budget=self._budget,
                                                  max_calls=connections, socket_path=s.grpc_socket_path,
                                                  reuse_port=shared, extra_ports=s.grpc_extra_ports,
                                                  restrictions=s.grpc_restrictions,
                                                  header_forward=grpc_forward,
                                                  shared_calls=None if self.shared_calls is None
                                                  else (self.shared_calls, s.max_connections),
                                                  body_timeout_s=s.body_timeout,
                                                  **channel_arguments(s.grpc_options, s.max_body_bytes))
                    await self._grpc.start()

            await _open("gRPC", s.host, s.grpc_port, start_grpc)

    def set_serving(self, serving: bool) -> None:
        if self._grpc is not None:
            self._grpc.health.set_serving(serving)

    async def close(self, timeout: float) -> None:
        """Every port drains at once, for up to ``timeout`` seconds."""
        closing = []
        if self._grpc is not None:
            closing.append(self._grpc.stop(timeout))
        if self._http is not None:
            closing.append(self._http.close(timeout))
        closing.extend(listener.close(timeout) for listener in self._listeners)
        await asyncio.gather(*closing)


class Server:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.core = build_core(settings)
        self._stop = asyncio.Event()
        self.ts_metrics = TorchServeMetrics(mode=settings.torchserve.metrics_mode,
                                            system=torchserve_logs.system_sampler(settings.torchserve))
        self._transports = Transports(self.core, settings, self.ts_metrics)
        self._workers: Workers | None = None
        self.exit_code = 0
        self._remote = remote_repository(settings)
        self._served = False  # set once ready: a start that failed writes no shutdown snapshot

    async def run(self) -> bool:
        """Serve until SIGTERM/SIGINT; True when the drain finished everything in time."""
        loop = asyncio.get_running_loop()
        # Python models' requests to other models (BLS), and their own metrics
        model_calls.install(LoopModelCalls(self.core.data, self.core.control, loop, self.core.metrics))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if self.settings.pid_file is not None:
            self.settings.pid_file.write_text(str(os.getpid()))
        removed = remove_leftovers()
        if removed:
            log.info("removed %d folder(s) and shared-memory file(s) that killed servers left behind", removed)
        if not self.settings.listen_after_load:
            await self._listen()  # answers (503 not ready) while models load
        explicit = self.settings.model_control == "explicit"
        if not await self._until_stopped(self.core.control.load_at_start(
                self.settings.load_models if explicit else ("*",))):
            log.info("stopped while models were loading")
            if not await self._shutdown():
                _exit_now()  # a build still running would hold a normal exit
            return False
        await self._register_store_archives()
        if self.settings.torchserve.restore:
            await self.core.control.restore_snapshot(self.settings.torchserve.restore)
        failed = [row for row in self.core.control.states() if row.state is not ModelState.READY]
        if self.settings.exit_on_error and failed:
            for row in failed:
                which = f"model {row.name} version {row.version}" if row.version else f"model {row.name}"
                log.error("--exit-on-error: %s is %s: %s", which, row.state.value, row.reason)
            await self._shutdown()
            self.exit_code = 1
            return False
        if self.settings.listen_after_load:
            await self._listen()
        _settle_garbage_collector()
        self.core.data.set_ready(True)
        self._transports.set_serving(True)
        if self.settings.torchserve.snapshots is not None:  # there once the ready line is
            self._save_snapshot("startup")
            self.core.control.on_change(lambda: self._save_snapshot("snapshot"))
        self._announce()
        self._served = True
        polling = self.settings.model_control == "poll" or (self._remote is not None and explicit)
        pollers = [loop.create_task(self._poll())] if polling else []
        if self.settings.model_config_file is not None and self.settings.model_config_poll > 0:
            pollers.append(loop.create_task(self._poll_model_config(self.settings.model_config_file)))
        await self._stop.wait()
        for poller in pollers:
            poller.cancel()
        finished = await self._shutdown()
        if not finished:
            _exit_now()
        return finished

    async def _until_stopped(self, work: Awaitable[None]) -> bool:
        """Run ``work`` unless SIGTERM/SIGINT comes first (then cancel it); True if it finished."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        return False

    async def _listen(self) -> None:
        """This process's ports, or (``--workers N``) the workers that serve them."""
        if not self.settings.workers:
            await self._transports.start()
            return
        from inferd.workers.owner import Workers  # only a server with workers starts them

        self._workers = Workers(self.core, self.settings, forget_worker)
        s = self.settings
        for what, port in (("HTTP", s.http_port), ("gRPC", s.grpc_port)):  # taken here, or not at all
            await _open(what, s.host, port, functools.partial(self._workers.reserve, what))
        self.settings = await self._workers.start()  # port 0 is now the port the workers share

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
        """Rescan every --poll-interval (poll mode); a remote repository syncs first (in explicit
        mode too, so a load finds what was uploaded since)."""
        scans: set[asyncio.Task[None]] = set()  # a scan waits for its loads; the next starts on time
        try:
            while True:
                await asyncio.sleep(self.settings.poll_interval)
                try:
                    if self._remote is not None:
                        await asyncio.to_thread(self._remote.sync)
                except InferdError as exc:  # storage unreachable for a while: the models served stay
                    log.error("repository poll failed: %s", exc.message)
                    continue
                except Exception:  # the local disk (full, say): logged, and the next poll tries again
                    log.exception("repository poll failed")
                    continue
                if self.settings.model_control == "poll":
                    scan = asyncio.ensure_future(self._scan())
                    scans.add(scan)
                    scan.add_done_callback(scans.discard)
        finally:
            for scan in list(scans):
                scan.cancel()

    async def _scan(self) -> None:
        try:
            await self.core.control.poll()
        except InferdError as exc:
            log.error("repository poll failed: %s", exc.message)
        except Exception:  # a bad scan is logged; the next one tries again
            log.exception("repository poll failed")

    async def _register_store_archives(self) -> None:
        """``--model-store DIR --models ...``: archives served from the start (TorchServe's start-up
        workers, no batching unless their model-config.yaml says); a broken one is logged."""
        store, models = self.settings.model_store, self.settings.models
        if store is None or not models:
            return
        for name, url in store_archives(store, models):
            since = time.time()
            try:
                await self.core.control.register_archive(url, name)
            except InferdError as exc:
                log.error("archive %s not served: %s", url, exc.message)
            self._observe_loads(since)

    def _observe_loads(self, since: float) -> None:
        """TorchServe's WorkerLoadTime of the workers that became ready after ``since`` (time.time())."""
        for model, version, worker in self.core.control.ready_workers():
            if worker.started >= since:
                self.ts_metrics.worker_loaded(f"W-{9000 + worker.id}-{model}_{version}", worker.started - since)

    def _announce(self) -> None:
        rows = self.core.control.states()
        ready = sum(row.state is ModelState.READY for row in rows)
        s = self.settings
        where = ", ".join(filter(None, [f"http://{s.host}:{s.http_port}" if s.http_port else "",
                                        f"grpc://{s.host}:{s.grpc_port}" if s.grpc_port else "",
                                        *(f"{_shown(x.apis)} http://{x.host}:{x.port}" for x in s.listeners)]))
        workers = f", {s.workers} front-end workers" if s.workers else ""
        print(f"inferd ready: {where} ({ready} of {len(rows)} model versions ready{workers})", flush=True)
        if s.ready_line:
            print(s.ready_line, flush=True)

    async def _shutdown(self) -> bool:
        """Every port drains at once (the workers' too), then the models; ``--drain-timeout``
        bounds it all (plus the grace runtimes get to stop their instances)."""
        log.info("shutting down")
        deadline = time.monotonic() + self.settings.drain_timeout
        self.core.data.start_draining()
        await self._transports.close(self.settings.drain_timeout)
        if self._workers is not None:
            await self._workers.stop(self.settings.drain_timeout)
        if self.settings.pid_file is not None:
            self.settings.pid_file.unlink(missing_ok=True)
        if self.settings.torchserve.key_file is not None:  # TorchServe removes its key file at the stop
            self.settings.torchserve.key_file.unlink(missing_ok=True)
        if self.settings.torchserve.snapshots is not None and self._served:  # started, so stops with one
            self._save_snapshot("shutdown")
        finished = await self.core.control.close(max(deadline - time.monotonic(), 0.0))
        self.core.tracer.close()  # what the trace settings keep goes to the trace file, now complete
        if not finished:
            log.warning("--drain-timeout %g s passed with work still running: it is abandoned",
                        self.settings.drain_timeout)
        return finished

    def stop(self) -> None:
        self._stop.set()

    def _save_snapshot(self, kind: str) -> None:
        """TorchServe's config snapshot (compat/torchserve_snapshots.py); one not written is logged."""
        ts = self.settings.torchserve
        assert ts.snapshots is not None
        try:
            torchserve_snapshots.write(ts.snapshots, kind, ts.snapshot_properties,
                                       self.core.control.torchserve_snapshot())
        except OSError as exc:
            log.error("config snapshot not written in %s: %s", ts.snapshots, exc)


def _settle_garbage_collector() -> None:
    """Move everything alive after loading (frameworks hold millions of objects) out of the
    collector's sight, and collect the young generation less often: full collections over
    torch's objects otherwise stall the event loop for tens of milliseconds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def run(settings: ServerSettings) -> int:
    """Serve until stopped; the process's exit code (1: --exit-on-error and a model failed)."""
    server = Server(settings)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        asyncio.run(server.run())
    else:
        uvloop.run(server.run())
    return server.exit_code


async def run_frontend(socket_path: Path, settings: ServerSettings) -> None:
    """A front-end worker (``--workers N``): the same transports over a core that forwards every
    call to the model process; stops on SIGTERM/SIGINT (after draining) or when that process goes."""
    from inferd.workers.remote import Channel, remote_core

    channel = Channel(socket_path)
    await channel.connect()
    core = remote_core(channel)
    number = int(os.environ.get("INFERD_WORKER", "0"))
    ts_metrics = TorchServeMetrics(mode=settings.torchserve.metrics_mode,
                                   system=torchserve_logs.system_sampler(settings.torchserve))
    transports = Transports(core, settings, ts_metrics, share=settings.workers, part=number,
                            counts=worker_counts(socket_path.parent, settings.workers, number))
    await transports.start()
    channel.call_now("workers", "listening", number)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    beating = loop.create_task(channel.beat(number))  # on through the drain: the model process waits for it
    watchers = [loop.create_task(stop.wait()), loop.create_task(channel.lost.wait()),
                loop.create_task(_serving_once_ready(core, transports))]
    await asyncio.wait(watchers[:2], return_when=asyncio.FIRST_COMPLETED)
    for watcher in watchers:
        watcher.cancel()
    core.data.start_draining()
    await transports.close(settings.drain_timeout)
    beating.cancel()
    channel.close()


async def _serving_once_ready(core: Core, transports: Transports) -> None:
    """gRPC health turns SERVING when the model process is ready (it loads while workers listen)."""
    while not core.data.ready():
        await asyncio.sleep(0.2)
    transports.set_serving(True)


def run_worker(socket_path: Path, settings_path: Path) -> None:
    import pickle

    from inferd.observability.logging import configure

    settings = pickle.loads(settings_path.read_bytes())  # written by the model process, in its private folder
    configure(settings.log_level, settings.log_format)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        asyncio.run(run_frontend(socket_path, settings))
    else:
        uvloop.run(run_frontend(socket_path, settings))


def _exit_now() -> None:
    """Exit 0 without joining threads: a model call that never returns would hold a normal exit
    (the event loop's executor and every instance pool join their threads) past --drain-timeout."""
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)
