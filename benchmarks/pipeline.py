"""The pipeline example (examples/pipeline: image bytes -> Python preprocess -> ONNX classifier ->
Python postprocess) as one ensemble request, against the same three models called one after
another by the client; then the response cache's gain at a stated hit rate.

    python benchmarks/pipeline.py [--seconds 10] [--concurrency 1,8] [--hit-rate 0.9] [--rounds 3]

Server on CPU 0 (with its Python instance processes), the client (tritonclient.http, binary tensors,
one thread per concurrent client) on CPU 1. "pipelines/s" counts finished pipelines (one ensemble
request, or three chained requests). The cache rows send the same request stream to the ensemble
with and without [response_cache]: each request is, with probability --hit-rate, one of 8 images
seen before, else a new image; the measured hit rate is read back from the server's statistics.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from common import CLIENT_CPU, SERVER_CPU, free_port, stop, wait_ready
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def build(root: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_pipeline", ROOT / "examples/pipeline/make_pipeline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(root)
    cached = root / "image_pipeline_cached"
    shutil.copytree(root / "image_pipeline", cached)
    text = (cached / "config.pbtxt").read_text().replace('name: "image_pipeline"', 'name: "image_pipeline_cached"')
    (cached / "config.pbtxt").write_text(text + "response_cache { enable: true }\n")


def png(seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((48, 64, 3)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def tensor(name: str, data: np.ndarray, datatype: str) -> httpclient.InferInput:
    given = httpclient.InferInput(name, list(data.shape), datatype)
    given.set_data_from_numpy(data, binary_data=True)
    return given


def ensemble_call(client: httpclient.InferenceServerClient, image: bytes, model: str = "image_pipeline") -> None:
    client.infer(model, [tensor("IMAGE", np.array([[image]], dtype=object), "BYTES")])


def chained_call(client: httpclient.InferenceServerClient, image: bytes) -> None:
    pixels = client.infer("preprocess", [tensor("IMAGE", np.array([[image]], dtype=object), "BYTES")])
    logits = client.infer("classifier", [tensor("x", pixels.as_numpy("PIXELS"), "FP32")])
    client.infer("postprocess", [tensor("LOGITS", logits.as_numpy("logits"), "FP32")])


def run(url: str, call: Any, images: Any, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client_loop(index: int) -> None:
        client = httpclient.InferenceServerClient(url)
        rng = np.random.default_rng(index)
        mine = []
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            try:
                call(client, images(rng))
            except Exception:  # counted, not fatal
                with lock:
                    errors[0] += 1
                continue
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ordered = sorted(latencies) or [0.0]
    return {"pipelines_per_s": round(len(latencies) / seconds, 1),
            "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 2), "errors": errors[0]}


def cache_stats(url: str, model: str) -> tuple[int, int]:
    """(hits, misses) so far."""
    stats = httpclient.InferenceServerClient(url).get_inference_statistics(model)["model_stats"][0]["inference_stats"]
    return stats["cache_hit"]["count"], stats["cache_miss"]["count"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--hit-rate", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(CLIENT_CPU)})
    work = Path(tempfile.mkdtemp(prefix="inferd-pipeline-"))
    build(work / "models")
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "inferd", "serve", str(work / "models"),
               "--http-port", str(port), "--grpc-port", "0", "--log-level", "warning", "--cache-size", "64MiB"]
    server = subprocess.Popen(command, stdout=(work / "server.log").open("wb"), stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    url = f"127.0.0.1:{port}"
    rows = []
    try:
        wait_ready(f"http://{url}/v2/health/ready", server)
        fixed = [png(seed) for seed in range(8)]
        fresh = iter(range(1000, 10**9))
        counter_lock = threading.Lock()

        def one_image(rng: np.random.Generator) -> bytes:
            return fixed[int(rng.integers(len(fixed)))]

        def mixed(rng: np.random.Generator) -> bytes:
            if rng.random() < args.hit_rate:
                return one_image(rng)
            with counter_lock:
                seed = next(fresh)
            return png(seed)

        def cached_call(model: str) -> Any:
            return lambda client, image: ensemble_call(client, image, model)

        variants = [("ensemble (1 request)", ensemble_call, one_image, ""),
                    ("client chains 3 requests", chained_call, one_image, ""),
                    (f"image_pipeline, {args.hit_rate:.0%} repeats, no cache", cached_call("image_pipeline"),
                     mixed, "image_pipeline"),
                    (f"image_pipeline_cached, {args.hit_rate:.0%} repeats", cached_call("image_pipeline_cached"),
                     mixed, "image_pipeline_cached")]
        for concurrency in map(int, args.concurrency.split(",")):
            measured: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in variants}
            for round_ in range(args.rounds):  # alternating rounds: the machine's noise hits all alike
                for name, call, images, model in variants:
                    if round_ == 0:
                        run(url, call, images, concurrency, 2)  # warm-up
                    before = cache_stats(url, model) if model else (0, 0)
                    result = run(url, call, images, concurrency, args.seconds)
                    if model.endswith("cached"):
                        hits, misses = (a - b for a, b in zip(cache_stats(url, model), before, strict=True))
                        result["hit_rate"] = round(hits / max(hits + misses, 1), 2)
                    measured[name].append(result)
                    print(json.dumps({"what": name, "concurrency": concurrency, "round": round_, **result}),
                          flush=True)
            for name, results in measured.items():
                results.sort(key=lambda r: r["pipelines_per_s"])
                rows.append({"what": name, "concurrency": concurrency, **results[len(results) // 2],
                             "all": [r["pipelines_per_s"] for r in results]})
    finally:
        stop(server)
    print(f"\n| what | conc | pipelines/s (median of {args.rounds}) | rounds | p50 ms | p99 ms | errors | hit rate |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['concurrency']} | {r['pipelines_per_s']} | {r['all']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['errors']} | {r.get('hit_rate', '')} |")


if __name__ == "__main__":
    main()
