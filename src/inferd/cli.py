"""``inferd serve | tfserving | bench``: arguments -> settings -> server."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from inferd import __version__
from inferd.allocator import DEFAULT_KEEP, SMALLEST_KEEP, keep_freed_memory
from inferd.config import (
    BATCH_WAITS,
    GRPC_RESTRICTION_PREFIX,
    MODEL_CONTROL_MODES,
    RATE_LIMIT_MODES,
    Listener,
    ResourceCount,
    ServerSettings,
    parse_restrictions,
)
from inferd.errors import ConfigError
from inferd.observability.tracing import parse_level

_TRACE_SETTINGS = {"level": "trace_level", "rate": "trace_rate", "count": "trace_count", "mode": "",
                   "file": "trace_file", "log-frequency": "trace_log_frequency", "log_frequency": "trace_log_frequency"}


def _trace_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``--trace-config [triton,]SETTING=VALUE`` items (and Triton's older ``--trace-file`` ...
    flags, which they override) as ServerSettings' trace fields."""
    items = [f"{flag}={value}" for flag in ("file", "level", "rate", "count", "log-frequency")
             for value in getattr(args, f"trace_{flag.replace('-', '_')}")]
    items += args.trace_config
    levels: list[str] = []
    found: dict[str, Any] = {}
    for item in items:
        head, comma, rest = item.partition(",")
        mode, setting = (head, rest) if comma and "=" not in head else ("", item)
        key, equals, value = setting.partition("=")
        if mode and mode.lower() not in ("triton", "opentelemetry"):
            raise ConfigError(f"--trace-config {item}: the mode before ',' must be triton, got {mode!r}")
        if mode.lower() == "opentelemetry" or (key == "mode" and value.lower() != "triton"):
            raise ConfigError(f"--trace-config {item}: inferd writes Triton's own trace file (mode triton); "
                              "OpenTelemetry export is not supported")
        if not equals or not value or key not in _TRACE_SETTINGS:
            raise ConfigError(f"--trace-config {item}: expected [triton,]SETTING=VALUE with SETTING one of "
                              "level, rate, count, mode, file, log-frequency")
        field = _TRACE_SETTINGS[key]
        if key == "level":
            levels.append(value)
        elif key == "file":
            found[field] = value
        elif field:
            try:
                found[field] = int(value)
            except ValueError:
                raise ConfigError(f"--trace-config {item}: {key} must be an integer, got {value!r}") from None
    if levels:
        off = any(level.lower() in ("off", "false") for level in levels)
        # Triton's spellings: on/true/min/max are TIMESTAMPS; OFF anywhere turns tracing off
        named = ["TIMESTAMPS" if level.lower() in ("on", "true", "min", "max") else level.upper()
                 for level in levels if level.lower() not in ("off", "false")]
        try:
            found["trace_level"] = () if off else parse_level(named)
        except ValueError as exc:
            raise ConfigError(f"--trace-config level: {exc}") from None
    return found


def _true_or_false(text: str) -> bool:
    """``--flag=true`` as Triton's command line takes it (``--flag`` alone is true)."""
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    number = text.strip().lower().removesuffix("ib").removesuffix("b")
    if number and number[-1] in units:
        size, amount = int(float(number[:-1]) * units[number[-1]]), float(number[:-1])
    else:
        size = amount = int(number)
    if amount and not size:  # where 0 means "no limit", a tiny size must not become one
        raise argparse.ArgumentTypeError(f"{text!r} is less than one byte")
    return size


def _kept_size(text: str) -> int:
    """--keep-freed-memory: 0 (glibc's own thresholds) or at least 1 MiB."""
    size = _size(text)
    if size != 0 and size < SMALLEST_KEEP:
        raise argparse.ArgumentTypeError(f"{text!r}: 0, or at least 1MiB (smaller thresholds would hand "
                                         "more memory back to the system, not less)")
    return size


