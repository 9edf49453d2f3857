"""Image bytes to /predictions: inferd beside TorchServe 0.12, the same archive, the same load.

    python benchmarks/torchserve_images.py [--seconds 15] [--concurrency 1,32]

Needs the peers' TorchServe venv (/opt/anchors/ts, see ../shared/bench/anchors) with Pillow in it
(`/opt/anchors/ts/bin/pip install pillow`). The archive holds a small CNN (TorchScript) and
assets/image_handler.py, a handler that imports ts.torch_handler.base_handler; both servers register
it the same way (POST /models?url=...&batch_size=8&max_batch_delay=5&initial_workers=1), are pinned
to CPU 0, and wrk posts one 320x240 JPEG from CPU 1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from common import HERE, SERVER_CPU, measure, stop, wait_ready

TS_VENV = Path(os.environ.get("TS_VENV", "/opt/anchors/ts"))
REGISTER = "url=classifier.mar&model_name=classifier&batch_size=8&max_batch_delay=5&initial_workers=1&synchronous=true"


class SmallCnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 5, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, stride=2),
            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4))
        self.head = torch.nn.Linear(512, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def build(root: Path) -> tuple[Path, Path]:
    from PIL import Image

    torch.manual_seed(0)
    store = root / "store"
    store.mkdir(parents=True)
    torch.jit.script(SmallCnn().eval()).save(str(root / "cnn.pt"))
    subprocess.run([str(TS_VENV / "bin" / "torch-model-archiver"), "--model-name", "classifier", "--version",
                    "1.0", "--serialized-file", str(root / "cnn.pt"), "--handler",
                    str(HERE / "assets" / "image_handler.py"), "--export-path", str(store), "-f"], check=True)
    pixels = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    image = root / "image.jpg"
    image.write_bytes(buffer.getvalue())
    return store, image


def post(url: str) -> None:
    request = urllib.request.Request(url, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def run_torchserve(store: Path, work: Path) -> subprocess.Popen[bytes]:
    config = work / "config.properties"
    config.write_text("inference_address=http://127.0.0.1:8080\nmanagement_address=http://127.0.0.1:8081\n"
                      "metrics_address=http://127.0.0.1:8082\ndisable_token_authorization=true\n"
                      "enable_model_api=true\ninstall_py_dep_per_model=false\njob_queue_size=1000\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", LOG_LOCATION=str(work),
               METRICS_LOCATION=str(work), PATH=f"{TS_VENV}/bin:" + os.environ["PATH"])
    process = subprocess.Popen(["taskset", "-c", SERVER_CPU, str(TS_VENV / "bin" / "torchserve"), "--start",
                                "--foreground", "--ncs", "--disable-token-auth", "--model-store", str(store),
                                "--ts-config", str(config)], cwd=work, env=env,
                               stdout=(work / "ts.log").open("wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    wait_ready("http://127.0.0.1:8080/ping", process)
    post(f"http://127.0.0.1:8081/models?{REGISTER}")
    return process


def run_inferd(store: Path, work: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    process = subprocess.Popen(["taskset", "-c", SERVER_CPU, sys.executable, "-m", "inferd", "serve",
                                "--model-store", str(store), "--model-control", "explicit", "--http-port", "8080",
                                "--grpc-port", "0", "--log-level", "warning"], env=env,
                               stdout=(work / "inferd.log").open("wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    wait_ready("http://127.0.0.1:8080/ping", process)
    post(f"http://127.0.0.1:8080/models?{REGISTER}")
    return process


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "torchserve_images.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="inferd-ts-bench-"))
    store, image = build(root)
    rows = []
    for server, start in (("torchserve", run_torchserve), ("inferd", run_inferd)):
        work = root / server
        work.mkdir()
        process = start(store, work)
        try:
            for concurrency in map(int, args.concurrency.split(",")):
                os.environ["CONTENT_TYPE"] = "image/jpeg"
                result = measure("http://127.0.0.1:8080/predictions/classifier", image, concurrency,
                                 args.seconds, process.pid, warmup=5)
                rows.append({"server": server, "concurrency": concurrency, **result})
                print(f"{server:10} c={concurrency:<3} {result['rps']:8.1f} req/s p50 {result['p50_us'] / 1000:7.2f}"
                      f" ms p99 {result['p99_us'] / 1000:7.2f} ms errors {result['errors']}"
                      f" cpu/req {result['cpu_ms_per_req']:.2f} ms", flush=True)
        finally:
            stop(process)
            time.sleep(2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print("\n| server | conc | req/s | p50 ms | p99 ms | errors | server CPU ms/req |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['concurrency']} | {r['rps']:,.0f} | {r['p50_us'] / 1000:.2f} | "
              f"{r['p99_us'] / 1000:.2f} | {r['errors']} | {r['cpu_ms_per_req']:.2f} |")
    by = {(r["server"], r["concurrency"]): r for r in rows}
    for concurrency in map(int, args.concurrency.split(",")):
        ours, theirs = by[("inferd", concurrency)], by[("torchserve", concurrency)]
        print(f"c={concurrency}: inferd/TorchServe throughput {ours['rps'] / theirs['rps']:.2f}x, "
              f"p99 {ours['p99_us'] / 1000:.1f} vs {theirs['p99_us'] / 1000:.1f} ms")


if __name__ == "__main__":
    main()
