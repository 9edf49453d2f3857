"""`inferd serve --workers N` across cores (issue 15): the peers' `tiny` model with dynamic
batching over v2 HTTP JSON (wrk) and v2 gRPC (nghttp2's h2load), at each N, in one run.

    python benchmarks/scaling.py [--workers 0,1,2,4,8] [--server-cpus 0-7] [--client-cpus 8-15]
        [--seconds 8] [--rounds 1] [--http-connections 256] [--grpc-connections 32] [--grpc-streams 8]
        [--triton DIR] [--out results/scaling-<time>.json]

The server tree (the model process and its workers) is pinned to --server-cpus and the load to
--client-cpus, with a load-generator thread per client core. The load is the same at every N and
sized for the largest (many connections, so SO_REUSEPORT spreads them over the workers). N = 0 is
one process (today's default). The report gives req/s, p50/p99, the tree's CPU per request, and
each N's efficiency against the issue's goal: req/s ÷ (N × req/s at N = 1), goal ≥ 0.7 up to 8.

--triton DIR (what `benchmarks/device/kit.sh` packs: real NVIDIA Triton 2.51's tritonserver, its
Python backend and stub, and the peer harness's Python-backend model) adds Triton serving the same
TorchScript file with the same batching (max 32, 5 ms, one instance) on the same cores under the same
load, and each N's req/s as a multiple of Triton's: the issue's "ahead of Triton at every N". The
stub embeds the Python that runs this script (it must hold torch and a shared libpython).

Needs as many free cores as the largest N plus the model process plus the load: a 16-core machine
for N up to 8 (`benchmarks/device/run.sh` runs it on a lent one). On 2 cores it only shows that
the script works.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from common import (
    HERE,
    cpus,
    free_port,
    model_stats,
    profiled,
    stop,
    tree_cpu_seconds,
    wait_ready,
    where_the_time_went,
)


def start_inferd(workers: int, scratch: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str, int]:
    port, grpc_port = free_port(), free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = (scratch / f"scaling-{workers}.log").open("ab")
    process = subprocess.Popen(["taskset", "-c", args.server_cpus, sys.executable, "-m", "inferd", "serve",
                                str(scratch / "repo"), "--http-port", str(port), "--grpc-port", str(grpc_port),
                                "--workers", str(workers), "--log-level", "warning"],
                               stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return process, f"http://127.0.0.1:{port}", grpc_port


def start_triton(home: Path, scratch: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str, int]:
    """Triton with the peer harness's settings for `tiny`: Python backend, one instance, max batch 32, 5 ms."""
    model = scratch / "triton-repo" / "tiny"
    (model / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(scratch / "artifacts" / "tiny.pt", model / "1" / "model.pt")
    shutil.copy(home / "model.py", model / "1" / "model.py")
    (model / "config.pbtxt").write_text(
        'name: "tiny"\nbackend: "python"\nmax_batch_size: 32\n'
        "dynamic_batching { max_queue_delay_microseconds: 5000 }\n"
        'input [ { name: "input" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
        'output [ { name: "output" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n")
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    python_bin = stub_python(home, scratch)
    # the stub embeds this Python (found as `python3` on PATH) and loads its shared libpython
    libraries = [str(home / "lib"), sysconfig.get_config_var("LIBDIR") or "", os.environ.get("LD_LIBRARY_PATH", "")]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               LD_LIBRARY_PATH=":".join(part for part in libraries if part),
               PATH=f"{python_bin}:{os.environ['PATH']}")
    log = (scratch / "scaling-triton.log").open("ab")
    process = subprocess.Popen(["taskset", "-c", args.server_cpus, str(home / "bin" / "tritonserver"),
                                f"--model-repository={scratch / 'triton-repo'}",
                                f"--backend-directory={home / 'backends'}",
                                f"--backend-config=python,shm-region-prefix-name=inferd_scaling_{os.getpid()}_",
                                "--http-address=127.0.0.1", f"--http-port={port}",
                                "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
                                "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}",
                                "--allow-gpu-metrics=false", "--log-verbose=0"],
                               stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return process, f"http://127.0.0.1:{port}", grpc_port


def stub_python(home: Path, scratch: Path) -> Path:
    """The bin folder of the Python that Triton's Python-backend stub embeds. Triton 2.51's stub
    answers empty or wrongly sized outputs under numpy 2 (HTTP: 500 "output tensor shape does not
    match size of output"; gRPC: no contents), so where the kit packs a numpy 1.x wheel, a venv over
    this Python (its torch) with that numpy unpacked first on its path; else this Python as it is."""
    wheels = sorted((home / "numpy").glob("numpy-1.*.whl"))
    if not wheels:
        return Path(sys.executable).parent
    venv = scratch / "triton-venv"
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
        site = next((venv / "lib").glob("python3*/site-packages"))
        with zipfile.ZipFile(wheels[-1]) as wheel:  # a wheel is a zip of what site-packages holds
            wheel.extractall(site)
    return venv / "bin"


def check_answer(http: str, scratch: Path) -> None:
    """One request over v2 HTTP JSON, the answer compared with the model run here: a server that
    answers errors or wrong numbers fast must not be measured as fast."""
    import numpy as np
    import torch

    body = json.loads((scratch / "bodies" / "tiny.json").read_text())
    x = np.asarray(body["inputs"][0]["data"], dtype=np.float32).reshape(body["inputs"][0]["shape"])
    request = urllib.request.Request(f"{http}/v2/models/tiny/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{http} answered {error.code}: {error.read()[:300]!r}") from None
    with torch.inference_mode():
        expected = torch.jit.load(str(scratch / "artifacts" / "tiny.pt"))(torch.from_numpy(x)).numpy()
    got = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(expected.shape)
    if not np.allclose(got, expected, atol=1e-5):
        raise RuntimeError(f"{http} answered {got.ravel()[:4]}, the model {expected.ravel()[:4]}")


def run_setting(server: tuple[subprocess.Popen[bytes], str, int], scratch: Path,
                args: argparse.Namespace) -> dict[str, dict]:
    from common import h2load, wrk

    process, http, grpc_port = server
    threads = len(cpus(args.client_cpus))
    results: dict[str, dict] = {}
    try:
        wait_ready(f"{http}/v2/health/ready", process)
        check_answer(http, scratch)
        url = f"{http}/v2/models/tiny/infer"
        body = scratch / "bodies" / "tiny.json"
        connections = max(args.http_connections, threads)
        wrk(url, body, connections, 2, threads=threads)  # warm-up
        cpu, stats = tree_cpu_seconds(process.pid), model_stats(http, "tiny")
        row = wrk(url, body, connections, args.seconds, threads=threads)
        results["http"] = {"rps": row["rps"], "p50_ms": row["p50_us"] / 1000, "p99_ms": row["p99_us"] / 1000,
                           "cpu_ms_per_req": (tree_cpu_seconds(process.pid) - cpu) * 1000 / max(row["requests"], 1),
                           "errors": row["errors"], "server": where_the_time_went(stats, model_stats(http, "tiny"))}
        cpu, stats = tree_cpu_seconds(process.pid), model_stats(http, "tiny")
        served = h2load("tiny", http, f"127.0.0.1:{grpc_port}", args.grpc_streams, args.seconds,
                        scratch / "h2load.json", connections=max(args.grpc_connections, threads), threads=threads)
        results["grpc"] = {"rps": served["rps"], "p50_ms": served["p50_ms"], "p99_ms": served["p99_ms"],
                           "cpu_ms_per_req": (tree_cpu_seconds(process.pid) - cpu) * 1000
                           / max(served["server_success"], 1),
                           "errors": served["errors"], "server": where_the_time_went(stats, model_stats(http, "tiny"))}
        if args.profile:  # one more HTTP load, apart from the measured ones: where each process's CPU goes
            results["profile"] = profiled(process.pid, 3, scratch / "pyspy.txt",
                                          lambda: wrk(url, body, connections, 3, threads=threads),
                                          "HTTP, the two busiest processes", processes=2, frames=8)
    finally:
        stop(process)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="0,1,2,4,8")
    parser.add_argument("--server-cpus", default="0-7")
    parser.add_argument("--client-cpus", default="8-15")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--http-connections", type=int, default=256)
    parser.add_argument("--grpc-connections", type=int, default=32)
    parser.add_argument("--grpc-streams", type=int, default=8, help="calls in flight on each gRPC connection")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="after each setting's measured loads, 3 s more under py-spy (where installed)")
    parser.add_argument("--triton", type=Path, help="an unpacked Triton kit (see the docstring); adds Triton's row")
    parser.add_argument("--out", type=Path,
                        default=HERE / "results" / f"scaling-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json")
    args = parser.parse_args()
    os.environ["CLIENT_CPU"] = args.client_cpus  # common.wrk and common.h2load pin the load here
    settings = [int(n) for n in args.workers.split(",")]
    from workers import prepare

    scratch = Path(tempfile.mkdtemp(prefix="inferd-scaling-"))
    prepare(scratch)
    names = [str(n) for n in settings] + (["triton"] if args.triton else [])
    runs: dict[str, list[dict[str, dict]]] = {name: [] for name in names}
    failed: dict[str, str] = {}
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            if name in failed:
                continue
            try:
                server = (start_triton(args.triton, scratch, args) if name == "triton"
                          else start_inferd(int(name), scratch, args))
                runs[name].append(run_setting(server, scratch, args))
            except Exception as exc:  # Triton that does not start here must not cost inferd's figures
                if name != "triton":
                    raise
                log = (scratch / "scaling-triton.log").read_text(errors="replace")[-1500:]
                failed[name] = f"{exc}; its log ends: {log}"
                print(f"Triton failed: {failed[name]}", flush=True)
                continue
            label = "Triton" if name == "triton" else f"--workers {name}"
            print(f"round {round_ + 1} {label}: " + ", ".join(
                f"{wire} {r['rps']:,.0f} req/s" for wire, r in runs[name][-1].items() if wire != "profile"), flush=True)
    report: dict = {"settings": settings, "rounds": args.rounds, "seconds": args.seconds, "cpu_count": os.cpu_count(),
                    "server_cpus": args.server_cpus, "client_cpus": args.client_cpus, "wires": {},
                    "triton_failed": failed.get("triton")}
    print(f"{'wire':5} {'N':>6} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>10} {'vs N=1':>7} "
          f"{'efficiency':>10} {'vs Triton':>9} {'batch':>6} {'queue µs':>8}")
    for wire in ("http", "grpc"):
        medians = {name: {k: statistics.median(r[wire][k] for r in runs[name])
                          for k in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req")} for name in names if runs[name]}
        clean = {name for name in medians if not any(r[wire]["errors"] for r in runs[name])}
        one = medians.get("1", {}).get("rps") if "1" in clean else None
        triton = medians.get("triton", {}).get("rps") if "triton" in clean else None  # no ratio to errors
        rows = {}
        for name, m in medians.items():
            n = 0 if name == "triton" else int(name)
            versus = m["rps"] / one if one and name != "triton" else float("nan")
            efficiency = versus / n if one and n else float("nan")
            ahead = m["rps"] / triton if triton and name != "triton" else float("nan")
            rows[name] = {**m, "vs_one_worker": versus, "efficiency": efficiency, "vs_triton": ahead,
                          "errors": sum(r[wire]["errors"] for r in runs[name]),
                          "server": [r[wire]["server"] for r in runs[name]],
                          "profile": [r["profile"] for r in runs[name] if "profile" in r] if wire == "http" else []}
            print(f"{wire:5} {name:>6} {m['rps']:10,.0f} {m['p50_ms']:8.2f} {m['p99_ms']:8.2f} "
                  f"{m['cpu_ms_per_req']:10.3f} {versus:7.2f} {efficiency:10.2f} {ahead:9.2f} "
                  f"{statistics.median(r[wire]['server']['mean_batch'] for r in runs[name]):6.1f} "
                  f"{statistics.median(r[wire]['server']['queue_us_per_request'] for r in runs[name]):8.0f}")
        report["wires"][wire] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
