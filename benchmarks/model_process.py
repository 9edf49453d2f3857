"""The model process's own ceiling under `--workers N`: how many requests a second it can take
from its workers, whatever their number, before its one event loop is full.

Every request of every worker lands in the one process that owns the models (one batch queue per
model), so that process's CPU per request bounds the scaling: with a worker's CPU per request W
and the model process's M, N workers can serve at most W / M times one worker's rate. This script
measures M alone: the model process runs the real core (data plane, batcher, instances) over a
repository of the peers' `tiny` and `mlp` TorchScript models with batching, pinned to
--server-cpus; a driver on --client-cpus plays the workers (``--channels`` channels, exactly as
a worker's, many calls in flight) and sends each request ready-made, so no HTTP or JSON is
measured. Reports calls/s and CPU µs per call of each side.

    python benchmarks/model_process.py [--tree SRC_CHECKOUT] [--models tiny,mlp] [--concurrency 64,256]
        [--channels 2] [--calls 30000] [--server-cpus 0] [--client-cpus 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVE = '''
import asyncio, sys, uvloop
from pathlib import Path
from inferd.config import ServerSettings
from inferd.server import build_core, _settle_garbage_collector
from inferd.workers.owner import CoreService

async def main():
    core = build_core(ServerSettings(model_repository=Path(sys.argv[2])))
    await core.control.load_at_start()
    core.data.set_ready(True)
    _settle_garbage_collector()
    service = CoreService({"data": core.data, "control": core.control, "metrics": core.metrics})
    await service.start(Path(sys.argv[1]))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

uvloop.run(main())
'''

DIMS = {"tiny": 16, "mlp": 512}


async def drive(path: Path, model: str, channels: int, concurrency: int, calls: int, rows: int = 1) -> float:
    import numpy as np

    from inferd.types import InferRequest, Tensor
    from inferd.workers.remote import Channel

    lines = [Channel(path) for _ in range(channels)]
    for line in lines:
        await line.connect()
    request = InferRequest(model, None, [Tensor("input", "FP32", np.ones((rows, DIMS[model]), np.float32))])
    left = calls

    async def client(line: Channel) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await line.infer(request)

    started = time.perf_counter()
    await asyncio.gather(*(client(lines[n % channels]) for n in range(concurrency)))
    took = time.perf_counter() - started
    for line in lines:
        line.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the inferd checkout to measure (its src/ goes first on the path)")
    parser.add_argument("--models", default="tiny,mlp")
    parser.add_argument("--concurrency", default="64,256")
    parser.add_argument("--channels", type=int, default=2, help="workers the driver plays")
    parser.add_argument("--calls", type=int, default=30000)
    parser.add_argument("--rows", type=int, default=1,
                        help="rows per request: what a worker that sent its pass's requests as one would send")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows here as JSON")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree / "src"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import uvloop
    from common import cpus, make_mlp_models, tree_cpu_seconds, write_model

    os.sched_setaffinity(0, set(cpus(args.client_cpus)))
    folder = Path(tempfile.mkdtemp(prefix="inferd-model-process-"))
    make_mlp_models(folder / "artifacts")
    for model, dim in DIMS.items():
        write_model(folder / "repo", model, folder / "artifacts" / f"{model}.pt", dim, 4 if model == "tiny" else 10,
                    batching=True)
    env = dict(os.environ, PYTHONPATH=str(args.tree / "src"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    owner = subprocess.Popen(["taskset", "-c", args.server_cpus, sys.executable, "-c", SERVE, str(folder / "core.sock"),
                              str(folder / "repo")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert owner.stdout is not None and owner.stdout.readline().strip() == b"ready"
    rows = []
    try:
        for model in args.models.split(","):
            for concurrency in map(int, args.concurrency.split(",")):
                sock = folder / "core.sock"
                uvloop.run(drive(sock, model, args.channels, concurrency, min(3000, args.calls), args.rows))
                mine, theirs = resource.getrusage(resource.RUSAGE_SELF), tree_cpu_seconds(owner.pid)
                took = uvloop.run(drive(sock, model, args.channels, concurrency, args.calls, args.rows))
                after = resource.getrusage(resource.RUSAGE_SELF)
                driver_us = (after.ru_utime + after.ru_stime - mine.ru_utime - mine.ru_stime) / args.calls * 1e6
                owner_us = (tree_cpu_seconds(owner.pid) - theirs) / args.calls * 1e6
                row = {"model": model, "concurrency": concurrency, "channels": args.channels, "rows": args.rows,
                       "calls_per_s": args.calls / took, "model_process_us": owner_us, "driver_us": driver_us}
                rows.append(row)
                print(f"{model} c={concurrency} rows={args.rows} over {args.channels} channels: "
                      f"{row['calls_per_s']:,.0f} calls/s, "
                      f"CPU per call: model process {owner_us:.1f} µs, driver {driver_us:.1f} µs", flush=True)
    finally:
        owner.stdin.close()  # type: ignore[union-attr]
        owner.wait(20)
    if args.out is not None:
        args.out.write_text(json.dumps({"rows": rows, "server_cpus": args.server_cpus,
                                        "client_cpus": args.client_cpus}, indent=1))


if __name__ == "__main__":
    main()
