"""Shared test helpers: free ports, a real `inferd serve` subprocess, and small models built here."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker gets a temporary directory of its own (TMPDIR, inherited by
    the servers it starts): what a server keeps there by a fixed name (TorchServe's pid file) or
    sweeps at start (scratch folders) stays the worker's."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        own = Path(tempfile.gettempdir()) / f"inferd-tests-{os.getpid()}-{worker}"
        own.mkdir(exist_ok=True)
        os.environ["TMPDIR"] = str(own)
        tempfile.tempdir = None  # gettempdir() reads TMPDIR again
        config.stash[_OWN_TMP] = own


_OWN_TMP = pytest.StashKey[Path]()


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_TMP, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


def _ephemeral_low() -> int:
    """The lowest port of the kernel's range for outgoing connections (Linux's default 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nothing is bound to, below the kernel's range for outgoing connections: a port picked
    by binding port 0 comes from that range, and any client connecting meanwhile (another test's)
    can take it before the server under test binds it (CI once saw "the port is in use")."""
    low = _ephemeral_low()
    for _ in range(200):  # from 20000: below it are Ray's worker ports (10002-19999), which its tests start
        port = random.randint(20000, low - 1) if low > 20500 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    def __init__(self, process: subprocess.Popen[str], http_port: int, lines: list[str],
                 grpc_port: int = 0) -> None:
        self.process = process
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.grpc_url = f"127.0.0.1:{grpc_port}"
        self.url = f"127.0.0.1:{http_port}"
        self.base = f"http://127.0.0.1:{http_port}"
        self.lines = lines

    def log(self) -> str:
        return "".join(self.lines)


def collect_output(process: subprocess.Popen[str], lines: list[str]) -> threading.Event:
    """Collect what an inferd process prints in ``lines``, on a thread; the event is set at its ready line."""
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("inferd ready"):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    return ready


@contextlib.contextmanager
def serve(repository: Path | None, *args: str, timeout: float = 120.0,
          wait_ready: bool = True, grpc: bool = False) -> Iterator[RunningServer]:
    """Start `python -m inferd serve` on free ports; stop it when the block ends.

    With ``wait_ready`` the block starts once the server printed its ready line; without, as
    soon as it answers /v2/health/live."""
    port = free_port()
    grpc_port = free_port() if grpc else 0
    command = [sys.executable, "-m", "inferd", "serve"]
    if repository is not None:
        command.append(str(repository))
    command += ["--http-port", str(port), "--grpc-port", str(grpc_port), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env, cwd=ROOT)
    lines: list[str] = []
    ready = collect_output(process, lines)
    server = RunningServer(process, port, lines, grpc_port)
    try:
        deadline = time.monotonic() + timeout
        while not (ready.wait(0.05) if wait_ready else _answers(server)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"inferd did not become ready:\n{server.log()}")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def until_ready(command: list[str], env: dict[str, str], cwd: Path, lines: list[str],
                timeout: float = 120.0) -> Iterator[subprocess.Popen[str]]:
    """Run an inferd command line (``serve``, ``torchserve``, ``tfserving``), its output collected in
    ``lines``; the block starts once it printed its ready line, and the process is stopped after."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env, cwd=cwd)
    ready = collect_output(process, lines)
    try:
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(command[2:4])} did not become ready:\n{''.join(lines)}")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(server: RunningServer) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=0.2):
            return True
    except OSError:
        time.sleep(0.05)
        return False


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with one model of every kind the foundation serves, plus broken ones."""
    from tests import models

    root = tmp_path_factory.mktemp("repo")
    models.build_repository(root)
    return root


def holds_in_one_of(attempts: int, check: Callable[[], str | None]) -> None:
    """Fail unless one of ``attempts`` runs of ``check`` holds (returns None; otherwise it says what
    it saw). For timing checks on a shared machine: what they catch (work on the event loop) fails
    every run, while a neighbour's preemption of a second or two seldom hits three in a row."""
    seen = []
    for _ in range(attempts):
        failure = check()
        if failure is None:
            return
        seen.append(failure)
    pytest.fail(f"failed {attempts} times: " + "; ".join(seen))


def probe_waits(base: str, busy: threading.Thread) -> list[float]:
    """Start ``busy`` and time /v2/health/live probe after probe until it ends: how long a
    well-behaved client waited meanwhile (sorted)."""
    import requests

    busy.start()
    waits: list[float] = []
    with requests.Session() as session:
        while busy.is_alive():
            start = time.perf_counter()
            assert session.get(f"{base}/v2/health/live", timeout=10).status_code == 200
            waits.append(time.perf_counter() - start)
    busy.join()
    return sorted(waits)
