"""One model, every protocol: KServe v2 HTTP (JSON, binary), TF Serving REST, KServe v2 gRPC (typed,
raw contents). Same server, same load, one run.

    python benchmarks/protocols.py [--seconds 10] [--concurrency 1,64]

inferd serves the peers' M1 mlp (TorchScript, dynamic batching) pinned to CPU 0; the load comes from
CPU 1. HTTP rows are measured twice: with wrk (C), and with `inferd bench` (Python asyncio), because
gRPC can only be loaded from Python here (grpc.aio, requests serialised once); compare gRPC with the
`inferd bench` HTTP rows, which use the same kind of client.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import CLIENT_CPU, HERE, SERVER_CPU, bodies, make_mlp_models, measure, stop, wait_ready, write_model

MODEL = "m1_ts_b"


def start(root: Path, http: int, grpc: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "inferd", "serve", str(root / "repo"),
               "--http-port", str(http), "--grpc-port", str(grpc), "--log-level", "warning"]
    process = subprocess.Popen(command,
                               env=env, stdout=(root / "server.log").open("wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    wait_ready(f"http://127.0.0.1:{http}/v2/health/ready", process)
    return process


def inferd_bench(http: int, grpc: int | None, binary: bool, concurrency: int, seconds: int, out: Path) -> dict:
    command = ["taskset", "-c", CLIENT_CPU, sys.executable, "-m", "inferd", "bench", "-m", MODEL, "--url",
               f"http://127.0.0.1:{http}", "--concurrency", str(concurrency), "--duration", str(seconds),
               "--warmup", "3", "--json", str(out)]
    command += ["--grpc", f"127.0.0.1:{grpc}"] if grpc else []
    command += ["--binary"] if binary else []
    subprocess.run(command, check=True, capture_output=True)
    row = json.loads(out.read_text())["rows"][0]
    return {"rps": row["rps"], "p50_us": row["p50_ms"] * 1000, "p99_us": row["p99_ms"] * 1000,
            "errors": row["errors"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "protocols.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="inferd-protocols-"))
    make_mlp_models(root / "artifacts")
    write_model(root / "repo", MODEL, root / "artifacts" / "mlp.pt", 512, 10, batching=True)
    json_body, bin_body, header_len = bodies(root / "bodies", MODEL, 512)
    instances = json.loads(json_body.read_text())["inputs"][0]["data"]
    tf_body = root / "bodies" / "tf.json"
    tf_body.write_text(json.dumps({"instances": [instances]}))
    http, grpc = 8460, 8461
    server = start(root, http, grpc)
    rows = []
    v2 = f"http://127.0.0.1:{http}/v2/models/{MODEL}/infer"
    try:
        for concurrency in map(int, args.concurrency.split(",")):
            cases = [
                ("v2 HTTP JSON (wrk)", lambda c: measure(v2, json_body, c, args.seconds, server.pid)),
                ("v2 HTTP binary (wrk)", lambda c: measure(v2, bin_body, c, args.seconds, server.pid, header_len)),
                ("TF Serving REST instances (wrk)", lambda c: measure(
                    f"http://127.0.0.1:{http}/v1/models/{MODEL}:predict", tf_body, c, args.seconds, server.pid)),
                ("v2 HTTP binary (inferd bench)", lambda c: inferd_bench(http, None, True, c, args.seconds,
                                                                          root / "b.json")),
                ("v2 gRPC typed (inferd bench)", lambda c: inferd_bench(http, grpc, False, c, args.seconds,
                                                                         root / "b.json")),
                ("v2 gRPC raw (inferd bench)", lambda c: inferd_bench(http, grpc, True, c, args.seconds,
                                                                       root / "b.json")),
            ]
            for label, run in cases:
                result = run(concurrency)
                rows.append({"protocol": label, "concurrency": concurrency, **result})
                print(f"{label:34} c={concurrency:<3} {result['rps']:8.0f} req/s p50 {result['p50_us'] / 1000:7.2f}"
                      f" ms p99 {result['p99_us'] / 1000:7.2f} ms errors {result['errors']}", flush=True)
    finally:
        stop(server)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print("\n| protocol | conc | req/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['protocol']} | {r['concurrency']} | {r['rps']:,.0f} | {r['p50_us'] / 1000:.2f} | "
              f"{r['p99_us'] / 1000:.2f} | {r['errors']} |")


if __name__ == "__main__":
    main()
