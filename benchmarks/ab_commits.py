"""Two builds of inferd side by side in one run: did a change make the server slower?

    python benchmarks/ab_commits.py --before REV [--after REV] [--rounds 3] [--seconds 8] [--grpc]
                                    [--image] [--large] [--only image] [--serve-args "--keep-freed-memory 0"]

Each build (a git revision checked out into a temporary worktree, or the working tree) serves the
peers' `mlp` and `tiny` TorchScript models with dynamic batching (server on CPU 0); wrk loads v2 JSON
and v2 binary bodies at c=1 and c=64 from CPU 1. The builds alternate round by round (before, after,
after, before, ...) so the machine's drift hits both alike; the report gives per-build medians, the
after/before ratio of req/s and of server CPU per request (the steadier figure on a shared machine).
``--image`` adds `workers.py`'s 3 x 224 x 224 image model over v2 binary at c=8 (602 KB bodies);
``--large`` adds an ONNX identity model over v2 binary at c=1 with 16 MiB each way (the cost of a
large answer); ``--serve-args`` are more `inferd serve` flags for both builds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import (
    CLIENT_CPU,
    HERE,
    SERVER_CPU,
    bodies,
    free_port,
    make_mlp_models,
    measure,
    stop,
    wait_ready,
    write_model,
)

ROOT = HERE.parent
CASES = [("mlp", 512, "json", 1), ("mlp", 512, "json", 64), ("mlp", 512, "binary", 64),
         ("tiny", 16, "json", 1), ("tiny", 16, "json", 64), ("tiny", 16, "binary", 64)]
GRPC_CASES = [("mlp", 1), ("mlp", 64), ("tiny", 1), ("tiny", 64)]
IMAGE_CASE = ("image", 3 * 224 * 224, "binary", 8)
LARGE_CASE = ("identity", 4 * 1024 * 1024, "binary", 1)  # 16 MiB of FP32 in, the same out


def identity_body(out: Path, count: int) -> int:
    """A v2 binary body of ``count`` FP32 for the identity model, all outputs binary; its header length."""
    header = json.dumps({"inputs": [{"name": "x", "shape": [count], "datatype": "FP32",
                                     "parameters": {"binary_data_size": count * 4}}],
                         "parameters": {"binary_data_output": True}}).encode()
    out.mkdir(parents=True, exist_ok=True)
    (out / "identity.bin").write_bytes(header + np.arange(count, dtype=np.float32).tobytes())
    return len(header)


def checkout(revision: str, into: Path) -> Path:
    """A source tree of ``revision`` (the working tree for "."), returned as the folder holding src/."""
    if revision == ".":
        return ROOT
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(into), revision], check=True)
    return into


def grpc_bench(http: int, grpc: int, model: str, concurrency: int, seconds: int, env: dict[str, str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(["taskset", "-c", CLIENT_CPU, sys.executable, "-m", "inferd", "bench", "-m", model, "--url",
                        f"http://127.0.0.1:{http}", "--grpc", f"127.0.0.1:{grpc}", "--binary", "--concurrency",
                        str(concurrency), "--duration", str(seconds), "--warmup", "3", "--json", out.name],
                       check=True, capture_output=True, env=env)
        row = json.loads(Path(out.name).read_text())["rows"][0]
    return {"rps": row["rps"], "cpu_ms_per_req": float("nan"), "errors": row["errors"]}


def run_build(src_root: Path, repo: Path, body_dir: Path, seconds: int, log: Path, grpc: bool,
              cases: list[tuple[str, int, str, int]], serve_args: list[str]) -> dict[str, dict]:
    port, grpc_port = free_port(), free_port() if grpc else 0
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(src_root / "src"))
    process = subprocess.Popen(["taskset", "-c", SERVER_CPU, sys.executable, "-m", "inferd", "serve", str(repo),
                                "--http-port", str(port), "--grpc-port", str(grpc_port), "--log-level", "warning",
                                *serve_args],
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    results = {}
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process)
        if grpc:
            for model, concurrency in GRPC_CASES:
                results[f"{model} grpc c={concurrency}"] = grpc_bench(port, grpc_port, model, concurrency, seconds,
                                                                      env)
            return results
        for model, _, kind, concurrency in cases:
            url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
            body = body_dir / f"{model}.{'json' if kind == 'json' else 'bin'}"
            header_len = json.loads((body_dir / "header_lengths.json").read_text())[model] if kind == "binary" else None
            results[f"{model} {kind} c={concurrency}"] = measure(url, body, concurrency, seconds, process.pid,
                                                                 header_len)
    finally:
        stop(process)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="git revision of the baseline")
    parser.add_argument("--after", default=".", help="git revision to compare ('.' = the working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--grpc", action="store_true", help="gRPC cases instead of HTTP")
    parser.add_argument("--image", action="store_true", help="add 602 KB image bodies over v2 binary at c=8")
    parser.add_argument("--large", action="store_true", help="add 16 MiB identity bodies over v2 binary at c=1")
    parser.add_argument("--only", default="", help="only these models' cases, e.g. image or mlp,tiny")
    parser.add_argument("--serve-args", default="", help="more `inferd serve` flags, for both builds")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ab_commits.json")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="inferd-ab-"))
    make_mlp_models(scratch / "artifacts")
    cases = [*CASES, *([IMAGE_CASE] if args.image else []), *([LARGE_CASE] if args.large else [])]
    if args.only:
        cases = [case for case in cases if case[0] in args.only.split(",")]
    if args.image:
        from workers import make_image_model

        make_image_model(scratch / "artifacts" / "image.pt")
    lengths = {}
    if args.large:
        from shared_memory import write_identity

        write_identity(scratch / "repo")
        lengths["identity"] = identity_body(scratch / "bodies", LARGE_CASE[1])
    for model, dim, _, _ in cases:
        if model == "identity":
            continue
        out = {"mlp": 10, "tiny": 4, "image": 3}[model]
        write_model(scratch / "repo", model, scratch / "artifacts" / f"{model}.pt", dim, out, batching=True)
        _, _, lengths[model] = bodies(scratch / "bodies", model, dim)
    (scratch / "bodies" / "header_lengths.json").write_text(json.dumps(lengths))
    builds = {"before": checkout(args.before, scratch / "before"), "after": checkout(args.after, scratch / "after")}
    runs: dict[str, list[dict[str, dict]]] = {"before": [], "after": []}
    try:
        for round_ in range(args.rounds):
            order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
            for name in order:
                runs[name].append(run_build(builds[name], scratch / "repo", scratch / "bodies", args.seconds,
                                            scratch / f"{name}-{round_}.log", args.grpc, cases,
                                            shlex.split(args.serve_args)))
                print(f"round {round_ + 1} {name} done", flush=True)
    finally:
        for path in builds.values():
            if path != ROOT:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)
    report = {"before": args.before, "after": args.after, "rounds": args.rounds, "seconds": args.seconds,
              "serve_args": args.serve_args, "cases": {}}
    print(f"{'case':24} {'before req/s':>13} {'after req/s':>12} {'ratio':>6} {'CPU ms/req b→a':>18} {'ratio':>6}")
    for case in runs["before"][0]:
        med = {name: {key: statistics.median(r[case][key] for r in runs[name]) for key in ("rps", "cpu_ms_per_req")}
               for name in runs}
        errors = sum(r[case]["errors"] for name in runs for r in runs[name])
        rps_ratio = med["after"]["rps"] / med["before"]["rps"]
        cpu_ratio = med["after"]["cpu_ms_per_req"] / med["before"]["cpu_ms_per_req"]
        report["cases"][case] = {**{f"{n}_{k}": v for n in med for k, v in med[n].items()}, "rps_ratio": rps_ratio,
                                 "cpu_ratio": cpu_ratio, "errors": errors}
        print(f"{case:24} {med['before']['rps']:13,.0f} {med['after']['rps']:12,.0f} {rps_ratio:6.2f} "
              f"{med['before']['cpu_ms_per_req']:8.3f} → {med['after']['cpu_ms_per_req']:.3f} {cpu_ratio:6.2f}"
              + (f"  errors: {errors}" if errors else ""))
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
