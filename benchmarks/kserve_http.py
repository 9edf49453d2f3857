"""KServe v2 over HTTP: requests/s and p50/p99 for ONNX and TorchScript models, JSON vs binary bodies.

    python benchmarks/kserve_http.py [--seconds 10] [--concurrency 1,64] [--out FILE.json]

inferd is pinned to CPU 0 and wrk to CPU 1. Models: the example repository's mlp_onnx and
mlp_torchscript (16 -> 64 -> 4) and the peers' M1 mlp (512 -> 1024 -> 1024 -> 10), each unbatched
and with dynamic batching. Prints a markdown table; quote ratios, the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from common import HERE, bodies, make_mlp_models, measure, start_inferd, stop, write_model

EXAMPLES = HERE.parent / "examples" / "models"


def build(root: Path) -> dict[str, tuple[int, int]]:
    """Returns model name -> (input width, output width)."""
    models = root / "_artifacts"
    make_mlp_models(models)
    repo = root / "repo"
    for name in ("mlp_onnx", "mlp_torchscript"):
        shutil.copytree(EXAMPLES / name, repo / name)
    widths = {"mlp_onnx": (16, 4), "mlp_torchscript": (16, 4)}
    for fmt in ("onnx", "pt"):
        for batching in (False, True):
            name = f"m1_{'onnx' if fmt == 'onnx' else 'ts'}{'_b' if batching else ''}"
            write_model(repo, name, models / f"mlp.{fmt}", 512, 10, batching)
            widths[name] = (512, 10)
    return widths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--port", type=int, default=8450)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "kserve_http.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="inferd-bench-"))
    widths = build(root)
    server, cold = start_inferd(root / "repo", args.port, root / "server.log")
    rows = []
    try:
        for model, (dim, _) in widths.items():
            tensors = ("x", "y") if model.startswith("mlp_") else ("input", "output")
            json_body, bin_body, header_len = bodies(root / "bodies", model, dim, tensors)
            url = f"http://127.0.0.1:{args.port}/v2/models/{model}/infer"
            for concurrency in map(int, args.concurrency.split(",")):
                for kind, body, length in (("json", json_body, None), ("binary", bin_body, header_len)):
                    result = measure(url, body, concurrency, args.seconds, server.pid, length)
                    row = {"model": model, "body": kind, "concurrency": concurrency, **result}
                    rows.append(row)
                    print(f"{model:16} {kind:6} c={concurrency:<3} {result['rps']:9.0f} req/s "
                          f"p50 {result['p50_us'] / 1000:7.2f} ms p99 {result['p99_us'] / 1000:7.2f} ms "
                          f"errors {result['errors']} cpu/req {result['cpu_ms_per_req']:.3f} ms", flush=True)
    finally:
        stop(server)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cold_start_s": cold, "rows": rows}, indent=1))
    print(f"\ncold start to ready: {cold:.2f} s\n")
    print("| model | body | conc | req/s | p50 ms | p99 ms | errors | server CPU ms/req |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['body']} | {r['concurrency']} | {r['rps']:,.0f} | "
              f"{r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | {r['errors']} | "
              f"{r['cpu_ms_per_req']:.3f} |")


if __name__ == "__main__":
    main()
