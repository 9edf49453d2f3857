"""Python calls per v2 gRPC ModelInfer, counted in a real server: call counts do not depend on how
busy the machine is, so two builds can be compared where a timed run's few percent drown in noise.

    python benchmarks/grpc_calls.py [--model tiny] [--concurrency 1,64] [--tree PATH] [--top 0]

The server (`inferd serve` of --tree's src/, the model with dynamic batching, pinned to CPU 0) runs
under cProfile; h2load (CPU 1) sends N, then in a second server 3N, identical raw-content
ModelInfer calls on one connection, c at a time. Calls per request = (calls at 3N - at N) / 2N,
which leaves out start-up and shutdown. ``--top K`` lists the K functions that add the most calls
per request.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from common import CLIENT_CPU, HERE, SERVER_CPU, wait_ready, write_model

MODELS = Path(os.environ.get("MODEL_DIR", "/opt/anchors/models"))


def profile(tree: Path, repo: Path, model: str, concurrency: int, requests: int, out: Path) -> pstats.Stats:
    """The server's profile after ``requests`` calls at ``concurrency``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(tree / "src"))
    server = subprocess.Popen(["taskset", "-c", SERVER_CPU, sys.executable, "-m", "cProfile", "-o", str(out),
                               "-m", "inferd", "serve", str(repo), "--http-port", "18650", "--grpc-port", "18651",
                               "--log-level", "warning"],
                              env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready("http://127.0.0.1:18650/v2/health/ready", server)
        sys.path.insert(0, str(tree / "src"))
        from inferd.bench.grpc_load import request_bytes

        metadata = json.loads(urllib.request.urlopen(f"http://127.0.0.1:18650/v2/models/{model}", timeout=10).read())
        body = request_bytes(model, None, metadata, raw=True)
        message = out.with_suffix(".grpc")
        message.write_bytes(b"\0" + len(body).to_bytes(4, "big") + body)
        done = subprocess.run(["taskset", "-c", CLIENT_CPU, "h2load", "-n", str(requests), "-c", "1",
                               "-m", str(concurrency), "-d", str(message), "-H", "content-type: application/grpc",
                               "-H", "te: trailers",
                               "http://127.0.0.1:18651/inference.GRPCInferenceService/ModelInfer"],
                              capture_output=True, text=True, check=True)
        if f"{requests} succeeded" not in done.stdout:
            raise SystemExit(f"h2load: not every call succeeded:\n{done.stdout}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # a clean exit writes the profile
        server.wait(60)
    return pstats.Stats(str(out))


def per_function(stats: pstats.Stats) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for (file, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
        key = (file.split("src/")[-1], name)
        counts[key] = counts.get(key, 0) + row[1]
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny", choices=("tiny", "mlp"))
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--requests", type=int, default=5000, help="N: the first server's calls (the second's 3N)")
    parser.add_argument("--tree", type=Path, default=HERE.parent, help="the checkout whose src/ is served")
    parser.add_argument("--top", type=int, default=0)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="inferd-grpc-calls-"))
    dim, out = (512, 10) if args.model == "mlp" else (16, 4)
    name = f"{args.model}_b"
    write_model(scratch / "repo", name, MODELS / f"{args.model}.pt", dim, out, batching=True)
    for concurrency in map(int, args.concurrency.split(",")):
        few = profile(args.tree, scratch / "repo", name, concurrency, args.requests, scratch / "few.out")
        many = profile(args.tree, scratch / "repo", name, concurrency, 3 * args.requests, scratch / "many.out")
        calls = (many.total_calls - few.total_calls) / (2 * args.requests)  # type: ignore[attr-defined]
        print(f"{args.tree} {args.model} c={concurrency}: {calls:.1f} Python calls per request")
        if args.top:
            before, after = per_function(few), per_function(many)
            added = sorted(((after.get(k, 0) - before.get(k, 0)) / (2 * args.requests), k) for k in after)
            for value, (file, function) in reversed(added[-args.top:]):
                print(f"  {value:6.2f}  {function}  {file}")


if __name__ == "__main__":
    main()
