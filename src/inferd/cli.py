"""``inferd serve | tfserving | bench``: arguments -> settings -> server."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from inferd.config import MODEL_CONTROL_MODES, ServerSettings
from inferd.errors import ConfigError


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferd", description="Serve ONNX, PyTorch and "
                                     "TensorFlow models over KServe v2, TF Serving and TorchServe.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model repository")
    serve.add_argument("model_repository", nargs="?", type=Path,
                       help="folder of models: <model>/<version>/<artifact>")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--http-port", type=int, default=8000, help="0 disables HTTP")
    serve.add_argument("--grpc-port", type=int, default=8001, help="0 disables gRPC")
    serve.add_argument("--model-control", choices=MODEL_CONTROL_MODES, default="none")
    serve.add_argument("--poll-interval", type=float, default=15.0,
                       help="seconds between repository scans with --model-control poll")
    serve.add_argument("--load-model", action="append", default=[], metavar="NAME",
                       help="with --model-control explicit: load this model at start (repeat; * = all)")
    serve.add_argument("--auth-token", default=os.environ.get("INFERD_AUTH_TOKEN"),
                       help="bearer token for model control (default: $INFERD_AUTH_TOKEN)")
    serve.add_argument("--auth-inference", action="store_true",
                       help="require the token for inference and metadata too")
    serve.add_argument("--drain-timeout", type=float, default=30.0)
    serve.add_argument("--max-body-size", type=_size, default=64 * 1024**2,
                       help="largest request body, e.g. 64MiB (default); larger gets 413")
    serve.add_argument("--max-inflight-size", type=_size, default=512 * 1024**2,
                       help="request bytes held in memory at once over all clients (default 512MiB); "
                            "over it a request gets 503 / RESOURCE_EXHAUSTED")
    serve.add_argument("--max-connections", type=int, default=1000,
                       help="open HTTP connections, and gRPC calls at once (default 1000)")
    serve.add_argument("--header-timeout", type=float, default=10.0,
                       help="seconds a request's line and headers may take to arrive (408 after)")
    serve.add_argument("--body-timeout", type=float, default=60.0,
                       help="seconds a request's body may take to arrive (408 after)")
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
    serve.add_argument("--server-name", default="inferd",
                       help="the name /v2 server metadata gives (Triton's clients may expect 'triton')")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])
    commands.add_parser("torchserve", add_help=False,
                        help="serve with torchserve's flags and config.properties (inferd torchserve --help)")
    commands.add_parser("tfserving", add_help=False,
                        help="serve with tensorflow_model_server's flags and files (inferd tfserving --help)")
    bench = commands.add_parser("bench", help="load a running server and report latency and throughput")
    bench.add_argument("-m", "--model", required=True)
    bench.add_argument("--url", default="http://127.0.0.1:8000")
    bench.add_argument("--model-version", default=None)
    bench.add_argument("--concurrency", default="1,8,64", help="comma-separated, e.g. 1,8,64")
    bench.add_argument("--duration", type=float, default=10.0, help="seconds measured per concurrency")
    bench.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement")
    bench.add_argument("--binary", action="store_true",
                       help="v2 binary bodies instead of JSON (with --grpc: raw_input_contents)")
    bench.add_argument("--grpc", default=None, metavar="HOST:PORT",
                       help="send ModelInfer over gRPC to this address (metadata still from --url)")
    bench.add_argument("--batch", type=int, default=1, help="rows per request for batching models")
    bench.add_argument("--processes", type=int, default=1, help="load-generating processes")
    bench.add_argument("--json", type=Path, default=None, dest="json_out")
    bench.add_argument("--plot", type=Path, default=None, dest="plot_out", help="latency vs throughput PNG")
    return parser


def _bench(args: argparse.Namespace) -> int:
    from inferd.bench.runner import BenchSettings, main

    return main(BenchSettings(
        model=args.model, url=args.url, version=args.model_version,
        concurrency=tuple(int(c) for c in args.concurrency.split(",")), duration=args.duration,
        warmup=args.warmup, binary=args.binary, batch=args.batch, processes=args.processes, grpc_url=args.grpc,
        json_out=args.json_out, plot_out=args.plot_out))


def _tfserving(argv: list[str]) -> int:
    from inferd.compat import tfserving
    from inferd.observability.logging import configure

    args = tfserving.parser().parse_args(argv)
    configure(args.log_level)
    try:
        settings = tfserving.settings_from_flags(args)
    except ConfigError as exc:
        print(f"inferd tfserving: {exc.message}", file=sys.stderr)
        return 2
    from inferd.server import run

    run(settings)
    return 0


def _torchserve(argv: list[str]) -> int:
    from inferd.compat import torchserve
    from inferd.observability.logging import configure

    args = torchserve.parser().parse_args(argv)
    configure(args.log_level)
    if args.stop:
        return _stop_torchserve(torchserve.PID_FILE)
    try:
        started = torchserve.settings_from_flags(args)
    except ConfigError as exc:
        print(f"inferd torchserve: {exc.message}", file=sys.stderr)
        return 2
    if started.key_file is not None:
        print(f"inferd torchserve: token authorization is on; keys in {started.key_file} "
              "(--disable-token-auth turns it off)", flush=True)
    from inferd.server import run

    run(started.settings)
    return 0


def _stop_torchserve(pid_file: Path) -> int:
    """``torchserve --stop``: signal the server whose pid file this machine holds."""
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        print("TorchServe is not currently running.", flush=True)
        return 1
    print("TorchServe has stopped.", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tfserving"]:
        return _tfserving(argv[1:])
    if argv[:1] == ["torchserve"]:
        return _torchserve(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    from inferd.observability.logging import configure

    configure(args.log_level)
    try:
        settings = ServerSettings(
            model_repository=args.model_repository, host=args.host, http_port=args.http_port,
            grpc_port=args.grpc_port, model_control=args.model_control,
            poll_interval=args.poll_interval, auth_token=args.auth_token, auth_inference=args.auth_inference,
            drain_timeout=args.drain_timeout, max_body_bytes=args.max_body_size,
            max_inflight_bytes=args.max_inflight_size, max_connections=args.max_connections,
            header_timeout=args.header_timeout, body_timeout=args.body_timeout,
            log_level=args.log_level, model_store=args.model_store, models=tuple(args.models),
            load_models=tuple(args.load_model), server_name=args.server_name,
            model_name=args.model_name, cache_size=args.cache_size)
    except ConfigError as exc:
        print(f"inferd: {exc.message}", file=sys.stderr)
        return 2
    for what, folder in (("model repository", settings.model_repository), ("model store", settings.model_store)):
        if folder is not None and not folder.is_dir():
            print(f"inferd: {what} {folder} is not a folder", file=sys.stderr)
            return 2
    from inferd.server import run

    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
