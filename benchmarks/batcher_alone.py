"""What the dynamic batcher costs a lone client, in process: one caller awaiting requests one after
another (a loop pass between them, as a server's requests arrive), through the instance pool alone
and through the batcher in front of it, on a model that burns a stated CPU time per call.

    taskset -c 0 python benchmarks/batcher_alone.py [--model-us 300,120] [--rounds 3] [--calls 3000]
        [--tree PATH]   (another checkout's src/ first on the path: compare two builds)

Reports CPU µs per request (the steadier figure on a shared machine) and wall µs for both.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-us", default="300,120")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree / "src"))
    import uvloop

    from inferd.config import DynamicBatching
    from inferd.runtimes.base import Arrays, Runtime
    from inferd.scheduling.batcher import DynamicBatcher
    from inferd.scheduling.instances import InstancePool
    from inferd.scheduling.scheduler import Scheduler
    from inferd.types import CallContext, TensorSpec

    class Burn(Runtime):
        inputs = (TensorSpec("x", "FP32", (-1, 16)),)
        outputs = (TensorSpec("y", "FP32", (-1, 16)),)
        max_batch_size = 32

        def __init__(self, seconds: float) -> None:
            self.seconds = seconds

        def infer(self, inputs: Arrays) -> Arrays:
            end = time.perf_counter() + self.seconds
            while time.perf_counter() < end:
                pass
            return {"y": inputs["x"]}

    async def run(scheduler: Scheduler) -> tuple[float, float]:
        x = {"x": np.zeros((1, 16), np.float32)}
        for _ in range(200):  # the pool measures the model and decides inline or threaded
            await scheduler.infer_async(x, CallContext())
            await asyncio.sleep(0)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(args.calls):
            await scheduler.infer_async(x, CallContext())
            await asyncio.sleep(0)
        return ((time.process_time() - cpu) / args.calls * 1e6, (time.perf_counter() - wall) / args.calls * 1e6)

    print(f"build: {args.tree}")
    for model_us in map(float, args.model_us.split(",")):
        for _ in range(args.rounds):
            pool = uvloop.run(run(InstancePool(Burn(model_us / 1e6), 1, "pool")))
            batched = uvloop.run(run(DynamicBatcher(InstancePool(Burn(model_us / 1e6), 1, "batched"),
                                                    DynamicBatching(max_queue_delay_ms=5))))
            print(f"model {model_us:.0f} us | pool CPU {pool[0]:.0f} us, wall {pool[1]:.0f} us | batcher CPU "
                  f"{batched[0]:.0f} us, wall {batched[1]:.0f} us | batcher costs +{batched[0] - pool[0]:.0f} us CPU",
                  flush=True)


if __name__ == "__main__":
    main()
