"""Ray Serve: ``inferd serve REPO --ray ADDRESS``. Each replica is one inferd core (its own
registry, schedulers and dynamic batcher, not ``@serve.batch``) behind Serve's HTTP proxy, which
speaks to it through inferd's plain ASGI app; Serve places, scales and restarts the replicas.

Imported only when ``--ray`` is given (extra ``inferd[ray]``); replicas import this module by name,
so every node needs inferd importable (installed, or on PYTHONPATH of its ``ray start``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from dataclasses import dataclass, replace
from typing import Any, cast

import grpc
from ray import serve

from inferd.config import ServerSettings
from inferd.errors import ConfigError
from inferd.integrations.ray_metrics import RayMetricsBridge
from inferd.server import build_core, build_http_app, mirror_remote
from inferd.transport.grpc.servicers import KServeV2Servicer, ModelServicer, PredictionServicer

log = logging.getLogger("inferd.ray")

APP_NAME = "inferd"
SERVICER_FUNCTIONS = ["inferd.integrations.ray.add_kserve_v2_to_server",
                      "inferd.integrations.ray.add_tfserving_to_server"]
SERVICES = (KServeV2Servicer, PredictionServicer, ModelServicer)  # through Serve's gRPC proxy
PROXY_LOCATIONS = ("EveryNode", "HeadOnly")


@dataclass(frozen=True, slots=True)
class RayOptions:
    address: str = "auto"  # a running cluster: "auto" or host:port of its head (ray start --head)
    replicas: int = 1  # fixed replica count, unless autoscale
    autoscale: tuple[int, int] | None = None  # (min, max) replicas
    target_ongoing_requests: float | None = None  # per replica, what the autoscaler aims at
    autoscale_delays: tuple[float, float] | None = None  # (upscale, downscale) seconds; None: Serve's
    proxy_location: str = "EveryNode"  # HeadOnly where nodes share one address (one machine)
    max_ongoing_requests: int = 256  # a replica's queue is inferd's batcher: let requests reach it
    num_cpus: float = 1.0  # logical CPUs a replica reserves
    serve_thread: bool = False  # True: Serve's default, user code on a loop of its own thread
    metrics_interval: float = 2.0  # seconds between copies of a replica's metrics into Ray's; 0: none

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be at least 1, got {self.replicas}")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not 0 <= low <= high or high < 1:
                raise ConfigError(f"--autoscale MIN:MAX needs 0 <= MIN <= MAX and MAX >= 1, got {low}:{high}")
        if self.target_ongoing_requests is not None and self.target_ongoing_requests <= 0:
            raise ConfigError("--target-ongoing-requests must be positive")
        if self.metrics_interval < 0:
            raise ConfigError(f"--ray-metrics-interval must be 0 (off) or positive, got {self.metrics_interval}")
        if self.proxy_location not in PROXY_LOCATIONS:
            raise ConfigError(f"--ray-proxy must be one of {PROXY_LOCATIONS}")

    def deployment_options(self) -> dict[str, Any]:
        actor: dict[str, Any] = {"num_cpus": self.num_cpus}
        if not self.serve_thread:  # inferd's core runs on the replica's own loop: one hop less
            actor["runtime_env"] = {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}}
        options: dict[str, Any] = {"max_ongoing_requests": self.max_ongoing_requests, "ray_actor_options": actor}
        if self.autoscale is None:
            options["num_replicas"] = self.replicas
            return options
        config: dict[str, Any] = {"min_replicas": self.autoscale[0], "max_replicas": self.autoscale[1],
                                  "initial_replicas": max(self.autoscale[0], 1)}
        if self.target_ongoing_requests is not None:
            config["target_ongoing_requests"] = self.target_ongoing_requests
        if self.autoscale_delays is not None:
            config["upscale_delay_s"], config["downscale_delay_s"] = self.autoscale_delays
            config["metrics_interval_s"] = min(1.0, *self.autoscale_delays) or 1.0
            config["look_back_period_s"] = max(2.0, min(self.autoscale_delays))
        options["autoscaling_config"] = config
        return options


class InferdReplica:
    """One replica: a whole inferd core, models loaded before Serve routes to it."""

    async def __init__(self, settings: ServerSettings,  # type: ignore[misc]  # Serve awaits it
                       metrics_interval: float = 0) -> None:
        settings = await asyncio.to_thread(mirror_remote, settings)  # each node keeps its own cache
        self._settings = settings
        self.core = build_core(settings)
        await self.core.control.load_at_start(("*",))
        self.core.data.set_ready(True)
        self._grpc = {rpc: method for service in SERVICES for rpc, method in service(self.core).methods().items()}
        self._metrics: asyncio.Task[None] | None = None
        if metrics_interval and self.core.metrics is not None:  # this replica's series in Ray's metrics
            bridge = RayMetricsBridge(self.core.metrics.registry)
            self._metrics = asyncio.get_running_loop().create_task(bridge.run(metrics_interval))

    async def _rpc(self, name: str, request: Any, grpc_context: Any) -> Any:
        """One gRPC call from Serve's gRPC proxy (v2 or TF Serving): the transport's own method, its
        aborts turned into the status Serve's context carries back."""
        method, request_type = self._grpc[name]
        try:
            return await method(request, cast(Any, _ServeContext(grpc_context)))
        except _Aborted:  # the status is set; the proxy sends it, and clients drop this empty body
            return getattr(sys.modules[request_type.__module__], name + "Response", request_type)()

    def __serve_build_asgi_app__(self) -> Any:  # Serve calls this once the constructor finished
        return build_http_app(self.core, self._settings)

    async def check_health(self) -> None:
        """Serve's health check: a replica whose core is not ready is replaced."""
        if not self.core.data.ready():
            raise RuntimeError("inferd core is not ready")

    async def __del__(self) -> None:
        if self._metrics is not None:
            self._metrics.cancel()
        self.core.data.start_draining()
        await self.core.control.close(self._settings.drain_timeout)


