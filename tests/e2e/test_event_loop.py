"""Work that grows with a request stays off the event loop: while one client's large body is
decoded, every other client is still answered promptly."""

from __future__ import annotations

import os
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import requests

from tests.conftest import holds_in_one_of, probe_waits, serve
from tests.models import write

COUNT_MODEL = '''
import numpy as np

class Model:
    def infer(self, inputs):
        return {"n": np.array([inputs["s"].size], dtype=np.int64)}
'''

LIMIT_S_PER_MIB = 0.001  # server CPU per MiB of body read: ~0.65 ms now, 1.2-1.5 ms when copied twice more

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

        def decode_beside_probes() -> str | None:
            answer: list[requests.Response] = []

            def big() -> None:
                answer.append(requests.post(f"{server.base}/v2/models/count/infer", data=header + raw, timeout=60,
                                            headers={"Inference-Header-Content-Length": str(len(header))}))

            waits = probe_waits(server.base, threading.Thread(target=big))
            assert answer[0].status_code == 200 and answer[0].json()["outputs"][0]["data"] == [count]
            assert len(waits) > 5  # the decode took a while, and the probes went on meanwhile
            return None if waits[-1] < 0.5 else f"a health probe waited {waits[-1]:.2f} s behind the decode"

        holds_in_one_of(3, decode_beside_probes)


def test_gzip_bombs_under_the_offload_size_inflate_off_the_loop(tmp_path: Path) -> None:
    import gzip

    write(tmp_path / "count/1/model.py", COUNT_MODEL)
    write(tmp_path / "count/config.toml", COUNT_CONFIG)
    bomb = gzip.compress(b"\0" * (256 << 20), 9)  # under 256 KiB on the wire, 256 MiB inflated
    assert len(bomb) < 256 * 1024
    bomb = bomb[:-4] + (1000).to_bytes(4, "little")  # its trailer lies (says 1000 bytes): inflated it is
    with serve(tmp_path) as server:
        answers: list[int] = []

        def bombs() -> None:
            with requests.Session() as session:
                for _ in range(6):
                    answers.append(session.post(f"{server.base}/v2/models/count/infer", data=bomb, timeout=60,
                                                headers={"Content-Encoding": "gzip"}).status_code)

        waits = probe_waits(server.base, threading.Thread(target=bombs))
        assert answers == [413] * 6  # inflated past --max-body-size
        # inflating on the loop, nearly every probe waits behind an inflate (0.1-0.6 s each); the
        # median is robust to the odd preemption of a busy shared machine
        assert len(waits) > 5 and waits[len(waits) // 2] < 0.05, f"probes waited {waits}"


def _server_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


def test_abandoned_uploads_cost_the_server_one_copy_per_byte(tmp_path: Path) -> None:
    """Clients that send 20 MiB of a declared 60 MB body and go away: the server reads every byte,
    but keeps each read as it came. Appending the parser's copy of it to one growing buffer
    re-copied that buffer as it grew (about twice the CPU per MiB; most of the loop's time under
    this attack)."""
    write(tmp_path / "count/1/model.py", COUNT_MODEL)
    write(tmp_path / "count/config.toml", COUNT_CONFIG)
    chunk = b"\0" * (1 << 20)
    with serve(tmp_path) as server:
        host, port = server.base.removeprefix("http://").split(":")

        def abandon() -> None:
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(b"POST /v2/models/count/infer HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 60000000\r\n\r\n")
                for _ in range(20):
                    sock.sendall(chunk)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset

        abandon()  # warm
        before = _server_cpu_s(server.process.pid)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: abandon(), range(24)))
        spent = _server_cpu_s(server.process.pid) - before
        assert requests.get(f"{server.base}/v2/health/live", timeout=10).status_code == 200
    mib = 24 * 20
    print(f"CPU {spent:.3f} s for {mib} MiB: {1000 * spent / mib:.2f} ms/MiB")
    assert spent / mib < LIMIT_S_PER_MIB, f"{spent:.2f} s of server CPU for {mib} MiB abandoned"


def test_a_gzip_body_whose_trailer_passes_the_limit_is_refused_without_inflating(tmp_path: Path) -> None:
    """gzip's trailer holds the inflated size mod 2**32, so the real size is at least that: a bomb
    that says so is refused at once (an honest client's body is never refused by it)."""
    import gzip

    write(tmp_path / "count/1/model.py", COUNT_MODEL)
    write(tmp_path / "count/config.toml", COUNT_CONFIG)
    bomb = gzip.compress(b"\0" * (80 << 20), 9)
    with serve(tmp_path, "--max-body-size", "64MiB") as server, requests.Session() as session:
        url = f"{server.base}/v2/models/count/infer"
        before = _server_cpu_s(server.process.pid)
        for _ in range(10):
            refused = session.post(url, data=bomb, headers={"Content-Encoding": "gzip"}, timeout=30)
            assert refused.status_code == 413
        spent = _server_cpu_s(server.process.pid) - before
        assert f"inflates to at least {80 << 20} bytes" in refused.json()["error"]
        # ten inflations to the 64 MiB limit cost about 1 s of CPU; reading ten 80 KB bodies, little
        assert spent < 0.3, f"{spent:.2f} s of server CPU for ten refusals"
        honest = orjson.dumps({"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]})
        answer = session.post(url, data=gzip.compress(honest), headers={"Content-Encoding": "gzip"}, timeout=30)
        assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [2]