def _pair(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> tuple[Any, Any]:
        low, sep, high = text.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected two numbers as A:B, got {text!r}")
        return kind(low), kind(high)

    return parse


def _rate_limit_resource(text: str) -> ResourceCount:
    """--rate-limit-resource NAME:COUNT[:DEVICE], as Triton's command line takes it."""
    parts = text.split(":")
    expected = f"expected <resource_name>:<count> or <resource_name>:<count>:<device>, got {text!r}"
    if len(parts) not in (2, 3) or not parts[0]:
        raise argparse.ArgumentTypeError(expected)
    try:
        count, device = int(parts[1]), int(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{expected} (count and device are integers)") from None
    if count < 0 or (device is not None and device < 0):
        raise argparse.ArgumentTypeError(f"{expected} (count and device are 0 or more)")
    return ResourceCount(parts[0], count, device)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help line ends with its default (when it has one worth showing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action) or ""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferd", description="Serve ONNX, PyTorch and "
                                     "TensorFlow models over KServe v2, TF Serving and TorchServe.")
    parser.add_argument("--version", action="version", version=f"inferd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{serve,tfserving,torchserve,bench}")
    serve = commands.add_parser("serve", help="serve a model repository", formatter_class=_Help,
                                description="Serve a model repository over KServe v2 (HTTP and gRPC), "
                                "TF Serving and TorchServe's APIs.")
    serve.add_argument("model_repository", nargs="?",
                       help="folder of models: <model>/<version>/<artifact>, or one model's folder; or "
                            "s3://bucket/prefix (gs://, az://: extras inferd[s3|gcs|azure]), mirrored into "
                            "--repository-cache")
    serve.add_argument("--model-repository", dest="model_repository_flag", default=None, metavar="DIR",
                       help="the same as MODEL_REPOSITORY (Triton's spelling)")
    serve.add_argument("--repository-cache", type=Path, default=None, metavar="DIR",
                       help="where a remote repository is mirrored (default: $INFERD_CACHE_DIR or "
                            "~/.cache/inferd/repositories); unchanged files are not downloaded again")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--http-port", type=int, default=8000, help="HTTP port; 0 disables HTTP")
    serve.add_argument("--grpc-port", type=int, default=8001, help="gRPC port; 0 disables gRPC")
    serve.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                       help="also serve /metrics on this port (Triton's 8002); it is on the HTTP port anyway")
    serve.add_argument("--grpc-server", choices=("inferd", "grpcio"), default="inferd",
                       help="inferd: HTTP/2 on the event loop (fast); grpcio: grpcio's threaded server "
                            "(takes every grpc channel argument)")
    serve.add_argument("--model-control", "--model-control-mode", type=str.lower, choices=MODEL_CONTROL_MODES,
                       default="none",
                       help="none: the repository is read once; poll: rescanned every --poll-interval; "
                       "explicit: models load and unload through the API")
    serve.add_argument("--poll-interval", "--repository-poll-secs", type=float, default=15.0,
                       help="seconds between repository scans with --model-control poll")
    serve.add_argument("--load-model", action="append", default=[], metavar="NAME",
                       help="with --model-control explicit: load this model at start (repeat; * = all)")
    serve.add_argument("--model-load-thread-count", type=int, default=4, metavar="N",
                       help="model versions built at once, at start, in a poll and through the API "
                            "(Triton's flag); a load past N waits for a free turn")
    serve.add_argument("--auth-token", default=os.environ.get("INFERD_AUTH_TOKEN"),
                       help="bearer token for model control (default: $INFERD_AUTH_TOKEN)")
    serve.add_argument("--auth-inference", action="store_true",
                       help="require the token for inference and metadata too")
    serve.add_argument("--allow-client-shm", nargs="?", const=True, default=False, type=_true_or_false,
                       metavar="true|false", help="let clients register system shared-memory regions and name them "
                       "for inputs and outputs (Triton's extension; off: a client could make the server read and "
                       "write any shared-memory object it may open)")
    serve.add_argument("--drain-timeout", "--exit-timeout-secs", type=float, default=30.0,
                       help="seconds SIGTERM waits for requests in flight before exiting")
    serve.add_argument("--max-body-size", type=_size, default="64MiB",
                       help="largest request body (k/M/GiB suffixes); larger gets 413")
    serve.add_argument("--max-inflight-size", type=_size, default="512MiB",
                       help="request bytes held in memory at once over all clients; "
                            "over it a request gets 503 / RESOURCE_EXHAUSTED")
    serve.add_argument("--max-connections", type=int, default=1000,
                       help="open HTTP connections, and gRPC calls at once")
    serve.add_argument("--header-timeout", type=float, default=10.0,
                       help="seconds a request's line and headers may take to arrive (408 after)")
    serve.add_argument("--body-timeout", type=float, default=60.0,
                       help="seconds a request's body may take to arrive (408 after)")
    serve.add_argument("--large-body-rate", type=_size, default="256MiB",
                       help="bytes per second that bodies over 1 MiB are read at, all connections together "
                            "(per front-end process; 0: no limit)")
    serve.add_argument("--model-store", type=Path, default=None,
                       help="folder of TorchServe .mar archives (TorchServe's flag)")
    serve.add_argument("--models", nargs="*", default=[],
                       help="archives to serve at start: all, or NAME=FILE.mar / FILE.mar ...")
    serve.add_argument("--model-name", default=None,
                       help="serve a single model's folder (model.onnx or 1/model.onnx at the top, as "
                       "KServe's storage initializer leaves /mnt/models) under this name")
    serve.add_argument("--cache-size", type=_size, default=0,
                       help="bytes of the response cache, e.g. 256MiB; models with [response_cache] enable = "
                       "true answer identical requests from it (default 0: no cache)")
    serve.add_argument("--server-name", "--id", default="inferd",
                       help="the name /v2 server metadata gives (Triton's clients may expect 'triton')")
    serve.add_argument("--batch-wait", type=str.lower, choices=BATCH_WAITS, default="work-conserving",
                       help="when a dynamic batcher sends a batch short of a preferred size (or max_batch_size): "
                            "work-conserving (default): at once while every instance of the model is idle, so "
                            "a lone request never waits (max_queue_delay holds a free instance back only while "
                            "others are busy); delay: as Triton, only once its oldest request has waited the "
                            "model's max_queue_delay, idle instances or not (fuller batches, more latency). "
                            "A model's own batch_wait (config.toml) or inferd.batch_wait parameter "
                            "(config.pbtxt) overrides it")
    serve.add_argument("--rate-limit", type=str.lower, choices=RATE_LIMIT_MODES, default="off",
                       help="execution_count: an instance of a model whose instance_group has a rate_limiter "
                            "executes only while it holds the resources listed there (across all models; "
                            "priority picks who waits least); off: rate_limiter sections change nothing")
    serve.add_argument("--rate-limit-resource", type=_rate_limit_resource, action="append", default=[],
                       metavar="NAME:COUNT[:DEVICE]",
                       help="how many of a rate limiter resource the server has, on DEVICE or on every device "
                            "(a global resource: the device is ignored); repeat per resource. Without it each "
                            "resource has the largest count any instance asks for; with it, a resource it leaves "
                            "out has none")
    serve.add_argument("--workers", type=int, default=0, metavar="N",
                       help="N front-end processes serve the HTTP and gRPC ports (SO_REUSEPORT) and hand "
                            "requests to this process, which owns the models and their batch queues; "
                            "0 (default): one process does both")
    serve.add_argument("--keep-freed-memory", type=_kept_size, default="64MiB", metavar="SIZE",
                       help="freed memory each of the C allocator's heaps keeps for the next request instead "
                            "of handing it back to the system (glibc; large bodies and tensors then need no "
                            "page faults); 0: glibc's own thresholds")
    ray = serve.add_argument_group("Ray Serve (extra inferd[ray]): one inferd core per replica")
    ray.add_argument("--ray", default=None, metavar="ADDRESS",
                     help="deploy on a running Ray cluster (auto, or the head's host:port) behind Serve's "
                          "HTTP proxy on --host/--http-port")
    scale = ray.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=1, help="fixed number of replicas (default 1)")
    scale.add_argument("--autoscale", type=_pair(int), default=None, metavar="MIN:MAX",
                       help="let Serve scale between MIN and MAX replicas")
    ray.add_argument("--target-ongoing-requests", type=float, default=None, metavar="T",
                     help="with --autoscale: requests in flight per replica the autoscaler aims at")
    ray.add_argument("--autoscale-delays", type=_pair(float), default=None, metavar="UP:DOWN",
                     help="with --autoscale: seconds before scaling up and down (default Serve's 30:600)")
    ray.add_argument("--ray-proxy", choices=["EveryNode", "HeadOnly"], default="EveryNode",
                     help="where Serve runs its proxy: HeadOnly when the nodes share one address")
    ray.add_argument("--ray-num-cpus", type=float, default=1.0, help="logical CPUs each replica reserves")
    ray.add_argument("--ray-serve-thread", action="store_true",
                     help="run the core on Serve's separate user-code thread (Serve's default; slower)")
    ray.add_argument("--ray-metrics-interval", type=float, default=2.0, metavar="SECONDS",
                     help="copy each replica's inferd_* metrics into Ray's metrics (ray_inferd_*, tagged "
                          "with the replica) this often; 0: not at all")
    serve.add_argument("--log-verbose", type=int, default=0, metavar="N",
                       help="Triton's: N > 0 is --log-level debug")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="debug also shows the frameworks' own logs (TensorFlow, onnxruntime, torch)")
    operability = serve.add_argument_group("operability")
    operability.add_argument("--access-log", action="store_true", help="log one line per HTTP request")
    operability.add_argument("--log-format", choices=["text", "json"], default="text",
                             help="json: every log line one JSON object (time, level, logger, message, traceback)")
    operability.add_argument("--strict-readiness", nargs="?", const=True, default=False, type=_true_or_false,
                             metavar="true|false",
                             help="ready only while every model version is ready (default: once every model was tried)")
    operability.add_argument("--exit-on-error", nargs="?", const=True, default=False, type=_true_or_false,
                             metavar="true|false", help="exit 1 when a model fails to load at start")
    operability.add_argument("--strict-model-config", "--disable-auto-complete-config", nargs="?", const=True,
                             default=False, type=_true_or_false, metavar="true|false",
                             help="accepted as Triton's flags are written; inferd completes a configuration from "
                                  "the model (its tensors) either way")
    restrict = serve.add_argument_group("Triton's front-end options: restricted API groups (health, metadata, "
                                        "inference, shared-memory, model-config, model-repository, statistics, "
                                        "trace, logging) and forwarded headers")
    restrict.add_argument("--http-restricted-api", action="append", default=[], metavar="API[,API...]:KEY=VALUE",
                          help="these HTTP APIs answer only requests with header KEY: VALUE (else 403)")
    restrict.add_argument("--grpc-restricted-protocol", action="append", default=[],
                          metavar="API[,API...]:KEY=VALUE",
                          help="these gRPC methods answer only calls with metadata triton-grpc-protocol-KEY: VALUE "
                               "(else UNAVAILABLE)")
    restrict.add_argument("--http-header-forward-pattern", default="", metavar="REGEX",
                          help="HTTP headers whose names match (case-insensitive; (?-i) first: sensitive) reach "
                               "the model as request parameters of inference requests")
    restrict.add_argument("--grpc-header-forward-pattern", default="", metavar="REGEX",
                          help="the same for gRPC metadata (ModelInfer and ModelStreamInfer)")
    tracing = serve.add_argument_group("tracing (Triton's trace extension, triton mode)")
    tracing.add_argument("--trace-config", action="append", default=[], metavar="[triton,]SETTING=VALUE",
                         help="level=OFF|TIMESTAMPS, rate=N (every N-th request; default 1000), count=N "
                              "(-1: no end), triton,file=PATH, triton,log-frequency=N (traces per rolled "
                              "file PATH.<n>; 0: PATH, written at the stop); repeatable")
    for flag, what in (("--trace-file", "PATH"), ("--trace-level", "LEVEL"), ("--trace-rate", "N"),
                       ("--trace-count", "N"), ("--trace-log-frequency", "N")):
        tracing.add_argument(flag, action="append", default=[], metavar=what,
                             help=f"Triton's older form of --trace-config {flag[8:]}={what}")
    commands.add_parser("torchserve", add_help=False,
                        help="serve with torchserve's flags and config.properties (inferd torchserve --help)")
    commands.add_parser("tfserving", add_help=False,
                        help="serve with tensorflow_model_server's flags and files (inferd tfserving --help)")
    bench = commands.add_parser("bench", help="load a running server and report latency and throughput",
                                formatter_class=_Help, description="A closed-loop load generator for "
                                "KServe v2 servers (inferd, Triton), after Triton's perf_analyzer.")
    bench.add_argument("-m", "--model", required=True, help="the model to load (required)")
    bench.add_argument("--url", default="http://127.0.0.1:8000",
                       help="the server's HTTP address; host:port is taken as http://host:port")
    bench.add_argument("--model-version", default=None, help="a version of the model (default: the server's)")
    bench.add_argument("--concurrency", default="1,8,64", help="requests kept in flight, comma-separated")
    bench.add_argument("--duration", type=float, default=10.0, help="seconds measured per concurrency")
    bench.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement")
    bench.add_argument("--binary", action="store_true",
                       help="v2 binary bodies instead of JSON (with --grpc: raw_input_contents)")
    bench.add_argument("--grpc", default=None, metavar="HOST:PORT",
                       help="send ModelInfer over gRPC to this address (metadata still from --url)")
    bench.add_argument("--batch", type=int, default=1, help="rows per request for batching models")
    bench.add_argument("--input-file", action="append", default=[], metavar="NAME=FILE",
                       help="a BYTES input's content from a file (e.g. image=kitten.jpg); repeatable")
    bench.add_argument("--classification", type=int, default=0, metavar="K",
                       help="ask each output for its top K classes (Triton's classification extension)")
    bench.add_argument("--processes", type=int, default=1, help="load-generating processes")
    bench.add_argument("--json", type=Path, default=None, dest="json_out", metavar="FILE",
                       help="also write the results as JSON to this file")
    bench.add_argument("--plot", type=Path, default=None, dest="plot_out", metavar="FILE",
                       help="latency vs throughput PNG (needs matplotlib: inferd[bench])")
    return parser


