"""Attack mix: well-behaved clients beside slowloris, pipelining without reading, big bodies
abandoned mid-way, gzip bombs and header floods (issue 11's benchmark).

Serves examples/models (ONNX mlp batched, the Python model in its instance process). Phase 1: CLIENTS
well-behaved clients alone (their no-attack p99). Phase 2: the same clients for --seconds while the
attackers run. Well-behaved clients (a process of their own, keep-alive, aiohttp) alternate the ONNX
mlp (v2 JSON) and the Python model (BYTES, instance process). Reported: their errors and p50/p99 in
both phases, the server's resident memory (its whole process tree) sampled every second, and what
is left after a SIGTERM: /dev/shm files and temp folders of the server's pid, and its processes.
``--rounds N`` alternates the two phases N times on one server and pools each phase's latencies,
so that other load on a shared machine falls on both alike. ``--server-cpus``/``--client-cpus``
pin the server to its own core(s) and ``--attacker-nice`` makes the attackers yield the other
core to the clients' process (as if they ran on other machines).

    python benchmarks/attack_mix.py --seconds 120     # writes benchmarks/results/attack_mix-<time>.json
    python benchmarks/attack_mix.py --rounds 4 --seconds 14 --baseline-seconds 10 --attacks pipeline \
        --server-cpus 0 --client-cpus 1 --attacker-nice 10
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import free_port, tree_pids, wait_ready

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples" / "models"
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- the well-behaved clients (their own process) ---------------------------------------------------
def clients(port: int, count: int, seconds: float, out: multiprocessing.Queue) -> None:
    import aiohttp

    mlp = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
    text = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hello", "world"]}]}

    async def one(session: aiohttp.ClientSession, index: int, latencies: list[float], errors: list[str]) -> None:
        deadline = time.monotonic() + seconds
        turn = index
        while time.monotonic() < deadline:
            model, body = ("mlp_onnx", mlp) if turn % 2 == 0 else ("text_stats", text)
            turn += 1
            started = time.perf_counter()
            try:
                async with session.post(f"http://127.0.0.1:{port}/v2/models/{model}/infer", json=body) as answer:
                    await answer.read()
                    if answer.status != 200:
                        errors.append(f"{model}: {answer.status}")
                        continue
            except Exception as exc:  # any failure of a well-behaved call counts
                errors.append(f"{model}: {type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - started)

    async def run() -> None:
        latencies: list[float] = []
        errors: list[str] = []
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=count)) as session:
            await asyncio.gather(*(one(session, i, latencies, errors) for i in range(count)))
        out.put((latencies, errors))

    asyncio.run(run())


def run_clients(port: int, count: int, seconds: float) -> tuple[list[float], list[str]]:
    spawn = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = spawn.Queue()
    process = spawn.Process(target=clients, args=(port, count, seconds, queue))
    process.start()
    latencies, errors = queue.get(timeout=seconds + 120)
    process.join()
    return latencies, errors


def summary(latencies: list[float], errors: list[str]) -> dict:
    ms = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "error_samples": errors[:10],
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None}


# -- the attackers (this process) ---------------------------------------------------------------------
class Attack:
    def __init__(self, port: int, stop: asyncio.Event) -> None:
        self.port, self.stop = port, stop
        self.counts: dict[str, int] = {}

    def count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            await asyncio.sleep(0.1)
            return None

    async def slowloris(self) -> None:
        """A header byte every 2 s, for as long as the server lets the connection live."""
        while not self.stop.is_set():
            opened = await self._open()
            if opened is None:
                continue
            _, writer = opened
            self.count("slowloris")
            try:
                writer.write(b"POST /v2/models/mlp_onnx/infer HTTP/1.1\r\nHost: x\r\n")
                while not self.stop.is_set():
                    await asyncio.sleep(2)
                    writer.write(b"X-a: b\r\n")
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

    async def pipeline_without_reading(self) -> None:
        request = (b"POST /v2/models/mlp_onnx/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s")
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                       "data": [1.0] * 16}]}).encode()
        burst = (request % (len(body), body)) * 100
        while not self.stop.is_set():
            opened = await self._open()
            if opened is None:
                continue
            _, writer = opened
            self.count("pipeline")
            try:
                for _ in range(2000):  # the server stops reading once its answers back up
                    if self.stop.is_set():
                        break
                    writer.write(burst)
                    await asyncio.wait_for(writer.drain(), 5)
            except (OSError, TimeoutError):
                pass
            finally:
                writer.transport.abort()

    async def abandoned_body(self) -> None:
        chunk = b"\0" * (1 << 20)
        while not self.stop.is_set():
            opened = await self._open()
            if opened is None:
                continue
            _, writer = opened
            self.count("abandoned_body")
            try:
                writer.write(b"POST /v2/models/mlp_onnx/infer HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 60000000\r\n\r\n")
                for _ in range(20):
                    writer.write(chunk)
                    await asyncio.wait_for(writer.drain(), 5)
            except (OSError, TimeoutError):
                pass
            finally:
                writer.transport.abort()
            await asyncio.sleep(0.05)

    async def gzip_bomb(self, bomb: bytes) -> None:
        while not self.stop.is_set():
            opened = await self._open()
            if opened is None:
                continue
            reader, writer = opened
            self.count("gzip_bomb")
            try:
                writer.write(b"POST /v2/models/mlp_onnx/infer HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(bomb) + bomb)
                await asyncio.wait_for(reader.read(4096), 10)
            except (OSError, TimeoutError):
                pass
            finally:
                writer.transport.abort()

    async def header_flood(self) -> None:
        flood = b"".join(b"X-Flood-%d: %s\r\n" % (i, b"v" * 100) for i in range(5000))
        while not self.stop.is_set():
            opened = await self._open()
            if opened is None:
                continue
            reader, writer = opened
            self.count("header_flood")
            try:
                writer.write(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n" + flood + b"\r\n")
                await asyncio.wait_for(reader.read(4096), 10)
            except (OSError, TimeoutError):
                pass
            finally:
                writer.transport.abort()


ATTACKS = ("slowloris", "pipeline", "abandoned_body", "gzip_bomb", "header_flood")


async def attack(port: int, seconds: float, slowloris: int, kinds: tuple[str, ...], bomb: bytes,
                 nice: int = 0) -> dict[str, int]:
    if nice:  # the attackers' thread yields its core to the clients' process (as if on another machine)
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    stop = asyncio.Event()
    mix = Attack(port, stop)
    tasks = [*(mix.slowloris() for _ in range(slowloris if "slowloris" in kinds else 0)),
             *(mix.pipeline_without_reading() for _ in range(4 if "pipeline" in kinds else 0)),
             *(mix.abandoned_body() for _ in range(4 if "abandoned_body" in kinds else 0)),
             *(mix.gzip_bomb(bomb) for _ in range(2 if "gzip_bomb" in kinds else 0)),
             *(mix.header_flood() for _ in range(2 if "header_flood" in kinds else 0))]
    running = [asyncio.ensure_future(task) for task in tasks]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait(running, timeout=15)
    for task in running:
        task.cancel()
    return mix.counts


# -- the server ------------------------------------------------------------------------------------------
def tree_rss_mib(pid: int) -> float:
    total = 0
    for member in tree_pids(pid):
        try:
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total / 2**20


def sample_rss(pid: int, stop: threading.Event, samples: list[float]) -> None:
    while not stop.wait(1.0):
        samples.append(tree_rss_mib(pid))


def leftovers(pid: int, children: list[int]) -> dict[str, list[str]]:
    return {"dev_shm": [p.name for p in Path("/dev/shm").glob(f"inferd-{pid}-*")]
            + [p.name for child in children for p in Path("/dev/shm").glob(f"inferd-{child}-*")],
            "temp_dirs": [p.name for p in Path(tempfile.gettempdir()).glob(f"inferd-scratch-{pid}-*")],
            "processes": [str(child) for child in children if Path(f"/proc/{child}").exists()
                          and "Z" not in Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1][:3]]}


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for kind, n in counts.items():
        into[kind] = into.get(kind, 0) + n


def _cpus(spec: str) -> set[int]:
    """A taskset-style list: ``0``, ``0,1``, ``0-3``."""
    cpus: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the attack runs")
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="alternate baseline and attack this many times "
                        "(each --baseline-seconds alone, then --seconds under attack); latencies are pooled")
    parser.add_argument("--slowloris", type=int, default=300, help="slowloris connections at once")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="which attacks run (comma-separated)")
    parser.add_argument("--server-cpus", default="", help="pin the server's process tree to these CPUs "
                        "(taskset list, e.g. 0); the clients and attackers then run on --client-cpus")
    parser.add_argument("--client-cpus", default="", help="CPUs for the well-behaved clients and the attackers")
    parser.add_argument("--attacker-nice", type=int, default=0, help="niceness added to the attackers' thread, "
                        "so that on a shared core they take CPU from the well-behaved clients' process last")
    parser.add_argument("--rss-bound-mib", type=float, default=1500.0,
                        help="the server tree's resident memory must stay under this")
    stamp = time.strftime("%Y%m%dT%H%MZ", time.gmtime())
    parser.add_argument("--out", type=Path, default=HERE / "results" / f"attack_mix-{stamp}.json")
    args = parser.parse_args()

    if args.client_cpus:  # this process (the attackers) and the clients' process, spawned from it
        os.sched_setaffinity(0, _cpus(args.client_cpus))
    load_before = os.getloadavg()
    bomb = gzip.compress(b"\0" * (256 << 20), 9)  # ~250 KB that inflate to 256 MiB
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="attack-mix-", suffix=".log")[1])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    pin = ["taskset", "-c", args.server_cpus] if args.server_cpus else []
    server = subprocess.Popen([*pin, sys.executable, "-m", "inferd", "serve", str(EXAMPLES), "--http-port", str(port),
                               "--grpc-port", "0", "--log-level", "warning"],
                              stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", server)
        print("server pid:", server.pid, flush=True)
        run_clients(port, args.clients, 3)  # warm-up
        samples: list[float] = []
        stop = threading.Event()
        threading.Thread(target=sample_rss, args=(server.pid, stop, samples), daemon=True).start()
        results: dict[str, int] = {}
        alone: tuple[list[float], list[str]] = ([], [])
        attacked: tuple[list[float], list[str]] = ([], [])
        rounds = []
        for _ in range(args.rounds):  # alternating: the machine's other load drifts over both alike
            base = run_clients(port, args.clients, args.baseline_seconds)
            attackers = threading.Thread(target=lambda: _add(results, asyncio.run(attack(
                port, args.seconds, args.slowloris, tuple(args.attacks.split(",")), bomb, args.attacker_nice))))
            attackers.start()
            time.sleep(2)  # the attack is under way
            under = run_clients(port, args.clients, args.seconds - 4)
            attackers.join()
            rounds.append({"no_attack": summary(*base), "under_attack": summary(*under)})
            print(rounds[-1], flush=True)
            for into, came in ((alone, base), (attacked, under)):
                into[0].extend(came[0])
                into[1].extend(came[1])
        stop.set()
        baseline, under_all = summary(*alone), summary(*attacked)
        children = [pid for pid in tree_pids(server.pid) if pid != server.pid]
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
    time.sleep(1)
    left = leftovers(server.pid, children)
    report = {
        "rounds_run": args.rounds, "seconds": args.seconds, "baseline_seconds": args.baseline_seconds,
        "clients": args.clients, "slowloris": args.slowloris, "attacks": args.attacks,
        "attack_connections": results, "rounds": rounds, "no_attack": baseline, "under_attack": under_all,
        "p99_ratio": (round(under_all["p99_ms"] / baseline["p99_ms"], 2)
                      if under_all["p99_ms"] and baseline["p99_ms"] else None),
        "rss_mib_max": round(max(samples), 1) if samples else None,
        "rss_mib_bound": args.rss_bound_mib, "server_cpus": args.server_cpus, "client_cpus": args.client_cpus,
        "attacker_nice": args.attacker_nice,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "server_exit_code": code, "leftovers": left,
    }
    report["passed"] = (under_all["errors"] == 0 and report["p99_ratio"] is not None and report["p99_ratio"] <= 3
                        and (report["rss_mib_max"] or 0) < args.rss_bound_mib and not any(left.values())
                        and code == 0)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