class _Aborted(Exception):
    pass


class _ServeContext:
    """What inferd's gRPC methods ask of their context, answered by Serve's RayServegRPCContext."""

    def __init__(self, context: Any) -> None:
        self._context = context

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._context.set_code(code)
        self._context.set_details(details)
        raise _Aborted(details)

    def cancelled(self) -> bool:
        return False

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()


def _rpc_method(name: str) -> Any:
    async def call(self: InferdReplica, request: Any, grpc_context: Any) -> Any:
        return await self._rpc(name, request, grpc_context)

    call.__name__ = call.__qualname__ = name
    return call


for _service in SERVICES:  # Serve's gRPC proxy calls the replica method named as the RPC
    for _name in _service.RPCS:
        setattr(InferdReplica, _name, _rpc_method(_name))


def _add_service(name: str, rpcs: dict[str, tuple[str, Any]], server: Any) -> None:
    """One service's method names and request messages on Serve's gRPC proxy (which replaces
    the handlers with its own routing to the replicas; the handlers are never called)."""
    handlers = {
        rpc: grpc.unary_unary_rpc_method_handler(_never, request_deserializer=request.FromString,
                                                 response_serializer=lambda message: message.SerializeToString())
        for rpc, (_, request) in rpcs.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))


def _never(request: Any, context: Any) -> Any:
    raise NotImplementedError("Serve's gRPC proxy routes this call to a replica")


def add_kserve_v2_to_server(servicer: Any, server: Any) -> None:
    """Serve's ``grpc_servicer_functions`` entry for KServe v2 (``inference.GRPCInferenceService``)."""
    _add_service(KServeV2Servicer.name, KServeV2Servicer.RPCS, server)


def add_tfserving_to_server(servicer: Any, server: Any) -> None:
    """Serve's ``grpc_servicer_functions`` entry for TF Serving's PredictionService and ModelService."""
    for service in (PredictionServicer, ModelServicer):
        _add_service(service.name, service.RPCS, server)


def application(settings: ServerSettings, options: RayOptions) -> Any:
    """The Serve application: InferdReplica behind ``serve.ingress``, scaled as ``options`` say."""
    ingress = serve.ingress()(InferdReplica)
    return serve.deployment(name="InferdReplica", **options.deployment_options())(ingress).bind(
        settings, options.metrics_interval)


def run(settings: ServerSettings, options: RayOptions) -> int:
    """Connect to the cluster, start Serve's proxy on --host/--http-port, deploy, wait for
    SIGTERM/SIGINT, then delete the application (and Serve, when nothing else runs on it)."""
    import ray

    ray.init(address=options.address, log_to_driver=False)
    grpc_options = ({"port": settings.grpc_port, "grpc_servicer_functions": SERVICER_FUNCTIONS}
                    if settings.grpc_port else None)
    serve.start(proxy_location=options.proxy_location,
                http_options={"host": settings.host, "port": settings.http_port}, grpc_options=grpc_options)
    where = f"http://{settings.host}:{settings.http_port}" + (
        f", grpc://{settings.host}:{settings.grpc_port}" if settings.grpc_port else "")
    settings = replace(settings, http_port=0, grpc_port=0)  # the replicas listen on nothing themselves
    serve.run(application(settings, options), name=APP_NAME, route_prefix="/")
    scale = (f"autoscale {options.autoscale[0]}:{options.autoscale[1]}" if options.autoscale
             else f"{options.replicas} replicas")
    print(f"inferd ready: {where} (ray serve, {scale})", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("deleting the Serve application %s", APP_NAME)
    serve.delete(APP_NAME)
    if not serve.status().applications:
        serve.shutdown()  # type: ignore[no-untyped-call,unused-ignore]
    ray.shutdown()  # type: ignore[no-untyped-call,unused-ignore]
    return 0

