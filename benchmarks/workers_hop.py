"""The hop of `--workers N` alone: a worker's Channel calling the model process's CoreService, with
no HTTP and no model (the data plane answers each request with its own inputs), both processes on
one core. Reports calls/s and CPU µs per call of each side, so a change to the channel, the codec
or either loop's handling shows without wrk's or the model's noise.

    taskset -c 0 python benchmarks/workers_hop.py [--tree SRC_CHECKOUT] [--concurrency 1,64] [--calls 20000]
        [--floats 16] [--in-process]

--floats sets the request's FP32 tensor (1 x N; the answer carries it back): 16 is the peers' tiny
model, 150528 an image of 3 x 224 x 224. --in-process runs the model process's side in the
driver's own loop instead (the same code, socket and system calls, no second process): what the
hop costs without a context switch and without two processes taking turns on one core's caches.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ECHO = '''
from inferd.types import InferResponse, Timings

class Echo:
    async def infer(self, request):
        return InferResponse(request.model_name, "1", request.inputs, request.id, {}, Timings(0, 0, 0, 1))

    def group_rows(self, name, version):
        return 0
'''

SERVE = ECHO + '''
import asyncio, sys, uvloop
from pathlib import Path
from inferd.workers.owner import CoreService

async def main():
    service = CoreService({"data": Echo()})
    await service.start(Path(sys.argv[1]))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

uvloop.run(main())
'''


async def drive(path: Path, concurrency: int, calls: int, floats: int) -> float:
    import numpy as np

    from inferd.types import InferRequest, Tensor
    from inferd.workers.remote import Channel

    channel = Channel(path)
    await channel.connect()
    request = InferRequest("tiny", None, [Tensor("input", "FP32", np.ones((1, floats), np.float32))])
    left = calls

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await channel.infer(request)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    took = time.perf_counter() - started
    channel.close()
    return took


async def in_process(path: Path, concurrencies: list[int], calls: int, floats: int) -> None:
    """Both sides in this process's loop: CPU per call of the two together."""
    from inferd.workers.owner import CoreService

    scope: dict[str, Any] = {}
    exec(ECHO, scope)
    service = CoreService({"data": scope["Echo"]()})
    await service.start(path)
    for concurrency in concurrencies:
        await drive(path, concurrency, min(2000, calls), floats)  # warm
        before = resource.getrusage(resource.RUSAGE_SELF)
        took = await drive(path, concurrency, calls, floats)
        after = resource.getrusage(resource.RUSAGE_SELF)
        both_us = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / calls * 1e6
        print(f"c={concurrency} (one process): {calls / took:,.0f} calls/s, CPU per call: both {both_us:.1f} µs",
              flush=True)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the inferd checkout to measure (its src/ goes first on the path)")
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--calls", type=int, default=20000,
                        help="calls per concurrency (the model process's CPU is read in 10 ms ticks: keep it large)")
    parser.add_argument("--floats", type=int, default=16, help="FP32 values in the request's tensor")
    parser.add_argument("--in-process", action="store_true",
                        help="the model process's side in this process's loop (no second process)")
    args = parser.parse_args()
    if not (args.tree / "src" / "inferd" / "workers" / "channel.py").is_file():
        parser.error(f"--tree {args.tree}: no src/inferd/workers/channel.py there (an inferd checkout is expected)")
    sys.path.insert(0, str(args.tree / "src"))
    import uvloop

    folder = Path(tempfile.mkdtemp(prefix="inferd-hop-"))
    path = folder / "core.sock"
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.in_process:
        uvloop.run(in_process(path, concurrencies, args.calls, args.floats))
        return
    env = dict(os.environ, PYTHONPATH=str(args.tree / "src"))
    owner = subprocess.Popen([sys.executable, "-c", SERVE, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env=env)
    assert owner.stdout is not None and owner.stdout.readline().strip() == b"ready"
    try:
        for concurrency in concurrencies:
            uvloop.run(drive(path, concurrency, min(2000, args.calls), args.floats))  # warm both sides
            mine, theirs = resource.getrusage(resource.RUSAGE_SELF), cpu_s(owner.pid)
            took = uvloop.run(drive(path, concurrency, args.calls, args.floats))
            after = resource.getrusage(resource.RUSAGE_SELF)
            worker_us = (after.ru_utime + after.ru_stime - mine.ru_utime - mine.ru_stime) / args.calls * 1e6
            owner_us = (cpu_s(owner.pid) - theirs) / args.calls * 1e6
            print(f"c={concurrency}: {args.calls / took:,.0f} calls/s, CPU per call: worker {worker_us:.1f} µs, "
                  f"model process {owner_us:.1f} µs, both {worker_us + owner_us:.1f} µs", flush=True)
    finally:
        owner.stdin.close()  # type: ignore[union-attr]
        owner.wait(10)


if __name__ == "__main__":
    main()
