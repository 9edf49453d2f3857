"""A TorchServe handler's call path, two builds side by side: what one /predictions request costs
when the handler itself does almost nothing (its instance process, the hand-overs, the answer).

    python benchmarks/handler_calls.py --trees BEFORE_CHECKOUT,AFTER_CHECKOUT [--rounds 4] [--seconds 5]

Each build serves one archive (a handler answering its body's length, batch size 1, in its default
instance process) on CPU 0; wrk posts from CPU 1 at c=1 and c=8; builds alternate round by round.
Reports req/s, p50 and the server's CPU per request (its whole process tree).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from common import SERVER_CPU, free_port, measure, stop, wait_ready

HANDLER = '''
def handle(data, context):
    if data:
        return [len(row.get("body") or b"") for row in data]
'''


def build(root: Path) -> Path:
    store = root / "store"
    store.mkdir()
    (root / "echo_handler.py").write_text(HANDLER)
    subprocess.run(["torch-model-archiver", "--model-name", "echo", "--version", "1.0", "--handler",
                    str(root / "echo_handler.py"), "--export-path", str(store), "-f"], check=True)
    return store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trees", required=True, help="two checkouts of inferd, comma-separated")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    trees = args.trees.split(",")
    root = Path(tempfile.mkdtemp(prefix="inferd-handler-calls-"))
    store = build(root)
    body = root / "body.json"
    body.write_text('{"values": [1, 2, 3, 4]}')
    os.environ["CONTENT_TYPE"] = "application/json"
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        for tree in trees if round_ % 2 == 0 else trees[::-1]:
            port = free_port()
            env = dict(os.environ, PYTHONPATH=f"{tree}/src", OMP_NUM_THREADS="1")
            process = subprocess.Popen(
                ["taskset", "-c", SERVER_CPU, sys.executable, "-m", "inferd", "serve", "--model-store", str(store),
                 "--model-control", "explicit", "--http-port", str(port), "--grpc-port", "0", "--log-level",
                 "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process)
                register = f"http://127.0.0.1:{port}/models?url=echo.mar&initial_workers=1&synchronous=true"
                urllib.request.urlopen(urllib.request.Request(register, method="POST"), timeout=120).read()
                for concurrency in (1, 8):
                    result = measure(f"http://127.0.0.1:{port}/predictions/echo", body, concurrency, args.seconds,
                                     process.pid, warmup=1)
                    assert result["errors"] == 0, result
                    rows.setdefault((tree, concurrency), []).append(result)
                    print(f"round {round_} {tree} c={concurrency}: {result['rps']:.0f} req/s, p50 "
                          f"{result['p50_us'] / 1000:.2f} ms, CPU {result['cpu_ms_per_req']:.3f} ms/req", flush=True)
            finally:
                stop(process)
    print("\n| build | c | req/s (median) | p50 ms | server CPU ms/req |\n|---|---|---|---|---|")
    for (tree, concurrency), results in rows.items():
        print(f"| {tree} | {concurrency} | {statistics.median(r['rps'] for r in results):,.0f} | "
              f"{statistics.median(r['p50_us'] for r in results) / 1000:.2f} | "
              f"{statistics.median(r['cpu_ms_per_req'] for r in results):.3f} |")


if __name__ == "__main__":
    main()
