"""inferd's own gRPC server against grpcio's (``--grpc-server grpcio``), one build, one run.

    python benchmarks/grpc_servers.py [--seconds 5] [--rounds 2] [--concurrency 1,64]

Two `inferd serve` processes hold the peers' batched `mlp` and `tiny` TorchScript models (pinned
to CPU 0; the idle one costs nothing), and nghttp2's h2load (C, CPU 1) sends the same serialized
calls to each in turn: KServe v2 ModelInfer with raw contents, and TF Serving's Predict with
`tensor_content`. Rounds alternate between the servers. Failures come from the servers' v2
statistics; h2load itself sees HTTP statuses only.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from common import CLIENT_CPU, HERE, SERVER_CPU, stop, wait_ready, write_model

MODELS = Path(os.environ.get("MODEL_DIR", "/opt/anchors/models"))
SHAPES = {"mlp": (512, 10), "tiny": (16, 4)}
KSERVE = "/inference.GRPCInferenceService/ModelInfer"
PREDICT = "/tensorflow.serving.PredictionService/Predict"


def calls(model: str) -> dict[str, bytes]:
    """The framed gRPC message of each protocol's call for one sample of ``model``."""
    sys.path.insert(0, str(HERE.parent / "src"))
    from inferd.protocols._proto import kserve_v2_pb2 as pb
    from inferd.protocols._proto import tfserving_pb2 as tfs

    dim = SHAPES[model][0]
    sample = np.random.default_rng(0).standard_normal((1, dim)).astype(np.float32)
    infer = pb.ModelInferRequest(model_name=f"{model}_b")
    infer.inputs.add(name="input", datatype="FP32", shape=[1, dim])
    infer.raw_input_contents.append(sample.tobytes())
    predict = tfs.PredictRequest()
    predict.model_spec.name = f"{model}_b"
    tensor = predict.inputs["input"]
    tensor.dtype = tfs.DT_FLOAT
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=dim)
    tensor.tensor_content = sample.tobytes()
    framed = {}
    for path, message in ((KSERVE, infer), (PREDICT, predict)):
        body = message.SerializeToString()
        framed[path] = b"\0" + len(body).to_bytes(4, "big") + body
    return framed


def h2load(grpc: str, http: str, model: str, path: str, body: Path, concurrency: int, seconds: int,
           log: Path) -> dict[str, float]:
    def run(amount: list[str]) -> list[list[str]]:
        log.unlink(missing_ok=True)  # h2load appends to its log
        subprocess.run(["taskset", "-c", CLIENT_CPU, "h2load", *amount, "-c", "1", "-m", str(concurrency),
                        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
                        f"--log-file={log}", f"http://{grpc}{path}"], check=True, capture_output=True)
        return [line.split("\t") for line in log.read_text().splitlines() if line]

    def failures() -> int:
        stats = json.loads(urllib.request.urlopen(f"{http}/v2/models/{model}/stats", timeout=10).read())
        return int(stats["model_stats"][0]["inference_stats"]["fail"]["count"])

    warm = run(["-D", "2"])
    time.sleep(0.3)
    before = failures()
    rows = run(["-n", str(max(concurrency * 10, len(warm) * seconds // 2))])  # none cut off at the end
    latencies = sorted(int(row[2]) / 1000 for row in rows if row[1] == "200")
    start, end = min(int(row[0]) for row in rows), max(int(row[0]) + int(row[2]) for row in rows)
    return {"rps": len(latencies) / ((end - start) / 1e6), "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[int(len(latencies) * 0.99)],
            "errors": len(rows) - len(latencies) + failures() - before}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "grpc_servers.json")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="inferd-grpc-servers-"))
    repo = scratch / "repo"
    for model, (dim, out) in SHAPES.items():
        write_model(repo, f"{model}_b", MODELS / f"{model}.pt", dim, out, batching=True)
    servers, halts = {}, []
    try:
        for index, implementation in enumerate(("inferd", "grpcio")):
            http_port, grpc_port = 18620 + 2 * index, 18621 + 2 * index
            process = subprocess.Popen(
                ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "inferd", "serve", str(repo),
                 "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--grpc-server", implementation,
                 "--log-level", "warning"], env=dict(os.environ, OMP_NUM_THREADS="1"),
                stdout=(scratch / f"{implementation}.log").open("wb"), stderr=subprocess.STDOUT,
                start_new_session=True)
            halts.append(functools.partial(stop, process))
            wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready", process)
            servers[implementation] = (f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}")
        rows = []
        for model in SHAPES:
            for path, framed in calls(model).items():
                body = scratch / "call.grpc"
                body.write_bytes(framed)
                for concurrency in map(int, args.concurrency.split(",")):
                    for round_ in range(args.rounds):
                        for implementation, (grpc, http) in servers.items():
                            result = h2load(grpc, http, f"{model}_b", path, body, concurrency, args.seconds,
                                            scratch / "h2load.log")
                            row = {"server": implementation, "model": model, "call": path.rsplit("/", 1)[1],
                                   "concurrency": concurrency, "round": round_, **result}
                            rows.append(row)
                            print(json.dumps(row), flush=True)
    finally:
        for halt in halts:
            halt()
    args.out.write_text(json.dumps(rows, indent=1))
    print("\n| model | call | c | inferd's server | grpcio's server | ratio |\n|---|---|---|---|---|---|")
    for model in SHAPES:
        for call in ("ModelInfer", "Predict"):
            for concurrency in map(int, args.concurrency.split(",")):
                cells = {}
                for implementation in servers:
                    match = [r for r in rows if (r["server"], r["model"], r["call"], r["concurrency"])
                             == (implementation, model, call, concurrency)]
                    cells[implementation] = (statistics.median(r["rps"] for r in match),
                                             statistics.median(r["p50_ms"] for r in match),
                                             statistics.median(r["p99_ms"] for r in match),
                                             sum(r["errors"] for r in match))
                text = [f"{rps:,.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, {errors} errors"
                        for rps, p50, p99, errors in cells.values()]
                ratio = cells["inferd"][0] / cells["grpcio"][0]
                print(f"| {model} | {call} | {concurrency} | {text[0]} | {text[1]} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
