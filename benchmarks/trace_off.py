"""What Triton's trace extension costs a request while tracing is off, in process: the KServe v2
HTTP route (through the app's dispatch) and the gRPC ModelInfer servicer, over the real core with
examples/models/mlp_onnx (inline on the loop, dynamic batching), one request after another.

    taskset -c 0 python benchmarks/trace_off.py [--tree PATH] [--requests 4000] [--rounds 3]

``--tree``: another checkout's src/ first on the path, to compare two builds (run them in turn).
Reports CPU µs per request (the steadier figure on a shared machine), the median of the rounds.
The server's protocol parts (the HTTP connection, the HTTP/2 connection) are not in it: what the
trace extension adds there is two stores of values read anyway (timed apart with timeit).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


class _Context:
    """The slice of a gRPC context the ModelInfer servicer reads."""

    message_size = 0

    def cancelled(self) -> bool:
        return False

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def time_remaining(self) -> None:
        return None


async def _measure(args: argparse.Namespace) -> dict[str, float]:
    import numpy as np

    from inferd.config import ServerSettings
    from inferd.protocols._proto import kserve_v2_pb2 as pb
    from inferd.server import build_core, build_http_app
    from inferd.transport.grpc.servicers import KServeV2Servicer
    from inferd.transport.http.app import HttpRequest

    settings = ServerSettings(model_repository=HERE.parent / "examples" / "models", log_level="warning")
    core = build_core(settings)
    await core.control.load_at_start(("mlp_onnx",))
    core.data.set_ready(True)
    app = build_http_app(core, settings)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                   "data": np.arange(16, dtype=np.float32).tolist()}]}).encode()
    servicer = KServeV2Servicer(core)
    message = pb.ModelInferRequest(model_name="mlp_onnx")
    tensor = message.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    tensor.contents.fp32_contents.extend(range(16))
    context: Any = _Context()

    async def http() -> None:
        request = HttpRequest("POST", "/v2/models/mlp_onnx/infer", "", {"content-type": "application/json"},
                              bytearray(body))
        assert (await app.dispatch(request)).status == 200

    async def grpc() -> None:
        await servicer.model_infer(message, context)

    results: dict[str, list[float]] = {"http": [], "grpc": []}
    for _ in range(args.rounds):
        for name, call in (("http", http), ("grpc", grpc)):
            for _ in range(300):
                await call()
            cpu = time.process_time()
            for _ in range(args.requests):
                await call()
            results[name].append((time.process_time() - cpu) / args.requests * 1e6)
    await core.control.close(5.0)
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", type=Path, default=HERE.parent)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree / "src"))
    import uvloop

    measured = uvloop.run(_measure(args))
    print(json.dumps({"tree": str(args.tree), **{f"{k}_cpu_us": round(v, 2) for k, v in measured.items()}}))


if __name__ == "__main__":
    main()