def _bench(args: argparse.Namespace) -> int:
    from inferd.bench.runner import BenchSettings, main

    return main(BenchSettings(
        model=args.model, url=args.url, version=args.model_version,
        concurrency=tuple(int(c) for c in args.concurrency.split(",")), duration=args.duration,
        warmup=args.warmup, binary=args.binary, batch=args.batch, processes=args.processes, grpc_url=args.grpc,
        json_out=args.json_out, plot_out=args.plot_out, input_files=_input_files(args.input_file),
        classification=args.classification))


def _input_files(items: list[str]) -> tuple[tuple[str, Path], ...]:
    pairs = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"inferd bench: --input-file takes NAME=FILE, got {item!r}")
        pairs.append((name, Path(path)))
    return tuple(pairs)


def _ray(args: argparse.Namespace, settings: ServerSettings) -> int:
    """``--ray``: the replicas read the repository (each node mirrors a remote one itself)."""
    try:
        from inferd.integrations.ray import RayOptions, run
    except ImportError as exc:
        print(f"inferd: --ray needs Ray Serve: pip install 'inferd[ray]' ({exc})", file=sys.stderr)
        return 2
    try:
        options = RayOptions(address=args.ray, replicas=args.replicas, autoscale=args.autoscale,
                             target_ongoing_requests=args.target_ongoing_requests,
                             autoscale_delays=args.autoscale_delays, proxy_location=args.ray_proxy,
                             num_cpus=args.ray_num_cpus, serve_thread=args.ray_serve_thread,
                             metrics_interval=args.ray_metrics_interval)
    except ConfigError as exc:
        print(f"inferd: {exc.message}", file=sys.stderr)
        return 2
    if settings.model_repository is not None:
        settings = replace(settings, model_repository=settings.model_repository.resolve())
    return run(settings, options)


