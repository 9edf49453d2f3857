"""benchmarks/gpu_resnet.py --smoke runs end to end on the CPU (so a GPU session only has to run it
without it): the bare loop, JPEG decoding, the server over /predictions, v2 binary HTTP and gRPC,
answers checked against the model in-process, and the results JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("wrk") is None or shutil.which("taskset") is None, reason="needs wrk and taskset")
def test_the_gpu_benchmark_runs_in_smoke_mode(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    cpus = "0" if (os.cpu_count() or 1) < 2 else "0-1"
    done = subprocess.run([sys.executable, "gpu_resnet.py", "--smoke", "--seconds", "1", "--concurrency", "2",
                           "--workers", "0", "--server-cpus", cpus, "--client-cpus", cpus, "--out", str(out)],
                          cwd=ROOT / "benchmarks", capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "smoke" and result["device"].startswith("CPU")
    assert result["answers"]["v2_top1_matches"] and result["answers"]["predictions_top1_matches"]
    assert {row["path"] for row in result["served"]} == {"predictions", "v2_binary_http", "v2_grpc"}
    assert all(row["errors"] == 0 and row["img_per_s"] > 0 for row in result["served"]), result["served"]
    assert result["limit_img_per_s"] > 0 and result["bare"]["batch_1"]["ms_per_batch"] > 0
