"""Per-request cost of Ray Serve's proxy (issue 16): the tiny ONNX model (16 -> 4) of
examples/models at concurrency 1, `inferd bench` (v2 JSON, keep-alive), against

  direct        inferd serve examples/models
  ray           inferd serve examples/models --ray ADDR (1 replica, core on the replica's loop)
  ray-thread    the same with --ray-serve-thread (Serve's default: user code on its own thread)

on a one-node Ray cluster started here (`ray start --head --block`), alternated over --rounds so
machine noise hits every variant alike. Needs the ray extra. Writes results/ray_overhead.json.

    python benchmarks/ray_overhead.py --rounds 2 --duration 10
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
from pathlib import Path

from common import HERE, free_port

ROOT = HERE.parent
REPO = ROOT / "examples/models"
RAY = str(Path(sys.executable).with_name("ray"))


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "inferd", "serve", str(REPO), *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("inferd ready"):
            return process
    raise RuntimeError(f"inferd {' '.join(args)} did not start")


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)


def bench(port: int, duration: float, env: dict[str, str]) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", "inferd", "bench", "-m", "mlp_onnx", "--url", f"http://127.0.0.1:{port}",
                        "--concurrency", "1", "--duration", str(duration), "--warmup", "2", "--json", out.name],
                       env=env, check=True, capture_output=True, cwd=ROOT)
        row = json.loads(Path(out.name).read_text())["rows"][0]
    return {k: row[k] for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "errors")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    src = str(ROOT / "src")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": ":".join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    address = f"127.0.0.1:{free_port()}"
    head = subprocess.Popen([RAY, "start", "--head", "--block", "--port", address.split(":")[1], "--num-cpus", "2",
                             "--include-dashboard", "false", "--temp-dir", temp, "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    variants = {"direct": [], "ray": ["--ray", address], "ray-thread": ["--ray", address, "--ray-serve-thread"]}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    try:
        time.sleep(15)  # the head's daemons
        for _ in range(args.rounds):
            for name, extra in variants.items():
                port = free_port()
                process = start(["--http-port", str(port), "--grpc-port", "0", *extra], env)
                try:
                    results[name].append(bench(port, args.duration, env))
                finally:
                    stop(process)
                print(name, results[name][-1], flush=True)
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(120)
        shutil.rmtree(temp, ignore_errors=True)
    out = HERE / "results/ray_overhead.json"
    out.write_text(json.dumps({"model": "mlp_onnx (16 -> 4)", "concurrency": 1, "duration_s": args.duration,
                               "cpus": os.cpu_count(), "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
