"""Two sets of `inferd serve` flags side by side: both servers up at once, loaded in turn, case by case.

    python benchmarks/flags_ab.py --a "--keep-freed-memory 0" --b "" [--workers 0]
        [--cases image:binary:8,mlp:json:64,tiny:json:64] [--rounds 4] [--seconds 4]

The models are `workers.py`'s (the peers' tiny and mlp TorchScript models, a 3 x 224 x 224 image
one; dynamic batching). Both server trees are pinned to --server-cpus, wrk to --client-cpus; within
a round A and B are loaded back to back (who goes first alternates), so the machine's mood falls
on both. Reports per case each round's req/s, CPU ms per request and minor page faults per
request (the whole server tree, from /proc; a process that exits meanwhile drops out) of A and
B, wrk's errors (non-2xx answers, socket errors) where there were any, and the median of the
paired ratios B / A.
Pairs taken minutes apart on this shared machine move by +-30 %; pairs seconds apart are what to
quote, and a ratio is only as good as its spread over the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    HERE,
    free_port,
    stop,
    tree_cpu_seconds,
    tree_pids,
    wait_ready,
    wrk,
)
from workers import prepare


def minor_faults(root: int) -> int:
    """Minor page faults of a process tree so far (field 10 of /proc/PID/stat)."""
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, IndexError, ValueError):  # a process that just ended
            total += int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
    return total


def start(flags: str, workers: int, scratch: Path, server_cpus: str, tag: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = (scratch / f"server-{tag}.log").open("ab")
    process = subprocess.Popen(["taskset", "-c", server_cpus, sys.executable, "-m", "inferd", "serve",
                                str(scratch / "repo"), "--http-port", str(port), "--grpc-port", "0",
                                "--workers", str(workers), "--log-level", "warning", *shlex.split(flags)],
                               stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process)
    return process, port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--a", default="", help="flags of server A (the base), as one string")
    parser.add_argument("--b", default="", help="flags of server B")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--cases", default="image:binary:8,mlp:json:64,tiny:json:64",
                        help="MODEL:json|binary:CONCURRENCY, comma-separated")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--server-cpus", default=os.environ.get("SERVER_CPU", "0"))
    parser.add_argument("--client-cpus", default=os.environ.get("CLIENT_CPU", "1"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "flags_ab.json")
    args = parser.parse_args()
    os.environ["CLIENT_CPU"] = args.client_cpus  # common.wrk pins the load here
    cases = [(model, kind, int(c)) for model, kind, c in (case.split(":") for case in args.cases.split(","))]
    scratch = Path(tempfile.mkdtemp(prefix="inferd-flags-ab-"))
    lengths = prepare(scratch)
    servers = {tag: start(flags, args.workers, scratch, args.server_cpus, tag) for tag, flags in (("a", args.a),
                                                                                                   ("b", args.b))}
    report: dict = {"a": args.a, "b": args.b, "workers": args.workers, "rounds": args.rounds,
                    "seconds": args.seconds, "cases": {}}
    try:
        for model, kind, concurrency in cases:
            name = f"{model} {kind} c={concurrency}"
            body = scratch / "bodies" / f"{model}.{'json' if kind == 'json' else 'bin'}"
            rows = []
            for round_ in range(args.rounds):
                row = {}
                for tag in ("a", "b") if round_ % 2 == 0 else ("b", "a"):  # who goes first alternates
                    process, port = servers[tag]
                    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
                    header = lengths[model] if kind == "binary" else None
                    wrk(url, body, concurrency, 1, header)
                    cpu, faults = tree_cpu_seconds(process.pid), minor_faults(process.pid)
                    result = wrk(url, body, concurrency, args.seconds, header)
                    requests = max(result["requests"], 1)
                    result["cpu_ms_per_req"] = (tree_cpu_seconds(process.pid) - cpu) * 1000 / requests
                    result["faults_per_req"] = (minor_faults(process.pid) - faults) / requests
                    row[tag] = result
                rows.append(row)
                print(f"{name:20} A {row['a']['rps']:8,.0f} req/s {row['a']['cpu_ms_per_req']:.3f} ms "
                      f"{row['a']['faults_per_req']:6.1f} faults | B {row['b']['rps']:8,.0f} req/s "
                      f"{row['b']['cpu_ms_per_req']:.3f} ms {row['b']['faults_per_req']:6.1f} faults | "
                      f"B/A {row['b']['rps'] / row['a']['rps']:.2f}"
                      + (f"  ERRORS A {row['a']['errors']} B {row['b']['errors']}"
                         if row["a"]["errors"] or row["b"]["errors"] else ""), flush=True)
            ratio = statistics.median(row["b"]["rps"] / row["a"]["rps"] for row in rows)
            report["cases"][name] = {"rounds": rows, "median_ratio_b_over_a": ratio}
            print(f"{name:20} median B/A {ratio:.2f}", flush=True)
    finally:
        for process, _ in servers.values():
            stop(process)
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
