"""Work that grows with a request stays off the event loop: while one client's large body is
decoded, every other client is still answered promptly."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import orjson
import requests

from tests.conftest import serve
from tests.models import write

COUNT_MODEL = '''
import numpy as np

class Model:
    def infer(self, inputs):
        return {"n": np.array([inputs["s"].size], dtype=np.int64)}
'''

COUNT_CONFIG = """
backend = "python"
[instance_group]
kind = "cpu"
[[input]]
name = "s"
datatype = "BYTES"
shape = [-1]
[[output]]
name = "n"
datatype = "INT64"
shape = [1]
"""


def test_a_large_bytes_body_is_decoded_off_the_loop(tmp_path: Path) -> None:
    write(tmp_path / "count/1/model.py", COUNT_MODEL)
    write(tmp_path / "count/config.toml", COUNT_CONFIG)
    count = 600_000
    raw = (struct.pack("<I", 3) + b"abc") * count
    header = orjson.dumps({"inputs": [{"name": "s", "shape": [count], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(raw)}}]})
    with serve(tmp_path) as server:
        answer: list[requests.Response] = []

        def big() -> None:
            answer.append(requests.post(f"{server.base}/v2/models/count/infer", data=header + raw, timeout=60,
                                        headers={"Inference-Header-Content-Length": str(len(header))}))

        worker = threading.Thread(target=big)
        worker.start()
        slowest = 0.0
        probes = 0
        with requests.Session() as session:
            while worker.is_alive():
                start = time.perf_counter()
                assert session.get(f"{server.base}/v2/health/live", timeout=10).status_code == 200
                slowest = max(slowest, time.perf_counter() - start)
                probes += 1
        worker.join()
        assert answer[0].status_code == 200 and answer[0].json()["outputs"][0]["data"] == [count]
        assert probes > 5  # the decode took a while, and the probes went on meanwhile
        assert slowest < 0.5, f"a health probe waited {slowest:.2f} s behind the decode"


def test_gzip_bombs_under_the_offload_size_inflate_off_the_loop(tmp_path: Path) -> None:
    import gzip

    write(tmp_path / "count/1/model.py", COUNT_MODEL)
    write(tmp_path / "count/config.toml", COUNT_CONFIG)
    bomb = gzip.compress(b"\0" * (256 << 20), 9)  # under 256 KiB on the wire, 256 MiB inflated
    assert len(bomb) < 256 * 1024
    with serve(tmp_path) as server:
        answers: list[int] = []

        def bombs() -> None:
            with requests.Session() as session:
                for _ in range(6):
                    answers.append(session.post(f"{server.base}/v2/models/count/infer", data=bomb, timeout=60,
                                                headers={"Content-Encoding": "gzip"}).status_code)

        worker = threading.Thread(target=bombs)
        worker.start()
        waits: list[float] = []
        with requests.Session() as session:
            while worker.is_alive():
                start = time.perf_counter()
                assert session.get(f"{server.base}/v2/health/live", timeout=10).status_code == 200
                waits.append(time.perf_counter() - start)
        worker.join()
        assert answers == [413] * 6  # inflated past --max-body-size
        # inflating on the loop, nearly every probe waits behind an inflate (0.1-0.6 s each); the
        # median is robust to the odd preemption of a busy shared machine
        waits.sort()
        assert len(waits) > 5 and waits[len(waits) // 2] < 0.05, f"probes waited {waits}"
