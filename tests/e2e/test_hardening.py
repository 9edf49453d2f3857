"""Model control, processes and files under abuse, against a real `inferd serve`: parallel loads of
one model, unloading with queued requests, process groups, leftovers of killed servers, hostile
`.mar` archives."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import serve

SLOW_MODEL = '''
import os, subprocess, time
import numpy as np

class Model:
    def load(self):
        # a model that starts a process of its own: it must die with the instance
        child = subprocess.Popen(["sleep", "300"])
        with open(os.environ["CHILD_PIDS"], "a") as out:
            out.write(f"{child.pid}\\n")

    def infer(self, inputs):
        time.sleep(0.1)
        return {"y": np.asarray(inputs["x"], dtype=np.float32)}
'''

CONFIG = '''backend = "python"
max_batch_size = 4
[dynamic_batching]
max_queue_delay_ms = 1
[instance_group]
kind = "process"
count = 1
[[input]]
name = "x"
datatype = "FP32"
shape = [2]
[[output]]
name = "y"
datatype = "FP32"
shape = [2]
'''

BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as text:
            found += [int(child) for child in text.read().split()]
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    (tmp_path / "repo/slow/1").mkdir(parents=True)
    (tmp_path / "repo/slow/1/model.py").write_text(SLOW_MODEL)
    (tmp_path / "repo/slow/config.toml").write_text(CONFIG)
    return tmp_path / "repo"


def test_parallel_loads_leave_one_instance_and_unload_drains_queued_requests(repo: Path, tmp_path: Path,
                                                                             monkeypatch) -> None:
    pids_file = tmp_path / "children.txt"
    monkeypatch.setenv("CHILD_PIDS", str(pids_file))
    with serve(repo, "--model-control", "explicit") as server:
        load = f"{server.base}/v2/repository/models/slow/load"
        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda _: requests.post(load, timeout=120).status_code, range(6)))
        assert statuses == [200] * 6
        assert wait_until(lambda: len([p for p in children(server.process.pid) if alive(p)]) == 1), \
            children(server.process.pid)
        scratch = [p for p in Path(tempfile.gettempdir()).glob(f"inferd-scratch-{server.process.pid}-*")
                   if not p.name.endswith("-shared")]
        assert wait_until(lambda: len([p for p in scratch if p.exists()]) == 1), scratch
        started = [int(pid) for pid in pids_file.read_text().split()]
        assert started and sum(alive(pid) for pid in started) == 1  # its own children too; unchanged loads start none

        infer = f"{server.base}/v2/models/slow/infer"
        with ThreadPoolExecutor(12) as pool:
            answers = [pool.submit(requests.post, infer, json=BODY, timeout=60) for _ in range(12)]
            time.sleep(0.3)
            assert requests.post(f"{server.base}/v2/repository/models/slow/unload", timeout=60).status_code == 200
            codes = [answer.result().status_code for answer in answers]  # none left waiting
        assert set(codes) <= {200, 503, 404} and codes.count(200) >= 1, codes
        assert wait_until(lambda: not any(alive(pid) for pid in started))
        assert "cannot schedule new futures" not in server.log()
        assert "Traceback" not in server.log()


def test_a_start_removes_what_a_killed_server_left(repo: Path, tmp_path: Path, monkeypatch) -> None:
    pids_file = tmp_path / "children.txt"
    monkeypatch.setenv("CHILD_PIDS", str(pids_file))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = Path(tempfile.gettempdir()) / f"inferd-scratch-{gone.pid}-0-left"
    folder.mkdir()
    (folder / "file").write_text("x")
    shm = Path("/dev/shm") / f"inferd-{gone.pid}-out-leftover"
    shm.write_bytes(b"x")
    mine = Path("/dev/shm") / f"inferd-{os.getpid()}-in-alive"  # a live process's buffer stays
    mine.write_bytes(b"x")
    try:
        with serve(repo, "--model-control", "explicit") as server:
            assert not folder.exists() and not shm.exists()
            assert mine.exists()
            # the folder is in this test's TMPDIR; the shared-memory file may be swept by a server
            # another test worker starts meanwhile (/dev/shm is the machine's)
            assert re.search(r"removed [12] folder\(s\) and shared-memory file\(s\)", server.log())
            assert requests.post(f"{server.base}/v2/repository/models/slow/load", timeout=120).status_code == 200
            server.process.kill()  # SIGKILL: nothing of the server runs
            server.process.wait()
        started = [int(pid) for pid in pids_file.read_text().split()]
        assert started and wait_until(lambda: not any(alive(pid) for pid in started))  # the model's child too
        leftovers = list(Path(tempfile.gettempdir()).glob(f"inferd-scratch-{server.process.pid}-*"))
        with serve(repo, "--model-control", "explicit"):
            assert leftovers and not any(path.exists() for path in leftovers)
    finally:
        mine.unlink(missing_ok=True)


def mar(store: Path, name: str, model: dict, files: dict[str, bytes] | None = None) -> str:
    with zipfile.ZipFile(store / f"{name}.mar", "w") as bundle:
        bundle.writestr("MAR-INF/MANIFEST.json", json.dumps({"runtime": "python", "model": model}))
        for path, data in (files or {}).items():
            bundle.writestr(path, data)
    return f"{name}.mar"


def test_hostile_archives_are_refused_with_the_reason(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    outside = tmp_path / "evil.py"
    outside.write_text("raise SystemExit('imported from outside the archive')\n")
    cases = {
        mar(store, "up", {"modelName": "up", "modelVersion": "1.0", "handler": "../evil.py"}): "leaves the archive",
        mar(store, "abs", {"modelName": "abs", "modelVersion": "1.0", "handler": str(outside)}): "leaves the archive",
        mar(store, "forged", {"modelName": "forged", "modelVersion": "1.0\nINFO forged line",
                              "handler": "base_handler"}): "control characters",
        mar(store, "huge", {"modelName": "huge", "pad": "x" * (2 << 20)}): "over the limit",
    }
    with serve(None, "--model-store", str(store), "--model-control", "explicit") as server:
        for url, message in cases.items():
            response = requests.post(f"{server.base}/models?url={url}&initial_workers=1", timeout=60)
            assert 400 <= response.status_code < 600 and response.status_code != 200, response.text
            assert message in response.text, (url, response.text)
        assert requests.get(f"{server.base}/models", timeout=10).json()["models"] == []
        assert "INFO forged line" not in server.log().replace("\\n", "")
        assert "imported from outside" not in server.log()


def test_an_instance_over_its_memory_limit_counts_what_it_started(tmp_path: Path) -> None:
    (tmp_path / "repo/hog/1").mkdir(parents=True)
    (tmp_path / "repo/hog/1/model.py").write_text(textwrap.dedent('''
        import subprocess, sys
        import numpy as np

        class Model:
            def load(self):
                pass

            def infer(self, inputs):
                # the memory is in a child process: only a tree-wide count sees it
                code = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(60)"
                subprocess.run([sys.executable, "-c", code], timeout=30)
                return {"y": np.asarray(inputs["x"], dtype=np.float32)}
        '''))
    (tmp_path / "repo/hog/config.toml").write_text(CONFIG.replace("max_batch_size = 4\n[dynamic_batching]\n"
                                                                  "max_queue_delay_ms = 1\n", "")
                                                   .replace('count = 1', 'count = 1\nmemory_limit_mb = 150'))
    with serve(tmp_path / "repo") as server:
        body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
        response = requests.post(f"{server.base}/v2/models/hog/infer", json=body, timeout=60)
        assert response.status_code == 500
        assert "over its memory_limit_mb of 150" in response.json()["error"]
        assert wait_until(lambda: not any("bytearray(300" in _cmdline(p) for p in _all_pids()))


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