def _tfserving(argv: list[str]) -> int:
    from inferd.compat import tfserving
    from inferd.observability.logging import configure

    args = tfserving.parser().parse_args(argv)
    if args.version:  # tensorflow_model_server --version's first line
        print(f"TensorFlow ModelServer: inferd {__version__}")
        return 0
    configure(args.log_level)
    try:
        settings = tfserving.settings_from_flags(args)
    except ConfigError as exc:
        print(f"inferd tfserving: {exc.message}", file=sys.stderr)
        return 2
    return _run(settings, {"HTTP": "--rest_api_port", "gRPC": "--port"}, "inferd tfserving")


def _torchserve(argv: list[str]) -> int:
    from inferd.compat import torchserve, torchserve_logs
    from inferd.observability.logging import configure

    args = torchserve.parser().parse_args(argv)
    configure(args.log_level)
    if args.stop:
        return _stop_torchserve(torchserve.PID_FILE, wait=args.foreground)
    try:
        started = torchserve.settings_from_flags(args)
    except ConfigError as exc:
        print(f"inferd torchserve: {exc.message}", file=sys.stderr)
        return 2
    if args.start and not args.foreground:
        return _start_in_background(argv, torchserve.PID_FILE)
    torchserve_logs.install(dict(os.environ), Path.cwd(), started.settings.torchserve.metrics_mode,
                            started.system_metrics)
    os.environ.update(started.handler_environ)  # the model processes inherit them
    if started.key_file is not None:
        print(f"inferd torchserve: token authorization is on; keys in {started.key_file} "
              "(--disable-token-auth turns it off)", flush=True)
    return _run(started.settings, {}, "inferd torchserve")


