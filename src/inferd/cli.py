"""``inferd serve | bench``: arguments -> settings -> server."""

from __future__ import annotations

import argparse
import os
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
    serve.add_argument("--poll-interval", type=float, default=15.0)
    serve.add_argument("--auth-token", default=os.environ.get("INFERD_AUTH_TOKEN"))
    serve.add_argument("--drain-timeout", type=float, default=30.0)
    serve.add_argument("--max-body-size", type=_size, default=64 * 1024**2,
                       help="largest request body, e.g. 64MiB (default); larger gets 413")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from inferd.observability.logging import configure

    configure(args.log_level)
    try:
        settings = ServerSettings(
            model_repository=args.model_repository, host=args.host, http_port=args.http_port,
            grpc_port=args.grpc_port, model_control=args.model_control,
            poll_interval=args.poll_interval, auth_token=args.auth_token,
            drain_timeout=args.drain_timeout, max_body_bytes=args.max_body_size,
            log_level=args.log_level)
    except ConfigError as exc:
        print(f"inferd: {exc.message}", file=sys.stderr)
        return 2
    if settings.model_repository is not None and not settings.model_repository.is_dir():
        print(f"inferd: model repository {settings.model_repository} is not a folder",
              file=sys.stderr)
        return 2
    from inferd.server import run

    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
