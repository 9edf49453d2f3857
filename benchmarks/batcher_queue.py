"""What a request costs through the dynamic batcher's queue, in process: 64 callers keep requests in
flight against a model that returns its input (two instances, max_batch_size 32), so every request
is queued, batched, run and split; two builds alternate round by round (did a change to the queue
slow it?). With ``--priority-levels N`` the model has Triton's priority levels and every caller asks
for a level in turn.

    taskset -c 0 python benchmarks/batcher_queue.py --trees BEFORE_CHECKOUT,AFTER_CHECKOUT [--rounds 6]
        [--calls 1500] [--callers 64] [--priority-levels 0]

Each round runs in a fresh interpreter with that build's src/ first on the path. Reports CPU µs per
request (the steadier figure on a shared machine) per round and the median of each build.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROUND = '''
import asyncio, sys, time
import numpy as np
from inferd.config import DynamicBatching
from inferd.runtimes.fake import FakeRuntime
from inferd.scheduling.batcher import DynamicBatcher
from inferd.scheduling.instances import InstancePool
from inferd.types import CallContext, TensorSpec

calls, callers, levels = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
spec = (TensorSpec("x", "FP32", (-1, 4)),)
runtime = FakeRuntime(spec, spec, lambda inputs: {"x": inputs["x"]}, max_batch_size=32)
batching = (DynamicBatching(max_queue_delay_ms=0.5, priority_levels=levels, default_priority_level=levels)
            if levels else DynamicBatching(max_queue_delay_ms=0.5))
batcher = DynamicBatcher(InstancePool(runtime, 2, "m"), batching)
x = {"x": np.ones((1, 4), np.float32)}


async def caller(n: int, priority: int) -> None:
    for _ in range(n):
        await batcher.infer_async(dict(x), CallContext(priority=priority) if levels else CallContext())


async def main() -> float:
    await asyncio.gather(*(caller(200, 1 + i % max(levels, 1)) for i in range(callers)))  # warm up
    start = time.process_time()
    await asyncio.gather(*(caller(calls, 1 + i % max(levels, 1)) for i in range(callers)))
    return (time.process_time() - start) / (callers * calls) * 1e6


print(asyncio.run(main()))
'''


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trees", required=True, help="two checkouts, comma-separated: before,after")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--priority-levels", type=int, default=0)
    args = parser.parse_args()
    trees = [Path(tree).resolve() for tree in args.trees.split(",")]
    seen: dict[Path, list[float]] = {tree: [] for tree in trees}
    for round_ in range(args.rounds):
        for tree in trees:
            out = subprocess.run([sys.executable, "-c", ROUND, str(args.calls), str(args.callers),
                                  str(args.priority_levels)], env={"PYTHONPATH": str(tree / "src")},
                                 capture_output=True, text=True, check=True).stdout
            seen[tree].append(float(out))
            print(f"round {round_ + 1} {tree}: {seen[tree][-1]:.2f} us CPU per request", flush=True)
    for tree, values in seen.items():
        print(f"median {tree}: {statistics.median(values):.2f} us CPU per request ({len(values)} rounds)")


if __name__ == "__main__":
    main()