def _run(settings: ServerSettings, flags: dict[str, str], prog: str, keep_freed: int = DEFAULT_KEEP) -> int:
    """Serve; a port that cannot be opened is one line naming it and the flag that sets it."""
    from inferd.server import CannotListen, run

    if keep_freed_memory(keep_freed):  # before the model processes and workers start: they inherit it
        logging.getLogger("inferd").debug("glibc keeps up to %d bytes freed per heap (--keep-freed-memory)",
                                          keep_freed)
    try:
        code = run(settings)
    except CannotListen as exc:
        flag = flags.get(exc.what, "its address in config.properties" if prog.endswith("torchserve") else "")
        hint = f"; choose another port with {flag}" if flag.startswith("--") else f"; change {flag}" if flag else ""
        print(f"{prog}: cannot listen for {exc.what} on {exc.host}:{exc.port}: {exc.reason}{hint}", file=sys.stderr)
        return 1
    return code


def _start_in_background(argv: list[str], pid_file: Path) -> int:
    """``torchserve --start`` without ``--foreground``: as TorchServe's, the server runs on in a
    process of its own (printing to this command's output), its pid in the pid file at once (a
    ``--stop`` right after finds it), and the command returns."""
    server = subprocess.Popen([sys.executable, "-m", "inferd", "torchserve", *argv, "--foreground"],
                              stdin=subprocess.DEVNULL)
    pid_file.write_text(str(server.pid))
    return 0


