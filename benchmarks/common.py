"""Shared helpers for the benchmark scripts: models, bodies, starting servers pinned, running wrk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SERVER_CPU = os.environ.get("SERVER_CPU", "0")
CLIENT_CPU = os.environ.get("CLIENT_CPU", "1")
TCK = os.sysconf("SC_CLK_TCK")


def make_mlp_models(root: Path) -> None:
    """The peers' M1 "mlp" (512 -> 1024 -> 1024 -> 10) and M2 "tiny" (16 -> 4), as TorchScript and ONNX."""
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
                              torch.nn.ReLU(), torch.nn.Linear(1024, 10)).eval()
    tiny = torch.nn.Linear(16, 4).eval()
    for name, model, dim in (("mlp", mlp, 512), ("tiny", tiny, 16)):
        root.mkdir(parents=True, exist_ok=True)
        torch.jit.script(model).save(str(root / f"{name}.pt"))
        torch.onnx.export(model, (torch.randn(2, dim),), str(root / f"{name}.onnx"), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "b"}, "output": {0: "b"}},
                          dynamo=False)


def write_model(root: Path, name: str, artifact: Path, dim: int, out: int, batching: bool,
                threads: int = 1) -> None:
    folder = root / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(artifact, folder / "1" / f"model{artifact.suffix}")
    config = f"max_batch_size = 32\nintra_op_threads = {threads}\n"
    if batching:
        config += "[dynamic_batching]\nmax_queue_delay_ms = 5\n"
    config += (f'[[input]]\nname = "input"\ndatatype = "FP32"\nshape = [{dim}]\n'
               f'[[output]]\nname = "output"\ndatatype = "FP32"\nshape = [{out}]\n')
    (folder / "config.toml").write_text(config)


