"""A v2 inference request through the whole server in process, without sockets: the HTTP app's
dispatch (route, decode, data plane, dynamic batcher, TorchScript `tiny` or `mlp`, encode), so that
two builds can be compared by their CPU per request where a wrk run's 3-7 % hides in its noise.

    taskset -c 0 python benchmarks/request_path.py [--model tiny] [--body json|binary]
        [--concurrency 1,64] [--requests 20000] [--rounds 5] [--tree PATH]
        (--tree: another checkout whose src/ goes first on the path: compare two builds)

Each round runs the stated number of requests (c concurrent tasks, each awaiting its answer before
sending the next), then reports process CPU µs per request; the report is each case's median and
minimum over the rounds. The model runs as the server would run it (inline or on its thread, as the
pool decides), so the figure includes the model; compare builds, not models.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny", choices=("tiny", "mlp"))
    parser.add_argument("--body", default="json,binary")
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tree", type=Path, default=HERE.parent)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree / "src"))
    sys.path.insert(1, str(HERE))
    import uvloop
    from common import bodies, make_mlp_models, write_model

    from inferd.config import ServerSettings
    from inferd.server import build_core, build_http_app
    from inferd.transport.http.app import HttpRequest

    scratch = Path(tempfile.mkdtemp(prefix="inferd-path-"))
    make_mlp_models(scratch / "artifacts")
    dim, out = {"tiny": (16, 4), "mlp": (512, 10)}[args.model]
    write_model(scratch / "repo", args.model, scratch / "artifacts" / f"{args.model}.pt", dim, out, batching=True)
    json_body, binary_body, header_length = bodies(scratch / "bodies", args.model, dim)
    kinds = {"json": (json_body.read_bytes(), {"content-type": "application/json"}),
             "binary": (binary_body.read_bytes(), {"content-type": "application/octet-stream",
                                                   "inference-header-content-length": str(header_length)})}

    async def run() -> dict[str, list[float]]:
        core = build_core(ServerSettings(model_repository=scratch / "repo"))
        await core.control.load_at_start(("*",))
        core.data.set_ready(True)
        app = build_http_app(core, ServerSettings(model_repository=scratch / "repo"))
        path = f"/v2/models/{args.model}/infer"

        async def client(kind: str, count: int) -> None:
            body, headers = kinds[kind]
            for _ in range(count):
                response = await app.dispatch(HttpRequest("POST", path, "", dict(headers), bytearray(body),
                                                          {"model": args.model}))
                if response.status != 200:
                    raise RuntimeError(f"{response.status}: {response.body[:200]!r}")

        results: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for kind in args.body.split(","):
                for concurrency in map(int, args.concurrency.split(",")):
                    await asyncio.gather(*(client(kind, 50) for _ in range(concurrency)))  # warm
                    gc.collect()
                    cpu = time.process_time()
                    each = args.requests // concurrency
                    await asyncio.gather(*(client(kind, each) for _ in range(concurrency)))
                    spent = time.process_time() - cpu
                    results.setdefault(f"{kind} c={concurrency}", []).append(spent / (each * concurrency) * 1e6)
        return results

    results = uvloop.run(run())
    report = {case: {"median_us": statistics.median(v), "min_us": min(v)} for case, v in results.items()}
    for case, row in report.items():
        print(f"{args.model} {case:16} CPU µs/request: median {row['median_us']:7.2f}  min {row['min_us']:7.2f}")
    print(json.dumps({"tree": str(args.tree), "model": args.model, "cases": report}))


if __name__ == "__main__":
    main()
