"""What the rate limiter costs a request, in process: 64 callers keep requests in flight against a
model that returns its input (two instances, max_batch_size 32, dynamic batching), built as the
server builds it (``build_scheduler``). Variants alternate round by round:

    before      BEFORE_CHECKOUT's build_scheduler (no rate limiter in the code)
    off         this checkout, --rate-limit off (no limiter)
    on-plain    this checkout, --rate-limit execution_count, the model without a rate_limiter
    on-limited  this checkout, --rate-limit execution_count, each execution holding 1 of R1 (2 exist,
                so the two instances never wait: the cost of taking and giving back)

    taskset -c 0 python benchmarks/rate_limiter.py --before /work/main [--rounds 6] [--calls 1500]

Each round runs in a fresh interpreter with that build's src/ first on the path. Reports CPU µs per
request (the steadier figure on a shared machine) per round and the median of each variant.
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
from inferd.config import DynamicBatching, InstanceGroup, ModelConfig
from inferd.runtimes.fake import FakeRuntime
from inferd.scheduling.factory import build_scheduler
from inferd.types import CallContext, TensorSpec

calls, callers, variant = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
spec = (TensorSpec("x", "FP32", (-1, 4)),)
runtime = FakeRuntime(spec, spec, lambda inputs: {"x": inputs["x"]}, max_batch_size=32)
group = InstanceGroup(count=2)
extra = {}
if variant.startswith("on"):
    from inferd.config import RateLimit, RateResource, ResourceCount
    from inferd.scheduling.ratelimit import RateLimiter

    extra["limiter"] = RateLimiter((ResourceCount("R1", 2),))
    if variant == "on-limited":
        group = InstanceGroup(count=2, rate_limiter=RateLimit((RateResource("R1", 1),)))
config = ModelConfig(max_batch_size=32, dynamic_batching=DynamicBatching(max_queue_delay_ms=0.5), instance_group=group)
batcher = build_scheduler(runtime, config, "m", "1", None, **extra)
x = {"x": np.ones((1, 4), np.float32)}


async def caller(n: int) -> None:
    for _ in range(n):
        await batcher.infer_async(dict(x), CallContext())


async def main() -> float:
    await asyncio.gather(*(caller(200) for _ in range(callers)))  # warm up
    start = time.process_time()
    await asyncio.gather(*(caller(calls) for _ in range(callers)))
    return (time.process_time() - start) / (callers * calls) * 1e6


print(asyncio.run(main()))
batcher.unload()
'''

VARIANTS = ("before", "off", "on-plain", "on-limited")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, type=Path, help="a checkout without the rate limiter")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--callers", type=int, default=64)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    seen: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_ in range(args.rounds):
        order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]  # drift hits every variant alike
        for variant in order:
            tree = args.before.resolve() if variant == "before" else here
            out = subprocess.run([sys.executable, "-c", ROUND, str(args.calls), str(args.callers), variant],
                                 env={"PYTHONPATH": str(tree / "src")}, capture_output=True, text=True,
                                 check=True).stdout
            seen[variant].append(float(out))
            print(f"round {round_ + 1} {variant}: {seen[variant][-1]:.2f} us CPU per request", flush=True)
    for variant, values in seen.items():
        print(f"median {variant}: {statistics.median(values):.2f} us CPU per request ({len(values)} rounds)")


if __name__ == "__main__":
    main()
