"""What a large tensor costs the server, over HTTP (v2 binary) and gRPC (raw contents), in two builds.

    python benchmarks/large_answers.py --before REV [--after REV] [--size 16MiB] [--requests 8] [--rounds 3]

An ONNX Identity model (FP32 in, the same out) served by each build on CPU 0; tritonclient (as a
Triton user has it) on CPU 1 sends ``--requests`` requests one at a time per protocol and checks
every answer against its input. The builds alternate round by round; the report gives per-build
medians of wall time and of the server's CPU time per request (the steadier figure on a shared
machine), and writes results/large_answers-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ab_commits import ROOT, checkout
from common import CLIENT_CPU, HERE, SERVER_CPU, free_port, stop, tree_cpu_seconds, wait_ready
from shared_memory import size_bytes, write_identity

PROTOCOLS = ("http", "grpc")


def client(protocol: str, url: str, nbytes: int, requests: int, server_pid: int) -> dict[str, float]:
    """Runs pinned to the client CPU (this process re-run with --client)."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http = protocol == "http"
    lib = httpclient if http else grpcclient
    given = np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)
    tensor = lib.InferInput("x", [given.size], "FP32")
    tensor.set_data_from_numpy(given, **({"binary_data": True} if http else {}))
    outputs = [lib.InferRequestedOutput("y", **({"binary_data": True} if http else {}))]
    connection = lib.InferenceServerClient(url)
    connection.infer("identity", [tensor], outputs=outputs)  # warm
    cpu, started = tree_cpu_seconds(server_pid), time.perf_counter()
    for _ in range(requests):
        answer = connection.infer("identity", [tensor], outputs=outputs).as_numpy("y")
        if not np.array_equal(answer, given):
            raise SystemExit(f"{protocol}: an answer differs from its input")
    return {"wall_ms": (time.perf_counter() - started) * 1000 / requests,
            "cpu_ms": (tree_cpu_seconds(server_pid) - cpu) * 1000 / requests}


def run_build(src: Path, repo: Path, nbytes: int, requests: int, log: Path) -> dict[str, dict[str, float]]:
    http, grpc = free_port(), free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(src / "src"))
    process = subprocess.Popen(["taskset", "-c", SERVER_CPU, sys.executable, "-m", "inferd", "serve", str(repo),
                                "--http-port", str(http), "--grpc-port", str(grpc), "--log-level", "warning"],
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{http}/v2/health/ready", process)
        results = {}
        for protocol in PROTOCOLS:
            url = f"127.0.0.1:{http if protocol == 'http' else grpc}"
            out = subprocess.run(["taskset", "-c", CLIENT_CPU, sys.executable, __file__, "--client", protocol,
                                  "--url", url, "--bytes", str(nbytes), "--requests", str(requests),
                                  "--pid", str(process.pid)], check=True, capture_output=True, text=True).stdout
            results[protocol] = json.loads(out.strip().splitlines()[-1])
        return results
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before")
    parser.add_argument("--after", default=".")
    parser.add_argument("--size", default="16MiB")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", choices=PROTOCOLS)  # internal: the measuring child
    parser.add_argument("--url")
    parser.add_argument("--bytes", type=int)
    parser.add_argument("--pid", type=int)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(client(args.client, args.url, args.bytes, args.requests, args.pid)))
        return
    if not args.before:
        parser.error("--before is required")
    scratch = Path(tempfile.mkdtemp(prefix="inferd-large-"))
    write_identity(scratch / "repo")
    nbytes = size_bytes(args.size)
    builds = {"before": checkout(args.before, scratch / "before"), "after": checkout(args.after, scratch / "after")}
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"before": [], "after": []}
    try:
        for round_ in range(args.rounds):
            for name in (["before", "after"] if round_ % 2 == 0 else ["after", "before"]):
                runs[name].append(run_build(builds[name], scratch / "repo", nbytes, args.requests,
                                            scratch / f"{name}-{round_}.log"))
                print(f"round {round_ + 1} {name} done", flush=True)
    finally:
        for path in builds.values():
            if path != ROOT:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)
    report: dict[str, object] = {"before": args.before, "after": args.after, "size": args.size,
                                 "requests": args.requests, "rounds": args.rounds, "protocols": {}}
    print(f"{'protocol':9} {'wall ms before → after':>24} {'server CPU ms before → after':>30} {'CPU ratio':>10}")
    for protocol in PROTOCOLS:
        med = {name: {key: statistics.median(run[protocol][key] for run in runs[name]) for key in ("wall_ms", "cpu_ms")}
               for name in runs}
        ratio = med["after"]["cpu_ms"] / med["before"]["cpu_ms"]
        report["protocols"][protocol] = {**{f"{n}_{k}": v for n in med for k, v in med[n].items()},  # type: ignore[index]
                                         "cpu_ratio": ratio}
        print(f"{protocol:9} {med['before']['wall_ms']:11.1f} → {med['after']['wall_ms']:<10.1f} "
              f"{med['before']['cpu_ms']:14.1f} → {med['after']['cpu_ms']:<13.1f} {ratio:10.2f}")
    out = HERE / "results" / f"large_answers-{time.strftime('%Y%m%dT%H%MZ', time.gmtime())}.json"
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
