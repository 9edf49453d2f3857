"""Every command block of README.md runs as written against examples/, so the README cannot rot.

A ```bash or ```python block is run unless it installs things (pip, venv, git clone), needs machines
the suite has not (docker, kubectl), or is followed by ``<!-- readme-test: skip (why) -->``. Ports
are the only substitution: 8000/8001 become the test server's. A line that starts a server
(``inferd serve ...``) is started on free ports and must print its ready line; the block's other
lines then run against it, else against one server of examples/models + examples/model_store.
A command followed by ``# {json}`` (on its line or the next) must answer that JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import ROOT, RunningServer, collect_output, free_port, serve

FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n(?:<!-- readme-test: skip \((.+?)\) -->)?", re.M | re.S)
INSTALLS = re.compile(r"^\s*(pip |python3? -m (venv|pip)|git clone|docker |kubectl |helm )", re.M)
SERVER = re.compile(r"^inferd (serve|tfserving|torchserve --start)\b")


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    text: str
    skip: str | None


def blocks() -> list[Block]:
    readme = (ROOT / "README.md").read_text()
    found = []
    for match in FENCE.finditer(readme):
        language, text, marked = match.groups()
        if language not in ("bash", "python"):
            continue
        skip = marked or ("installs or needs other machines" if INSTALLS.search(text) else None)
        found.append(Block(readme.count("\n", 0, match.start()) + 1, language, text, skip))
    return found


RUN = [b for b in blocks() if b.skip is None]


def test_readme_blocks_are_run_or_skipped_for_a_reason() -> None:
    every = blocks()
    skipped = {b.line: b.skip for b in every if b.skip}
    # the quick start's install and the clients' libraries, the suite itself, docker/kubectl and two
    # other servers' example files
    assert len(RUN) >= 8 and len(skipped) <= 11, skipped
    assert any(SERVER.match(line) for b in RUN for line in b.text.splitlines())


@pytest.fixture(scope="module")
def examples() -> Iterator[RunningServer]:
    with serve(ROOT / "examples/models", "--model-store", "examples/model_store", "--models", "all",
               grpc=True) as server:
        yield server


@pytest.fixture(scope="module")
def shell_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``inferd`` and ``python`` as the README means them: this interpreter, this checkout."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for name, command in (("inferd", f'exec "{sys.executable}" -m inferd "$@"'),
                          ("python", f'exec "{sys.executable}" "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{command}\n")
        (bin_dir / name).chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def commands(text: str) -> list[tuple[str, object]]:
    """(command, expected JSON or None): continuation lines joined, ``# {...}`` taken as the answer."""
    result: list[tuple[str, object]] = []
    pending = ""
    for raw in text.splitlines():
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        stripped = line.strip()
        if stripped.startswith("# {") or stripped.startswith("# ["):
            result[-1] = (result[-1][0], json.loads(stripped[2:]))
        elif stripped and not stripped.startswith("#"):
            command, _, comment = line.partition("  # ")
            comment = comment.strip()
            expected = json.loads(comment) if comment.startswith(("{", "[")) else None
            result.append((command.strip(), expected))
    return result


def _ports(text: str, http: int, grpc: int) -> str:
    text = re.sub(r"(localhost|127\.0\.0\.1):8000\b", f"127.0.0.1:{http}", text)
    return re.sub(r"(localhost|127\.0\.0\.1):8001\b", f"127.0.0.1:{grpc}", text)


def _run(command: str, path: str) -> str:
    script = f'set -euo pipefail\ncurl() {{ command curl --fail-with-body "$@"; }}\n{command}\n'
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PATH": path})
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _start(command: str, path: str) -> tuple[subprocess.Popen[str], int, int]:
    http, grpc = free_port(), free_port()
    if command.startswith("inferd serve"):
        command += f" --http-port {http} --grpc-port {grpc}"
    process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, "PATH": path})
    lines: list[str] = []
    ready = collect_output(process, lines)
    deadline = time.monotonic() + 120
    while not ready.wait(0.1):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{command} did not become ready:\n{''.join(lines)}")
    return process, http, grpc


@pytest.mark.parametrize("block", RUN, ids=[f"README.md:{b.line}" for b in RUN])
def test_readme_block_runs_as_written(block: Block, examples: RunningServer, shell_path: str) -> None:
    http, grpc = examples.http_port, examples.grpc_port
    if block.language == "python":
        done = subprocess.run([sys.executable, "-c", _ports(block.text, http, grpc)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return
    servers = []
    try:
        for command, expected in commands(block.text):
            if SERVER.match(command):
                process, http, grpc = _start(command, shell_path)
                servers.append(process)
                continue
            out = _run(_ports(command, http, grpc), shell_path)
            if expected is not None:
                assert json.loads(out) == expected, f"{command}\n{out}"
    finally:
        for process in servers:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