def _stop_torchserve(pid_file: Path, wait: bool = False) -> int:
    """``torchserve --stop``: signal the server whose pid file this machine holds; with
    ``--foreground``, wait (up to 60 s) until it has exited, as TorchServe's does."""
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        print("TorchServe is not currently running.", flush=True)
        return 1
    if wait and not _exited(pid, timeout_s=60.0):
        print("Stopping TorchServe took too long.", flush=True)
        return 1
    print("TorchServe has stopped.", flush=True)
    return 0


def _exited(pid: int, timeout_s: float) -> bool:
    """Whether ``pid`` is gone (or a zombie its parent has not reaped yet) within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        except (OSError, IndexError):
            pass
        time.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tfserving"]:
        return _tfserving(argv[1:])
    if argv[:1] == ["torchserve"]:
        return _torchserve(argv[1:])
    if argv[:1] == ["_frontend"]:  # a front-end worker of `inferd serve --workers N`, started by the server
        from inferd.server import run_worker

        run_worker(Path(argv[1]), Path(argv[2]))
        return 0
    args = _parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    from inferd.observability.logging import configure

    configure("debug" if args.log_verbose > 0 else args.log_level, args.log_format)
    try:
        repository, remote = args.model_repository, None
        if args.model_repository_flag is not None:  # Triton's --model-repository=DIR
            if repository is not None and repository != args.model_repository_flag:
                raise ConfigError(f"the model repository is given twice: {repository} and --model-repository "
                                  f"{args.model_repository_flag}")
            repository = args.model_repository_flag
        if repository is not None and "://" in repository:
            repository, remote = None, repository
        settings = ServerSettings(
            model_repository=Path(repository) if repository is not None else None, remote_repository=remote,
            repository_cache=args.repository_cache, host=args.host, http_port=args.http_port,
            grpc_port=args.grpc_port, grpc_server=args.grpc_server, model_control=args.model_control,
            poll_interval=args.poll_interval, auth_token=args.auth_token, auth_inference=args.auth_inference,
            drain_timeout=args.drain_timeout, max_body_bytes=args.max_body_size,
            max_inflight_bytes=args.max_inflight_size, max_connections=args.max_connections,
            header_timeout=args.header_timeout, body_timeout=args.body_timeout,
            large_body_rate=args.large_body_rate,
            log_level=args.log_level, model_store=args.model_store, models=tuple(args.models),
            load_models=tuple(args.load_model), model_load_threads=args.model_load_thread_count,
            server_name=args.server_name,
            model_name=args.model_name, access_log=args.access_log, log_format=args.log_format,
            strict_readiness=args.strict_readiness, exit_on_error=args.exit_on_error, workers=args.workers,
            cache_size=args.cache_size, allow_client_shm=args.allow_client_shm, **_trace_settings(args),
            batch_wait=args.batch_wait, rate_limit=args.rate_limit,
            rate_limit_resources=tuple(args.rate_limit_resource),
            http_restrictions=parse_restrictions(args.http_restricted_api, "--http-restricted-api", "api"),
            grpc_restrictions=parse_restrictions(args.grpc_restricted_protocol, "--grpc-restricted-protocol",
                                                 "protocol", GRPC_RESTRICTION_PREFIX),
            http_header_forward_pattern=args.http_header_forward_pattern,
            grpc_header_forward_pattern=args.grpc_header_forward_pattern,
            listeners=(Listener(args.host, args.metrics_port, ("kserve_metrics",)),) if args.metrics_port else ())
    except ConfigError as exc:
        print(f"inferd: {exc.message}", file=sys.stderr)
        return 2
    for what, folder in (("model repository", settings.model_repository), ("model store", settings.model_store)):
        if folder is not None and not folder.is_dir():
            print(f"inferd: {what} {folder} is not a folder", file=sys.stderr)
            return 2
    if args.ray is not None:
        return _ray(args, settings)
    from inferd.server import mirror_remote

    try:
        settings = mirror_remote(settings)
    except ConfigError as exc:
        print(f"inferd: {exc.message}", file=sys.stderr)
        return 2
    return _run(settings, {"HTTP": "--http-port", "gRPC": "--grpc-port"}, "inferd", args.keep_freed_memory)


if __name__ == "__main__":
    sys.exit(main())
