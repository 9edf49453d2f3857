"""Triton's system shared-memory extension against sending the tensor: one server, one client (tritonclient,
as a Triton user has it), the same identity model, alternating rounds.

    python benchmarks/shared_memory.py [--seconds 4] [--rounds 2] [--sizes 16KiB,1MiB,16MiB]

An ONNX Identity model (FP32 [-1] in, the same out) served by `inferd serve --allow-client-shm` on
CPU 0; the client on CPU 1 sends one request at a time (c=1: the copy is the cost a lone caller pays)
in four ways: HTTP with binary data, HTTP with the input and output in shared-memory regions, gRPC
with raw contents, and gRPC with regions. Every answer is checked against the input. Prints a table
and writes results/shared_memory-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import CLIENT_CPU, HERE, SERVER_CPU, free_port, stop, wait_ready

MODES = ("http", "http+shm", "grpc", "grpc+shm")


def write_identity(root: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    (root / "identity/1").mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(root / "identity/1/model.onnx"))


def size_bytes(text: str) -> int:
    units = {"KiB": 1024, "MiB": 1024**2}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(text[:-len(unit)]) * factor
    return int(text)


def client_loop(mode: str, http: str, grpc: str, nbytes: int, seconds: float) -> dict[str, float]:
    """Runs in a child process pinned to the client CPU: one request at a time for ``seconds``."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    lib: Any = grpcclient if mode.startswith("grpc") else httpclient
    client = lib.InferenceServerClient(grpc if mode.startswith("grpc") else http)
    x = np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)
    given = lib.InferInput("x", [x.size], "FP32")
    wanted = lib.InferRequestedOutput("y", binary_data=True) if lib is httpclient else lib.InferRequestedOutput("y")
    regions: list[Any] = []
    if mode.endswith("shm"):
        tag = f"{os.getpid()}-{mode.replace('+', '')}"
        for name in ("in", "out"):
            regions.append(shm.create_shared_memory_region(f"{name}{tag}", f"/bench-{name}{tag}", nbytes))
            client.register_system_shared_memory(f"{name}{tag}", f"/bench-{name}{tag}", nbytes)
        shm.set_shared_memory_region(regions[0], [x])
        given.set_shared_memory(f"in{tag}", nbytes)
        wanted.set_shared_memory(f"out{tag}", nbytes)
    else:
        given.set_data_from_numpy(x, **({"binary_data": True} if lib is httpclient else {}))

    def call() -> np.ndarray:
        result = client.infer("identity", [given], outputs=[wanted])
        if regions:
            return shm.get_contents_as_numpy(regions[1], np.float32, [x.size])
        return result.as_numpy("y")

    np.testing.assert_array_equal(call(), x)  # checked once before timing, and at the end
    latencies = []
    deadline = time.perf_counter() + seconds
    while (start := time.perf_counter()) < deadline:
        call()
        latencies.append(time.perf_counter() - start)
    np.testing.assert_array_equal(call(), x)
    for region in regions:
        shm.destroy_shared_memory_region(region)
    if regions:
        client.unregister_system_shared_memory()
    latencies.sort()
    return {"rps": len(latencies) / seconds, "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000}


def measure(mode: str, http: str, grpc: str, nbytes: int, seconds: float) -> dict[str, float]:
    command = ["taskset", "-c", CLIENT_CPU, sys.executable, __file__, "--client", mode, "--http", http,
               "--grpc", grpc, "--bytes", str(nbytes), "--seconds", str(seconds)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    row: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", default="16KiB,1MiB,16MiB")
    parser.add_argument("--client", choices=MODES)  # internal: the measuring child
    parser.add_argument("--http")
    parser.add_argument("--grpc")
    parser.add_argument("--bytes", type=int)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(client_loop(args.client, args.http, args.grpc, args.bytes, args.seconds)))
        return
    sizes = [size_bytes(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "repo"
        write_identity(root)
        http_port, grpc_port = free_port(), free_port()
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        command = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "inferd", "serve", str(root), "--http-port",
                   str(http_port), "--grpc-port", str(grpc_port), "--allow-client-shm", "--log-level", "warning",
                   "--max-body-size", "64MiB"]
        server = subprocess.Popen(command, env=env, stdout=(Path(scratch) / "log").open("wb"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready", server)
            http, grpc = f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
            runs: dict[str, list[dict[str, float]]] = {}
            for _ in range(args.rounds):
                for nbytes in sizes:
                    for mode in MODES:
                        runs.setdefault(f"{nbytes}|{mode}", []).append(measure(mode, http, grpc, nbytes,
                                                                               args.seconds))
        finally:
            stop(server)
    report(runs, sizes, args)


def report(runs: dict[str, list[dict[str, float]]], sizes: list[int], args: argparse.Namespace) -> None:
    def median(key: str, field: str) -> float:
        return statistics.median(r[field] for r in runs[key])

    print(f"{'tensor':>8} {'mode':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  vs sending it")
    for nbytes in sizes:
        for mode in MODES:
            key = f"{nbytes}|{mode}"
            base = f"{nbytes}|{mode.removesuffix('+shm')}"
            ratio = median(key, "rps") / median(base, "rps")
            print(f"{nbytes // 1024:>6}KiB {mode:>9} {median(key, 'rps'):>8.0f} {median(key, 'p50_ms'):>8.2f} "
                  f"{median(key, 'p99_ms'):>8.2f}  {ratio:.2f}x")
    out = HERE / "results" / f"shared_memory-{time.strftime('%Y%m%dT%H%MZ', time.gmtime())}.json"
    out.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
