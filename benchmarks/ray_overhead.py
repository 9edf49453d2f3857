"""Per-request cost of Ray Serve's proxy (issue 16): the tiny ONNX model (16 -> 4) of
examples/models at concurrency 1, `inferd bench` (keep-alive), against

  direct          inferd serve examples/models (v2 JSON over HTTP)
  direct-grpc     the same, v2 gRPC
  ray             inferd serve examples/models --ray ADDR (1 replica, core on the replica's loop),
                  through Serve's HTTP proxy
  ray-grpc        the same, through Serve's gRPC proxy
  ray-thread      --ray-serve-thread (Serve's default: user code on its own thread)
  ray-fast        a cluster started with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 but direct ingress off:
                  proxy -> replica over gRPC, the router on the proxy's main loop, no stderr logs
  ray-direct      RAY_SERVE_THROUGHPUT_OPTIMIZED=1 with its direct ingress: no proxy, the replica
                  serves HTTP itself on a port Serve allocates (pinned here to one free port)

Variants that need Serve's settings at cluster start get a one-node cluster of their own
(`ray start --head --block`, started per round). All variants are alternated over --rounds so
machine noise hits them alike. Needs the ray extra. Writes results/ray_overhead.json.

    python benchmarks/ray_overhead.py --rounds 2 --duration 10
    python benchmarks/ray_overhead.py --variants direct,ray,ray-fast,ray-direct
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import HERE, free_port

ROOT = HERE.parent
REPO = ROOT / "examples/models"
RAY = str(Path(sys.executable).with_name("ray"))
FAST = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
DIRECT = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}
# variant -> (inferd serve's extra arguments, the cluster's Serve settings (None: no cluster), gRPC load or not)
VARIANTS: dict[str, tuple[list[str], dict[str, str] | None, bool]] = {
    "direct": ([], None, False),
    "direct-grpc": ([], None, True),
    "ray": (["--ray", "ADDRESS"], {}, False),
    "ray-grpc": (["--ray", "ADDRESS"], {}, True),
    "ray-thread": (["--ray", "ADDRESS", "--ray-serve-thread"], {}, False),
    "ray-fast": (["--ray", "ADDRESS"], FAST, False),
    "ray-direct": (["--ray", "ADDRESS"], DIRECT, False),
}


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "inferd", "serve", str(REPO), *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("inferd ready"):
            return process
    raise RuntimeError(f"inferd {' '.join(args)} did not start:\n" + "".join(lines[-30:]))


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)


def bench(port: int, grpc_port: int | None, duration: float, env: dict[str, str]) -> dict[str, float]:
    through = ["--grpc", f"127.0.0.1:{grpc_port}"] if grpc_port else []
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", "inferd", "bench", "-m", "mlp_onnx", "--url", f"http://127.0.0.1:{port}",
                        *through, "--concurrency", "1", "--duration", str(duration), "--warmup", "2",
                        "--json", out.name], env=env, check=True, capture_output=True, cwd=ROOT)
        row = json.loads(Path(out.name).read_text())["rows"][0]
    return {k: row[k] for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "errors")}


@contextmanager
def cluster(env: dict[str, str]) -> Iterator[str]:
    """A one-node cluster whose processes (Serve's controller, proxy, replicas) see ``env``."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    port = free_port()
    head = subprocess.Popen([RAY, "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard", "false", "--temp-dir", temp, "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(15)  # the head's daemons
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(120)
        shutil.rmtree(temp, ignore_errors=True)


def run_variant(name: str, address: str | None, env: dict[str, str], duration: float) -> dict[str, float]:
    extra, settings, grpc = VARIANTS[name]
    port, grpc_port = free_port(), free_port() if grpc else 0
    args = [address if a == "ADDRESS" else a for a in extra]
    target = port
    if settings and settings.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1":
        target = int(env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"])  # the replica's own server
    process = start(["--http-port", str(port), "--grpc-port", str(grpc_port), *args], env)
    try:
        return bench(target, grpc_port or None, duration, env)
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=HERE / "results/ray_overhead.json")
    args = parser.parse_args()
    names = args.variants.split(",")
    src = str(ROOT / "src")
    base = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": ":".join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    groups: dict[str, list[str]] = {}  # one cluster per distinct Serve settings, in first-seen order
    for name in names:
        settings = VARIANTS[name][1]
        groups.setdefault(json.dumps(settings, sort_keys=True), []).append(name)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for key, members in groups.items():
            settings = json.loads(key)
            if settings is None:
                for name in members:
                    results[name].append(run_variant(name, None, base, args.duration))
                    print(name, results[name][-1], flush=True)
                continue
            http = free_port()
            env = {**base, **settings, "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
                   "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + 1)}
            with cluster(env) as address:
                for name in members:
                    results[name].append(run_variant(name, address, env, args.duration))
                    print(name, results[name][-1], flush=True)
    out = args.out
    out.write_text(json.dumps({"model": "mlp_onnx (16 -> 4)", "concurrency": 1, "duration_s": args.duration,
                               "cpus": os.cpu_count(), "rounds": args.rounds, "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
