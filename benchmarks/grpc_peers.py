"""KServe v2 over gRPC: inferd beside real NVIDIA Triton 2.51, same client, one run.

    python benchmarks/grpc_peers.py [--seconds 10] [--concurrency 1,64] [--servers inferd,triton]
                                    [--client inferd|h2load] [--inferd-args "--grpc-server grpcio"]

Both servers hold the peers' `mlp` and `tiny` TorchScript models with and without dynamic batching
(max batch 32, 5 ms), pinned to CPU 0. Triton is started by the shared anchor harness
(`../shared/bench/anchors/bench.py`, its Python backend in /opt/anchors/triton); this script only
imports its start-up function. The load is `inferd bench --grpc --binary` (grpc.aio, raw input
contents, requests serialised once) from CPU 1, and for reference `inferd bench --binary` over HTTP.
With ``--client h2load`` the gRPC load comes from nghttp2's h2load instead (C, `apt install
nghttp2-client`): one connection, c streams at once, the same serialized ModelInfer for both servers.
grpc.aio's client tops out near 3k calls/s on one core, which hides any server faster than that.
h2load sees HTTP statuses only, so failures are counted from each server's own v2 statistics
(success and fail counts before and after the run).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import CLIENT_CPU, HERE, SERVER_CPU, h2load, stop, wait_ready, write_model

ANCHORS = Path(os.environ.get("ANCHORS", HERE.parent.parent / "shared" / "bench" / "anchors"))
MODELS = Path(os.environ.get("MODEL_DIR", "/opt/anchors/models"))
VARIANTS = [("mlp", True), ("tiny", True), ("mlp", False), ("tiny", False)]


def name(model: str, batched: bool) -> str:
    return f"{model}_b" if batched else model


def bench(model: str, http: str, grpc: str | None, concurrency: int, seconds: int, out: Path) -> dict[str, float]:
    command = ["taskset", "-c", CLIENT_CPU, sys.executable, "-m", "inferd", "bench", "-m", model, "--url", http,
               "--concurrency", str(concurrency), "--duration", str(seconds), "--warmup", "3", "--binary",
               "--json", str(out)]
    command += ["--grpc", grpc] if grpc else []
    subprocess.run(command, check=True, capture_output=True)
    row = json.loads(out.read_text())["rows"][0]
    return {"rps": row["rps"], "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"], "errors": row["errors"]}


def start_inferd(scratch: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], str, str]:
    repo = scratch / "inferd-repo"
    for model, batched in VARIANTS:
        dim, out = (512, 10) if model == "mlp" else (16, 4)
        write_model(repo, name(model, batched), MODELS / f"{model}.pt", dim, out, batching=batched)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "inferd", "serve", str(repo),
               "--http-port", "18600", "--grpc-port", "18601", "--log-level", "warning", *extra]
    process = subprocess.Popen(command, env=env, stdout=(scratch / "inferd.log").open("wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready("http://127.0.0.1:18600/v2/health/ready", process)
    return process, "http://127.0.0.1:18600", "127.0.0.1:18601"


def start_triton() -> tuple[object, str, str]:
    sys.path.insert(0, str(ANCHORS))
    os.environ.setdefault("LOGDIR", tempfile.mkdtemp(prefix="triton-logs-"))
    import bench as anchors  # the shared harness: how Triton is started, not measured, here

    server, _, _ = next(anchors.triton_instances(VARIANTS))
    server.start()
    http_port, grpc_port, _ = anchors.TRITON_PORTS
    wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready", server.proc, timeout=300)
    return server, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--servers", default="inferd,triton")
    parser.add_argument("--rounds", type=int, default=1, help="alternations per case; the table shows medians")
    parser.add_argument("--client", choices=("inferd", "h2load"), default="inferd", help="the gRPC load generator")
    parser.add_argument("--inferd-args", default="", help="more `inferd serve` arguments")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "grpc_peers.json")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="inferd-grpc-peers-"))
    rows, halts, addresses = [], [], {}
    try:  # every server up at once (idle ones cost nothing), cases alternating between them: on a
        # shared machine the load of the moment falls on both alike
        for server_name in args.servers.split(","):
            if server_name == "inferd":
                process, http, grpc = start_inferd(scratch, args.inferd_args.split())
                halts.append(functools.partial(stop, process))
            else:
                server, http, grpc = start_triton()
                halts.append(server.stop)  # type: ignore[attr-defined]
            addresses[server_name] = (http, grpc)
        for model, batched in VARIANTS:
            for concurrency in map(int, args.concurrency.split(",")):
                for wire in ("grpc", "http"):
                    for round_ in range(args.rounds):
                        for server_name, (http, grpc) in addresses.items():
                            address = grpc if wire == "grpc" else None
                            if address and args.client == "h2load":
                                result = h2load(name(model, batched), http, address, concurrency, args.seconds,
                                                scratch / "row.json")
                            else:
                                result = bench(name(model, batched), http, address, concurrency, args.seconds,
                                               scratch / "row.json")
                            row = {"server": server_name, "model": model, "batching": batched, "wire": wire,
                                   "concurrency": concurrency, "round": round_, **result}
                            rows.append(row)
                            print(json.dumps(row), flush=True)
    finally:
        for halt in halts:
            halt()
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"\n| model | batching | c | wire | {' | '.join(args.servers.split(','))} |")
    print("|---|---|---|---|" + "---|" * len(args.servers.split(",")))
    for model, batched in VARIANTS:
        for concurrency in map(int, args.concurrency.split(",")):
            for wire in ("grpc", "http"):
                cells = []
                for server_name in args.servers.split(","):
                    match = sorted((r for r in rows if (r["server"], r["model"], r["batching"], r["wire"],
                                   r["concurrency"]) == (server_name, model, batched, wire, concurrency)),
                                   key=lambda r: r["rps"])
                    middle = match[len(match) // 2] if match else None
                    cells.append(f"{middle['rps']:,.0f} req/s, p50 {middle['p50_ms']:.2f} ms, "
                                 f"p99 {middle['p99_ms']:.2f} ms" if middle else "-")
                print(f"| {model} | {'yes' if batched else 'no'} | {concurrency} | {wire} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
