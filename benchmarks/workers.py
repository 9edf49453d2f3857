"""`inferd serve --workers N` beside the single process, in one run: what the hop costs, what it buys.

    python benchmarks/workers.py [--workers 0,1,2] [--rounds 2] [--seconds 6] [--server-cpus 0] [--client-cpus 1]

Each setting serves the peers' `tiny` and `mlp` TorchScript models and a 3 x 224 x 224 `image` one
(channel means: the bytes cost, the model does not) with dynamic batching; the
whole server tree (model process and workers) is pinned to --server-cpus, the load to
--client-cpus. wrk loads v2 JSON and binary bodies, `inferd bench --grpc` loads v2 gRPC. Settings
alternate round by round; the report gives per-setting medians of req/s and of the server tree's
CPU per request, and each setting's ratio to the first (0 = one process, today's default).
On a 2-core machine the point is the overhead of N=1 against one process (same core); the scaling
with N needs as many free cores as workers plus the load generator's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import HERE, bodies, free_port, make_mlp_models, measure, stop, wait_ready, write_model

HTTP_CASES = [("tiny", "json", 1), ("tiny", "json", 64), ("tiny", "binary", 64), ("mlp", "json", 64),
              ("image", "binary", 8)]
GRPC_CASES = [("tiny", 1), ("tiny", 64), ("mlp", 64), ("image", 8)]
DIMS = {"tiny": 16, "mlp": 512, "image": 3 * 224 * 224}
OUTS = {"tiny": 4, "mlp": 10, "image": 3}


def make_image_model(path: Path) -> None:
    """A 3 x 224 x 224 FP32 image (602 KB, flattened) in, its channels' means out: the front end
    and the hop carry the bytes, the model costs next to nothing."""
    import torch

    class ChannelMeans(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], 3, -1).mean(dim=2)

    torch.jit.script(ChannelMeans()).save(str(path))


def prepare(scratch: Path) -> dict[str, int]:
    """The tiny, mlp and image models in scratch/repo (batching on), a v2 JSON and binary body for
    each in scratch/bodies; returns each binary body's JSON header length (also written there)."""
    make_mlp_models(scratch / "artifacts")
    make_image_model(scratch / "artifacts" / "image.pt")
    lengths = {}
    for model, dim in DIMS.items():
        write_model(scratch / "repo", model, scratch / "artifacts" / f"{model}.pt", dim, OUTS[model], batching=True)
        _, _, lengths[model] = bodies(scratch / "bodies", model, dim)
    (scratch / "bodies" / "header_lengths.json").write_text(json.dumps(lengths))
    return lengths


def grpc_bench(http: int, grpc: int, model: str, concurrency: int, seconds: int, client_cpus: str,
               env: dict[str, str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = ["taskset", "-c", client_cpus, sys.executable, "-m", "inferd", "bench", "-m", model, "--url",
                   f"http://127.0.0.1:{http}", "--grpc", f"127.0.0.1:{grpc}", "--binary", "--concurrency",
                   str(concurrency), "--duration", str(seconds), "--warmup", "2", "--json", out.name]
        done = subprocess.run(command, capture_output=True, env=env, text=True)
        written = Path(out.name).read_text()
        if not written:  # it exits 1 when any request failed, after writing its rows
            print(f"inferd bench failed ({model} grpc c={concurrency}): {(done.stdout + done.stderr)[-600:]}",
                  flush=True)
            return {"rps": float("nan"), "p50_ms": float("nan"), "cpu_ms_per_req": float("nan"), "errors": -1}
        row = json.loads(written)["rows"][0]
    return {"rps": row["rps"], "p50_ms": row.get("p50_ms", float("nan")), "cpu_ms_per_req": float("nan"),
            "errors": row["errors"]}


def run_setting(workers: int, scratch: Path, seconds: int, server_cpus: str, client_cpus: str) -> dict[str, dict]:
    port, grpc_port = free_port(), free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CLIENT_CPU=client_cpus)
    log = (scratch / f"workers-{workers}.log").open("ab")
    process = subprocess.Popen(["taskset", "-c", server_cpus, sys.executable, "-m", "inferd", "serve",
                                str(scratch / "repo"), "--http-port", str(port), "--grpc-port", str(grpc_port),
                                "--workers", str(workers), "--log-level", "warning"],
                               stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    lengths = json.loads((scratch / "bodies" / "header_lengths.json").read_text())
    results: dict[str, dict] = {}
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process)
        for model, kind, concurrency in HTTP_CASES:
            body = scratch / "bodies" / f"{model}.{'json' if kind == 'json' else 'bin'}"
            results[f"{model} {kind} c={concurrency}"] = measure(
                f"http://127.0.0.1:{port}/v2/models/{model}/infer", body, concurrency, seconds, process.pid,
                lengths[model] if kind == "binary" else None, warmup=2)
        for model, concurrency in GRPC_CASES:
            results[f"{model} grpc c={concurrency}"] = grpc_bench(port, grpc_port, model, concurrency, seconds,
                                                                  client_cpus, env)
    finally:
        stop(process)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="0,1,2", help="settings of --workers to compare; the first is the base")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--server-cpus", default=os.environ.get("SERVER_CPU", "0"))
    parser.add_argument("--client-cpus", default=os.environ.get("CLIENT_CPU", "1"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "workers.json")
    args = parser.parse_args()
    os.environ["CLIENT_CPU"] = args.client_cpus  # common.wrk pins the load here
    settings = [int(n) for n in args.workers.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="inferd-workers-bench-"))
    prepare(scratch)
    runs: dict[int, list[dict[str, dict]]] = {n: [] for n in settings}
    for round_ in range(args.rounds):
        for n in settings if round_ % 2 == 0 else reversed(settings):
            runs[n].append(run_setting(n, scratch, args.seconds, args.server_cpus, args.client_cpus))
            print(f"round {round_ + 1} --workers {n} done", flush=True)
    base = settings[0]
    report: dict = {"settings": settings, "rounds": args.rounds, "seconds": args.seconds,
                    "server_cpus": args.server_cpus, "client_cpus": args.client_cpus, "cases": {}}
    print(f"{'case':20} " + " ".join(f"{'N=' + str(n) + ' req/s':>13} {'CPU ms/req':>10} {'ratio':>6}"
                                     for n in settings))
    for case in runs[base][0]:
        med = {n: {k: statistics.median(r[case][k] for r in runs[n]) for k in ("rps", "cpu_ms_per_req")}
               for n in settings}
        errors = {n: sum(r[case]["errors"] for r in runs[n]) for n in settings}
        report["cases"][case] = {str(n): {**med[n], "ratio": med[n]["rps"] / med[base]["rps"], "errors": errors[n]}
                                 for n in settings}
        print(f"{case:20} " + " ".join(f"{med[n]['rps']:13,.0f} {med[n]['cpu_ms_per_req']:10.3f} "
                                       f"{med[n]['rps'] / med[base]['rps']:6.2f}" for n in settings)
              + (f"  errors: {errors}" if any(errors.values()) else ""))
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