def bodies(out: Path, name: str, dim: int, tensors: tuple[str, str] = ("input", "output"),
           seed: int = 0) -> tuple[Path, Path, int]:
    """A v2 JSON body and a v2 binary body (and its JSON header length) for one sample."""
    input_name, output_name = tensors
    x = np.random.default_rng(seed).standard_normal((1, dim)).astype(np.float32).round(6)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps({"inputs": [{"name": input_name, "shape": [1, dim], "datatype": "FP32",
                                                 "data": x.ravel().tolist()}]}))
    header = json.dumps({"inputs": [{"name": input_name, "shape": [1, dim], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": output_name, "parameters": {"binary_data": True}}]}).encode()
    bin_path = out / f"{name}.bin"
    bin_path.write_bytes(header + x.tobytes())
    return json_path, bin_path, len(header)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_inferd(root: Path, port: int, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "inferd", "serve", str(root),
               "--http-port", str(port), "--grpc-port", "0", "--log-level", "warning"]
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process)
    return process, time.monotonic() - start


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpus(spec: str) -> list[int]:
    """A taskset-style CPU list ("0-7", "0,2,4-5") as numbers."""
    found: list[int] = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        found.extend(range(int(low), int(high or low) + 1))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime summed over a process tree (as the peer scripts read /proc)."""
    total = 0.0
    for member in tree_pids(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TCK
    return total


def profile_tree(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling ``pid`` and its children for ``seconds`` (100 Hz, threads on a CPU only),
    its collapsed stacks written to ``out``; None where py-spy is not installed."""
    if shutil.which("py-spy") is None:
        return None
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
                             "--duration", str(max(1, round(seconds))), "--rate", "100", "--format", "raw",
                             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_frames(raw: Path, count: int = 12) -> dict[str, dict]:
    """A py-spy raw profile per process (its command, shortened): samples, and the functions most
    often running (the innermost frame) with their share of that process's samples."""
    processes: dict[str, dict[str, int]] = {}
    for line in raw.read_text(errors="replace").splitlines() if raw.exists() else []:
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit() or ";" not in stack:
            continue
        frames = stack.split(";")
        owner = next((f for f in reversed(frames) if f.startswith("process ")), "process ?")
        tops = processes.setdefault(owner[:90], {})
        tops[frames[-1]] = tops.get(frames[-1], 0) + int(samples)
    out = {}
    for owner, tops in processes.items():
        total = sum(tops.values())
        ranked = sorted(tops.items(), key=lambda item: -item[1])[:count]
        out[owner] = {"samples": total, "top": [[frame, round(n / total, 3)] for frame, n in ranked]}
    return out


def profiled(pid: int, seconds: float, raw: Path, load: Callable[[], object], title: str,
             processes: int = 0, frames: int = 12) -> dict[str, dict]:
    """``load`` run with the tree of ``pid`` under py-spy for ``seconds``: each process's busiest
    functions, printed (the ``processes`` busiest, all when 0, ``frames`` each) and returned; {}
    where py-spy is not installed."""
    spy = profile_tree(pid, seconds, raw)
    if spy is None:
        print("py-spy is not installed: no profile", flush=True)
        return {}
    load()
    spy.wait(60)
    profile = top_frames(raw)
    ranked = sorted(profile.items(), key=lambda item: -item[1]["samples"])
    print(f"py-spy, {title}:", flush=True)
    for owner, entry in ranked[:processes or None]:
        print(f"  {owner} ({entry['samples']} samples)")
        for frame, share in entry["top"][:frames]:
            print(f"    {100 * share:5.1f} %  {frame}")
    return profile


def wrk(url: str, body: Path, concurrency: int, seconds: int, header_len: int | None = None, threads: int = 1) -> dict:
    env = dict(os.environ, BODY_FILE=str(body), HEADER_LEN=str(header_len or ""))
    command = ["taskset", "-c", CLIENT_CPU, "wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s",
               "--timeout", "10s", "-s", str(HERE / "post.lua"), url]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("WRKJSON"))
    result = json.loads(line.split(" ", 1)[1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in result if k.startswith("err_"))
    return result


def measure(url: str, body: Path, concurrency: int, seconds: int, pid: int,
            header_len: int | None = None, warmup: int = 3) -> dict:
    wrk(url, body, concurrency, warmup, header_len)
    cpu = tree_cpu_seconds(pid)
    result = wrk(url, body, concurrency, seconds, header_len)
    result["cpu_ms_per_req"] = (tree_cpu_seconds(pid) - cpu) * 1000 / max(result["requests"], 1)
    return result


def model_stats(http: str, model: str) -> dict:
    """The model's v2 statistics (all versions summed): counts and nanoseconds, as served."""
    totals = {"inference_count": 0, "execution_count": 0}
    with urllib.request.urlopen(f"{http}/v2/models/{model}/stats", timeout=30) as response:
        rows = json.loads(response.read())["model_stats"]
    for row in rows:
        totals["inference_count"] += row["inference_count"]
        totals["execution_count"] += row["execution_count"]
        for key in ("queue", "compute_input", "compute_infer", "compute_output"):
            totals[f"{key}_ns"] = totals.get(f"{key}_ns", 0) + row["inference_stats"][key]["ns"]
    return totals


def where_the_time_went(before: dict, after: dict) -> dict:
    """Between two model_stats: the mean batch and each stage's mean µs per request (Triton's
    meaning: queue = waiting for an instance; compute_input = decode, copies to the device;
    compute_infer = the model; compute_output = copies back and the answers' tensors)."""
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    out = {"mean_batch": inferences / executions if executions else 0.0, "executions": executions}
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        spent = after.get(f"{key}_ns", 0) - before.get(f"{key}_ns", 0)
        out[f"{key}_us_per_request"] = spent / inferences / 1000 if inferences else 0.0
    return out


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server started with start_new_session=True, and everything it started."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def h2load(model: str, http: str, grpc: str, concurrency: int, seconds: int, out: Path, connections: int = 1,
           threads: int = 1) -> dict[str, float]:
    """gRPC load from h2load (nghttp2's; C): ``connections`` connections on ``threads`` threads,
    ``concurrency`` calls in flight on each; throughput and latency from its per-request log,
    failures from the server's statistics."""
    from inferd.bench.grpc_load import request_bytes

    metadata = json.loads(urllib.request.urlopen(f"{http}/v2/models/{model}", timeout=10).read())
    body = request_bytes(model, None, metadata, raw=True)
    message = out.with_suffix(".grpc")
    message.write_bytes(b"\0" + len(body).to_bytes(4, "big") + body)
    log = out.with_suffix(".log")

    def run(log_file: Path, duration: int = 0, requests: int = 0) -> list[list[str]]:
        log_file.unlink(missing_ok=True)  # h2load appends to its log
        amount = ["-n", str(requests)] if requests else ["-D", str(duration)]
        command = ["taskset", "-c", CLIENT_CPU, "h2load", *amount, "-c", str(connections), "-t", str(threads),
                   "-m", str(concurrency),
                   "-d", str(message), "-H", "content-type: application/grpc", "-H", "te: trailers",
                   f"--log-file={log_file}", f"http://{grpc}/inference.GRPCInferenceService/ModelInfer"]
        subprocess.run(command, check=True, capture_output=True)
        return [line.split("\t") for line in log_file.read_text().splitlines() if line]

    def counts() -> tuple[int, int]:
        stats = json.loads(urllib.request.urlopen(f"{http}/v2/models/{model}/stats", timeout=10).read())
        inference = stats["model_stats"][0]["inference_stats"]
        return int(inference["success"]["count"]), int(inference["fail"]["count"])

    warm = run(log, duration=3)  # warm-up; its rate sizes the measured run, which sends a fixed number
    # of requests so that none is cut off at the end (a cut request would count as a failure)
    rate = len(warm) / 3
    time.sleep(0.3)  # the warm-up's last calls settle
    before = counts()
    rows = run(log, requests=max(concurrency * connections * 10, int(rate * seconds)))
    after = counts()
    latencies = sorted(int(row[2]) / 1000 for row in rows if row[1] == "200")
    start = min(int(row[0]) for row in rows)
    end = max(int(row[0]) + int(row[2]) for row in rows)
    return {"rps": len(latencies) / ((end - start) / 1e6), "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[int(len(latencies) * 0.99)],
            "errors": len(rows) - len(latencies) + after[1] - before[1],
            "server_success": after[0] - before[0]}
