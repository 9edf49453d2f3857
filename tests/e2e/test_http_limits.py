"""A real `inferd serve` against clients that behave as attackers would: its memory stays bounded
and well-behaved clients keep being served."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import requests

from tests.conftest import RunningServer, holds_in_one_of, serve

MIB = 1024 * 1024


def rss_mib(server: RunningServer) -> float:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def upload_and_abandon(server: RunningServer, declared: int, sent: int) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % declared)
        chunk = b"x" * MIB
        for _ in range(sent // MIB):
            sock.sendall(chunk)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset


def test_bodies_abandoned_midway_do_not_grow_the_server() -> None:
    with serve(None, "--max-body-size", "40MiB", "--max-inflight-size", "400MiB") as server:
        index = f"{server.base}/v2/repository/index"
        assert requests.post(index, timeout=10).status_code == 200
        before = rss_mib(server)
        for _ in range(4):  # rounds of 6 clients, 30 of 40 MiB each, then gone
            clients = [threading.Thread(target=upload_and_abandon, args=(server, 40 * MIB, 30 * MIB))
                       for _ in range(6)]
            for client in clients:
                client.start()
            for client in clients:
                client.join()
            time.sleep(0.3)
        grown = rss_mib(server) - before
        assert grown < 250, f"RSS grew {grown:.0f} MiB over 4 rounds of 180 MiB abandoned"
        assert requests.post(index, timeout=10).status_code == 200


def test_big_bodies_over_the_inflight_budget_get_503_before_they_are_sent() -> None:
    with serve(None, "--max-body-size", "40MiB", "--max-inflight-size", "60MiB") as server:
        holders = []
        for _ in range(2):  # two bodies of 25 MiB announced, a byte sent: 50 of 60 MiB held
            sock = socket.create_connection(("127.0.0.1", server.http_port))
            sock.sendall(b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n{"
                         % (25 * MIB))
            holders.append(sock)
        time.sleep(0.2)
        refused = requests.post(f"{server.base}/v2/repository/index", data=b"[" + b" " * (20 * MIB) + b"]",
                                timeout=10)
        assert refused.status_code == 503
        assert "--max-inflight-size" in refused.json()["error"]
        for sock in holders:
            sock.close()
        time.sleep(0.2)
        assert requests.post(f"{server.base}/v2/repository/index", data=b"{" + b" " * (20 * MIB) + b"}",
                             timeout=10).status_code == 200


def test_a_client_pipelining_without_reading_is_held_to_its_buffers() -> None:
    with serve(None) as server:
        before = rss_mib(server)
        sock = socket.create_connection(("127.0.0.1", server.http_port))
        sock.setblocking(False)
        request = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 100
        deadline = time.monotonic() + 3
        sent = 0
        while time.monotonic() < deadline:  # as fast as the server takes them, never reading
            try:
                sent += sock.send(request)
            except BlockingIOError:
                time.sleep(0.01)
        grown = rss_mib(server) - before
        assert grown < 50, f"RSS grew {grown:.0f} MiB while answers were not read"

        def ready_at_once() -> str | None:
            start = time.monotonic()
            assert requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
            took = time.monotonic() - start
            return None if took < 1 else f"a probe took {took:.2f} s beside the client that does not read"

        holds_in_one_of(3, ready_at_once)
        sock.close()


def test_slowloris_cannot_hold_the_server() -> None:
    with serve(None, "--header-timeout", "1", "--max-connections", "20") as server:
        slow = []
        for _ in range(40):  # twice the connection limit, each sending a byte now and then
            sock = socket.create_connection(("127.0.0.1", server.http_port))
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nX-Slow: ")
            slow.append(sock)
        start = time.monotonic()
        for _ in range(10):  # well-behaved clients get in and are served at once
            with requests.Session() as session:
                assert session.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
        assert time.monotonic() - start < 3
        time.sleep(1.5)
        timed_out = 0
        for sock in slow:
            sock.settimeout(2)
            try:
                sock.sendall(b"a")
                answer = sock.recv(4096)
            except OSError:
                answer = b""
            timed_out += answer.startswith(b"HTTP/1.1 408 ") or answer == b""
            sock.close()
        assert timed_out == len(slow)  # none is still held open


def test_large_body_rate_is_a_flag(model_repo: Path) -> None:
    """`--large-body-rate 4MiB`: a 12 MiB body is read at 4 MiB/s (about 2.75 s, the first MiB
    free), and the server answers it as usual afterwards."""
    size = 12 << 20
    with serve(model_repo, "--large-body-rate", "4MiB", "--max-body-size", "32MiB", "--model-control", "explicit",
               "--load-model", "py_double") as server:
        start = time.monotonic()
        answer = requests.post(f"{server.base}/v2/models/py_double/infer", data=b" " * size, timeout=30,
                               headers={"Content-Type": "application/json"})
        took = time.monotonic() - start
        assert answer.status_code == 400 and "JSON" in answer.text, answer.text  # read whole, then judged
        assert took > 2.0, f"12 MiB read in {took:.2f} s: faster than 4 MiB/s"
        assert requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
