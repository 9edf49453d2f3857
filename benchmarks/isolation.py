"""What crash isolation costs: one Python model served in threads (kind = "cpu") and in an instance
process (kind = "process", the default for Python models), side by side in one server.

    taskset -c 1 python benchmarks/isolation.py [--seconds 10]

Two inputs: a 16-float v2 JSON body, and a 1x3x224x224 FP32 tensor (588 KiB) as a v2 binary body,
which crosses the process boundary through shared memory. Server on CPU 0 (with its instance
process), wrk on CPU 1; server CPU is summed over the process tree.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from common import HERE, free_port, measure, start_inferd, stop

MODEL = '''
class Model:
    def infer(self, inputs):
        return {"y": inputs["x"] * 2}
'''


def config(kind: str, shape: list[int]) -> str:
    return (f'backend = "python"\n[instance_group]\nkind = "{kind}"\n'
            f'[[input]]\nname = "x"\ndatatype = "FP32"\nshape = {shape}\n'
            f'[[output]]\nname = "y"\ndatatype = "FP32"\nshape = {shape}\n')


def build(root: Path) -> dict[str, tuple[Path, int | None]]:
    shapes = {"small": [1, 16], "image": [1, 3, 224, 224]}
    for kind in ("cpu", "process"):
        for size, shape in shapes.items():
            folder = root / "models" / f"{size}_{kind}"
            (folder / "1").mkdir(parents=True)
            (folder / "1" / "model.py").write_text(MODEL)
            (folder / "config.toml").write_text(config(kind, shape))
    x = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    small = root / "small.json"
    small.write_text(json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                             "data": x.tolist()}]}))
    image = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    header = json.dumps({"inputs": [{"name": "x", "shape": list(image.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": image.nbytes}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    binary = root / "image.bin"
    binary.write_bytes(header + image.tobytes())
    return {"small": (small, None), "image": (binary, len(header))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="inferd-isolation-"))
    bodies = build(work)
    port = free_port()
    server, _ = start_inferd(work / "models", port, work / "server.log")
    rows = []
    try:
        for size, (body, header_len) in bodies.items():
            for concurrency in map(int, args.concurrency.split(",")):
                for kind in ("cpu", "process"):
                    url = f"http://127.0.0.1:{port}/v2/models/{size}_{kind}/infer"
                    result = measure(url, body, concurrency, args.seconds, server.pid, header_len)
                    row = {"input": size, "kind": kind, "concurrency": concurrency, "rps": round(result["rps"], 1),
                           "p50_ms": result["p50_us"] / 1000, "p99_ms": result["p99_us"] / 1000,
                           "errors": result["errors"], "cpu_ms_per_req": round(result["cpu_ms_per_req"], 3)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        stop(server)
    print("\n| input | conc | kind | req/s | p50 ms | p99 ms | errors | server CPU ms/req |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['input']} | {r['concurrency']} | {r['kind']} | {r['rps']:.0f} | {r['p50_ms']:.3f} | "
              f"{r['p99_ms']:.3f} | {r['errors']} | {r['cpu_ms_per_req']:.3f} |")
    for thread, process in zip(rows[::2], rows[1::2], strict=True):
        print(f"{thread['input']} c={thread['concurrency']}: process/thread throughput "
              f"{process['rps'] / thread['rps']:.2f}x, p50 +{process['p50_ms'] - thread['p50_ms']:.3f} ms, "
              f"CPU/req +{process['cpu_ms_per_req'] - thread['cpu_ms_per_req']:.3f} ms")
    (HERE / "results" / "isolation.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
