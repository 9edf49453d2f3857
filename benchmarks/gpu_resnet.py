"""JPEG bytes to top-5 labels on a GPU: inferd against the bare model loop, in one run (issue 17).

    python benchmarks/gpu_resnet.py [--seconds 15] [--concurrency 1,64,256] [--workers 4]
        [--server-cpus 0-7] [--client-cpus 8-15] [--out results/gpu_resnet-<device>-<time>.json]
    python benchmarks/gpu_resnet.py --smoke      # the same steps on the CPU with a small CNN

What it measures, all in one process tree on one machine:

1. **The limit**: ResNet-50 (torchvision's, random weights: the speed is the same) in bf16,
   channels-last, on the GPU, in a bare loop over inputs already on the device, at batch 1, 32 and
   256 (and batch 1 as a CUDA graph), plus nvjpeg's decode rate for 640×480 JPEGs.
2. **inferd serving JPEG bytes -> top 5**, with the model as config.toml serves it (an
   `[input.image]` input decoded by nvjpeg on the GPU, bf16, channels_last, CUDA graphs per batch
   size, warmed up at load, dynamic batching up to 256, two instances), over
   - TorchServe's `/predictions/classifier` (the same model in a .mar with the image_classifier
     handler on the GPU; raw JPEG body, the handler's top 5),
   - KServe v2 binary HTTP (`/v2/models/resnet/infer`, the JPEG as BYTES, Triton's classification
     extension for the top 5), and
   - KServe v2 gRPC (raw_input_contents, the same classification),
   at each concurrency, with the load generator (wrk; `inferd bench --grpc`) pinned to
   --client-cpus and the server (`--workers N` front ends) to --server-cpus.

It prints a table and writes JSON with the device, versions, every figure and the ratios to the
limit. The goal (issue 17, on an H100): >= 80 % of the bare bf16 model's img/s at batch <= 256,
p99 under 50 ms at that load, c=1 within 1 ms of the bare batch-1 time. `--smoke` runs every step
on the CPU with a small CNN (and 64×64 crops for the v2 model) so the script can be checked
anywhere; its numbers mean nothing for the goal.

Needs: torch with CUDA and a torchvision built for it (nvjpeg, resnet50), wrk, taskset.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import (
    HERE,
    free_port,
    model_stats,
    profiled,
    stop,
    wait_ready,
    where_the_time_went,
)

from inferd.bench.inputs import request_body
from inferd.config import ImageInput
from inferd.runtimes.torch_image import pil_array

FULL = {"batch": 256, "bare_batches": (1, 32, 256), "resize": 256, "crop": 224, "image": (480, 640),
        "precision": "bf16", "channels_last": True, "compile": "cuda_graphs", "instances": 2}
SMOKE = {"batch": 8, "bare_batches": (1, 8), "resize": 72, "crop": 64, "image": (120, 160),
         "precision": "", "channels_last": False, "compile": "", "instances": 1}


class SmallCnn(torch.nn.Module):
    """--smoke's stand-in for ResNet-50: any input size (adaptive pooling), 1000 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 5, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, stride=2),
            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4))
        self.head = torch.nn.Linear(512, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def build_model(smoke: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    if smoke:
        return SmallCnn().eval()
    from torchvision.models import resnet50

    return resnet50(weights=None).eval()


def jpegs(size: tuple[int, int], count: int = 8) -> list[bytes]:
    """Smooth, photo-like JPEGs (upscaled random blocks, quality 90): nvjpeg's and Pillow's work as
    on camera images, unlike noise."""
    from PIL import Image

    height, width = size
    out = []
    for seed in range(count):
        blocks = np.random.default_rng(seed).integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(blocks).resize((width, height), Image.Resampling.BICUBIC).save(buffer, format="JPEG",
                                                                                      quality=90)
        out.append(buffer.getvalue())
    return out


# --- 1. the limit ----------------------------------------------------------------------------

def bare_loop(model: torch.nn.Module, mode: dict, device: torch.device, seconds: float) -> dict:
    """img/s and ms per batch of the model alone, inputs already on the device."""
    dtype = torch.bfloat16 if mode["precision"] == "bf16" else torch.float32
    model = model.to(device=device, dtype=dtype)
    memory = torch.channels_last if mode["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory)
    rows = {}
    with torch.inference_mode():
        for batch in mode["bare_batches"]:
            x = torch.randn(batch, 3, mode["crop"], mode["crop"], device=device, dtype=dtype)
            x = x.contiguous(memory_format=memory)
            rows[f"batch_{batch}"] = _time(lambda x=x: model(x), batch, device, seconds)
        if device.type == "cuda":  # batch 1 as a CUDA graph: what a served batch of 1 can approach
            static = torch.randn(1, 3, mode["crop"], mode["crop"], device=device, dtype=dtype)
            static = static.contiguous(memory_format=memory)
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                for _ in range(3):
                    model(static)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                model(static)
            rows["batch_1_cuda_graph"] = _time(graph.replay, 1, device, seconds)
    return rows


def _time(call: Callable[[], object], batch: int, device: torch.device, seconds: float) -> dict:
    for _ in range(5):
        call()
    _sync(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            call()
        _sync(device)
        runs += 10
    elapsed = time.perf_counter() - start
    return {"batch": batch, "img_per_s": runs * batch / elapsed, "ms_per_batch": elapsed / runs * 1000}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_rate(blobs: list[bytes], mode: dict, device: torch.device, seconds: float) -> dict:
    """JPEG -> normalised crops per second, as the server does it (nvjpeg batched on a GPU, Pillow on the CPU)."""
    from inferd.runtimes.torch_image import decode_batch

    image = ImageInput(resize=mode["resize"], crop=mode["crop"])
    batch = (blobs * (64 // len(blobs) + 1))[:64]
    row = _time(lambda: decode_batch(torch, batch, image, device, "bench"), len(batch), device, seconds)
    return {"images_per_call": len(batch), "img_per_s": row["img_per_s"], "size": list(mode["image"])}


# --- 2. the server ---------------------------------------------------------------------------

def write_repository(root: Path, model: torch.nn.Module, mode: dict, device: torch.device) -> tuple[Path, Path]:
    """repo/resnet (plain model, [input.image]) and store/classifier.mar (image_classifier handler)."""
    example = torch.randn(2, 3, mode["crop"], mode["crop"])
    traced = torch.jit.trace(model.float().cpu(), example)
    repo, store = root / "repo", root / "store"
    (repo / "resnet" / "1").mkdir(parents=True)
    store.mkdir()
    traced.save(str(repo / "resnet" / "1" / "model.pt"))
    kind = 'kind = "gpu"\ngpus = [0]\n' if device.type == "cuda" else 'kind = "cpu"\n'
    optimization = "".join([
        f'precision = "{mode["precision"]}"\n' if mode["precision"] else "",
        "channels_last = true\n" if mode["channels_last"] else "",
        f'compile = "{mode["compile"]}"\n' if mode["compile"] else "",
        "warmup = true\n"])
    (repo / "resnet" / "config.toml").write_text(f"""max_batch_size = {mode["batch"]}
[dynamic_batching]
max_queue_delay_ms = 2
max_queue_size = 4096
[instance_group]
count = {mode["instances"]}
{kind}[optimization]
{optimization}[[input]]
name = "image"
datatype = "BYTES"
shape = [1]
[input.image]
format = "jpeg"
resize = {mode["resize"]}
crop = {mode["crop"]}
[[output]]
name = "scores"
datatype = "FP32"
shape = [1000]
""")
    labels = {str(i): [f"n{i:08d}", f"class_{i}"] for i in range(1000)}
    manifest = {"runtime": "python", "archiverVersion": "0.12.0",
                "model": {"modelName": "classifier", "modelVersion": "1.0", "serializedFile": "model.pt",
                          "handler": "image_classifier", "configFile": "model-config.yaml"}}
    device_type = "gpu" if device.type == "cuda" else "cpu"
    yaml = (f"minWorkers: {mode['instances']}\nmaxWorkers: {mode['instances']}\nbatchSize: {mode['batch']}\n"
            f"maxBatchDelay: 2\ndeviceType: {device_type}\n")
    with zipfile.ZipFile(store / "classifier.mar", "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        archive.write(repo / "resnet" / "1" / "model.pt", "model.pt")
        archive.writestr("model-config.yaml", yaml)
        archive.writestr("index_to_name.json", json.dumps(labels))
    return repo, store


def src_path() -> str:
    """PYTHONPATH for the processes this starts: this checkout's src, then what was set (a device
    run's packages)."""
    return os.pathsep.join(filter(None, [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")]))


def start_server(repo: Path, store: Path, args: argparse.Namespace,
                 log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    http, grpc = free_port(), free_port()
    command = ["taskset", "-c", args.server_cpus, sys.executable, "-m", "inferd", "serve", str(repo),
               "--model-store", str(store), "--models", "classifier=classifier.mar", "--http-port", str(http),
               "--grpc-port", str(grpc), "--log-level", "warning", "--exit-on-error"]
    if args.workers:
        command += ["--workers", str(args.workers)]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                               env=dict(os.environ, PYTHONPATH=src_path()))
    try:
        wait_ready(f"http://127.0.0.1:{http}/v2/health/ready", process, timeout=args.start_timeout)
    except RuntimeError as error:
        stop(process)
        raise RuntimeError(f"{error}; its log ends:\n{log.read_text(errors='replace')[-4000:]}") from None
    return process, http, grpc


# Each tried in turn until one serves, so that one lent machine's run gives figures and the reason
# each richer setup failed: the setup as configured, then with fewer of its parts.
FALLBACKS: tuple[tuple[str, dict], ...] = (
    ("as configured", {}),
    ("one process (--workers 0)", {"workers": 0}),
    ("no CUDA graphs, one process", {"workers": 0, "compile": ""}),
    ("fp32 eager, one process", {"workers": 0, "compile": "", "precision": "", "channels_last": False}),
)


def start_first_that_serves(root: Path, model: torch.nn.Module, mode: dict, device: torch.device,
                            args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int, int, dict, list[dict]]:
    """The server of the first of FALLBACKS that gets ready, that setup, and each earlier failure."""
    failures = []
    for index, (label, change) in enumerate(FALLBACKS):
        workers = change.get("workers", args.workers)
        setup = {**mode, **{key: value for key, value in change.items() if key != "workers"}}
        folder = root / f"setup{index}"
        folder.mkdir()
        repo, store = write_repository(folder, model, setup, device)
        try:
            process, http, grpc = start_server(repo, store, argparse.Namespace(**{**vars(args), "workers": workers}),
                                               folder / "server.log")
        except RuntimeError as error:
            print(f"setup '{label}' did not start: {error}", flush=True)
            failures.append({"setup": label, "error": str(error)[-4000:]})
            continue
        return process, http, grpc, {"label": label, "workers": workers, **setup}, failures
    raise RuntimeError(f"no setup started; the last: {failures[-1]['error']}")


def check_answers(http: int, blob: bytes, model: torch.nn.Module, mode: dict) -> dict:
    """One request per path, compared with the model in-process (fp32, Pillow): the top-1 class.
    (The handler always crops 224, the v2 model what the mode says: each has its own reference.)"""
    import requests

    def top5(image: ImageInput) -> list[int]:
        with torch.inference_mode():
            scores = model.float().cpu()(torch.from_numpy(pil_array(blob, image))[None])[0]
        return [int(i) for i in torch.topk(scores, 5).indices]

    expected, expected_handler = top5(ImageInput(resize=mode["resize"], crop=mode["crop"])), top5(ImageInput())
    answer = requests.post(f"http://127.0.0.1:{http}/predictions/classifier", data=blob,
                           headers={"Content-Type": "image/jpeg"}, timeout=60)
    answer.raise_for_status()
    handler_top = [int(label.split("_")[1]) for label in answer.json()]
    body, header_len = v2_body(blob, binary_output=False)
    v2 = requests.post(f"http://127.0.0.1:{http}/v2/models/resnet/infer", data=body, timeout=60,
                       headers={"Inference-Header-Content-Length": str(header_len)})
    if v2.status_code != 200:
        raise RuntimeError(f"v2 infer answered {v2.status_code}: {v2.text[:300]}")
    v2_top = [int(entry.split(":")[1]) for entry in v2.json()["outputs"][0]["data"]]
    return {"expected_top5": expected, "predictions_top5": handler_top, "v2_top5": v2_top,
            "predictions_top1_matches": handler_top[:1] == expected_handler[:1],
            "v2_top1_matches": v2_top[:1] == expected[:1]}


def v2_body(blob: bytes, binary_output: bool = True) -> tuple[bytes, int]:
    """A v2 binary request: the JPEG as a BYTES [1, 1] tensor, the top 5 of ``scores`` asked for."""
    metadata = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}], "outputs": [{"name": "scores"}]}
    body, header_len = request_body(metadata, binary=True, files={"image": blob}, classification=5)
    if not binary_output:  # JSON answers (readable here); the load asks for binary ones
        header = json.loads(body[:header_len])
        header.pop("parameters", None)
        header["outputs"][0]["parameters"]["binary_data"] = False
        raw = json.dumps(header).encode()
        return raw + body[header_len:], len(raw)
    assert header_len is not None
    return body, header_len


def wrk(url: str, body: Path, concurrency: int, seconds: float, cpus: str, header_len: int | None,
        content_type: str) -> dict:
    threads = max(1, min(concurrency, len(_cpu_list(cpus))))
    env = dict(os.environ, BODY_FILE=str(body), HEADER_LEN=str(header_len or ""), CONTENT_TYPE=content_type)
    command = ["taskset", "-c", cpus, "wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
               "--timeout", "10s", "-s", str(HERE / "post.lua"), url]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("WRKJSON"))
    result = json.loads(line.split(" ", 1)[1])
    errors = sum(value for key, value in result.items() if key.startswith("err_"))
    return {"img_per_s": result["requests"] / (result["duration_us"] / 1e6), "p50_ms": result["p50_us"] / 1000,
            "p99_ms": result["p99_us"] / 1000, "errors": errors,
            "error_kinds": {key: value for key, value in result.items() if key.startswith("err_") and value}}


def grpc_load(http: int, grpc: int, image: Path, concurrency: int, seconds: float, cpus: str) -> dict:
    processes = max(1, min(len(_cpu_list(cpus)), concurrency // 16 or 1))
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = ["taskset", "-c", cpus, sys.executable, "-m", "inferd", "bench", "-m", "resnet", "--url",
                   f"http://127.0.0.1:{http}", "--grpc", f"127.0.0.1:{grpc}", "--binary", "--input-file",
                   f"image={image}", "--classification", "5", "--concurrency", str(concurrency), "--duration",
                   str(seconds), "--warmup", "2", "--processes", str(processes), "--json", out.name]
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ,
                              PYTHONPATH=src_path()))
        written = Path(out.name).read_text()
    if not written:
        raise RuntimeError(f"inferd bench --grpc failed: {(done.stdout + done.stderr)[-800:]}")
    row = json.loads(written)["rows"][0]
    return {"img_per_s": row["rps"], "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"], "errors": row["errors"],
            "error_kinds": row.get("failures", {})}


def profiled_load(process: subprocess.Popen[bytes], case: tuple, root: Path, args: argparse.Namespace) -> dict:
    """One more v2 binary HTTP load at the highest concurrency, the server tree under py-spy: where
    each process's CPU goes while the GPU waits for work (kept apart from the measured loads)."""
    url, body_path, length, content_type = case
    concurrency, seconds = max(map(int, args.concurrency.split(","))), min(args.seconds, 5.0)
    return profiled(process.pid, seconds, root / "pyspy.txt",
                    lambda: wrk(url, body_path, concurrency, seconds, args.client_cpus, length, content_type),
                    f"v2 binary HTTP c={concurrency}, {seconds:.0f} s")


def _cpu_list(spec: str) -> list[int]:
    cpus: list[int] = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return "CPU: " + line.split(":", 1)[1].strip()
    return "CPU: " + platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every step on the CPU with a small CNN")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds measured per load")
    parser.add_argument("--concurrency", default="1,64,256")
    parser.add_argument("--workers", type=int, default=4, help="inferd serve --workers (0: one process)")
    cores = os.cpu_count() or 2
    parser.add_argument("--server-cpus", default=f"0-{max(cores // 2 - 1, 0)}")
    parser.add_argument("--client-cpus", default=f"{cores // 2}-{cores - 1}" if cores > 1 else "0")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="after the measured loads, one more under py-spy (where installed)")
    parser.add_argument("--start-timeout", type=float, default=300, help="seconds each setup may take to get ready")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    mode = SMOKE if args.smoke else FULL
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_resnet.py: no CUDA device; run with --smoke to check the script on the CPU")
    device = torch.device("cpu" if args.smoke else "cuda:0")
    name = device_name(device)
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="inferd-gpu-resnet-"))
    model = build_model(args.smoke)
    blobs = jpegs(mode["image"])
    image_path = root / "image.jpg"
    image_path.write_bytes(blobs[0])

    bare_seconds = max(args.seconds / 5, 1.0)
    bare = bare_loop(build_model(args.smoke), mode, device, bare_seconds)
    decode = decode_rate(blobs, mode, device, bare_seconds)
    limit = max(row["img_per_s"] for key, row in bare.items() if key != "batch_1_cuda_graph")
    batch_one_ms = min(row["ms_per_batch"] for key, row in bare.items() if row["batch"] == 1)
    for key, row in bare.items():
        print(f"bare {key:20} {row['img_per_s']:10.0f} img/s {row['ms_per_batch']:8.3f} ms/batch", flush=True)
    print(f"decode+resize {decode['img_per_s']:.0f} img/s ({decode['size'][1]}x{decode['size'][0]} JPEG)", flush=True)

    if args.workers and args.smoke:
        args.workers = min(args.workers, 2)
    started = time.monotonic()
    process, http, grpc, served_setup, failed_setups = start_first_that_serves(root, model, mode, device, args)
    load_s = time.monotonic() - started
    mode = served_setup
    rows = []
    try:
        try:
            answers = check_answers(http, blobs[0], model, mode)
        except (RuntimeError, OSError, ValueError) as error:  # requests' errors are OSErrors; the loads still run
            answers = {"error": str(error)[-800:]}
        print(f"answers: {answers}", flush=True)
        header_body, header_len = v2_body(blobs[0])
        binary_path = root / "v2.bin"
        binary_path.write_bytes(header_body)
        http_cases = {
            "predictions": (f"http://127.0.0.1:{http}/predictions/classifier", image_path, None, "image/jpeg"),
            "v2_binary_http": (f"http://127.0.0.1:{http}/v2/models/resnet/infer", binary_path, header_len,
                               "application/octet-stream"),
        }
        for concurrency in map(int, args.concurrency.split(",")):
            for path in ("predictions", "v2_binary_http", "v2_grpc"):
                model = "classifier" if path == "predictions" else "resnet"
                stats = model_stats(f"http://127.0.0.1:{http}", model)
                try:
                    if path == "v2_grpc":  # inferd bench warms up by itself
                        result = grpc_load(http, grpc, image_path, concurrency, args.seconds, args.client_cpus)
                    else:
                        url, body_path, length, content_type = http_cases[path]
                        wrk(url, body_path, concurrency, 2, args.client_cpus, length, content_type)  # warm-up
                        result = wrk(url, body_path, concurrency, args.seconds, args.client_cpus, length,
                                     content_type)
                except (RuntimeError, subprocess.CalledProcessError, StopIteration) as error:  # the next load runs
                    print(f"{path} c={concurrency} failed: {str(error)[-800:]}", flush=True)
                    result = {"img_per_s": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "errors": -1,
                              "failure": str(error)[-800:]}
                result.update(path=path, concurrency=concurrency, of_limit=result["img_per_s"] / limit,
                              server=where_the_time_went(stats, model_stats(f"http://127.0.0.1:{http}", model)))
                rows.append(result)
                print(f"{path:15} c={concurrency:<4} {result['img_per_s']:9.0f} img/s  p50 {result['p50_ms']:8.2f} ms"
                      f"  p99 {result['p99_ms']:8.2f} ms  errors {result['errors']}  "
                      f"{100 * result['of_limit']:5.1f} % of the limit", flush=True)
                if result["errors"]:
                    print(f"{'':15} errors by kind: {result.get('error_kinds')}", flush=True)
                served = result["server"]
                print(f"{'':15} server (warm-up included): batch {served['mean_batch']:.1f}, µs per request: queue "
                      f"{served['queue_us_per_request']:.0f}, input {served['compute_input_us_per_request']:.0f}, "
                      f"infer {served['compute_infer_us_per_request']:.0f}, "
                      f"output {served['compute_output_us_per_request']:.0f}", flush=True)
        profile = profiled_load(process, http_cases["v2_binary_http"], root, args) if args.profile else {}
    finally:
        stop(process)
    best = max(rows, key=lambda r: r["img_per_s"])
    c1 = [r for r in rows if r["concurrency"] == 1]
    summary = {
        "device": name, "mode": "smoke" if args.smoke else "full", "torch": torch.__version__,
        "torchvision": _version("torchvision"), "python": platform.python_version(),
        "server_cpus": args.server_cpus, "client_cpus": args.client_cpus, "workers": served_setup["workers"],
        "seconds": args.seconds, "model": "SmallCnn" if args.smoke else "resnet50", "config": mode,
        "failed_setups": failed_setups,
        "load_s": load_s, "bare": bare, "decode": decode, "limit_img_per_s": limit, "answers": answers,
        "served": rows,
        "profile": profile,
        "goal": {"best_of_limit": best["img_per_s"] / limit, "best": best,
                 "c1_over_bare_batch1_ms": {r["path"]: r["p50_ms"] - batch_one_ms for r in c1},
                 "targets": "of_limit >= 0.8, p99 < 50 ms at that load, c=1 within 1 ms of bare batch 1"},
    }
    stamp = time.strftime("%Y%m%dT%H%MZ", time.gmtime())
    tag = "smoke" if args.smoke else name.replace(" ", "_").replace("/", "_")
    out = args.out or HERE / "results" / f"gpu_resnet-{tag}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print("\n| path | conc | img/s | p50 ms | p99 ms | errors | of the limit |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['concurrency']} | {r['img_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['errors']} | {100 * r['of_limit']:.1f} % |")
    print(f"limit (bare loop, best batch): {limit:,.0f} img/s; bare batch 1: {batch_one_ms:.3f} ms; "
          f"median served c=1 p50: {statistics.median(r['p50_ms'] for r in c1):.2f} ms" if c1 else "")
    print(f"wrote {out}")


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:  # a version string is informative only
        return None


if __name__ == "__main__":
    main()
