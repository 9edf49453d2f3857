"""`inferd bench`: fetch the model's metadata, build a body, load each concurrency, report."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from inferd.bench import loadgen, report
from inferd.bench.inputs import request_body


@dataclass(frozen=True, slots=True)
class BenchSettings:
    model: str
    url: str = "http://127.0.0.1:8000"
    version: str | None = None
    concurrency: tuple[int, ...] = (1, 8, 64)
    duration: float = 10.0
    warmup: float = 2.0
    binary: bool = False
    batch: int = 1
    processes: int = 1
    grpc_url: str | None = None  # host:port: load ModelInfer over gRPC instead of HTTP
    json_out: Path | None = None
    plot_out: Path | None = None


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return cast(bytes, response.read())


def _model_path(settings: BenchSettings) -> str:
    version = f"/versions/{settings.version}" if settings.version else ""
    return f"{settings.url.rstrip('/')}/v2/models/{settings.model}{version}"


def _worker(args: tuple[str, bytes, int | None, int, float]) -> tuple[list[int], int, float]:
    url, body, header_length, concurrency, seconds = args
    result = asyncio.run(_one_load(url, body, header_length, concurrency, seconds, None))
    return result.latencies_ns, result.errors, result.seconds


def _one_load(url: str, body: bytes, header_length: int | None, concurrency: int, seconds: float,
              counter: list[int] | None) -> Any:
    if url.startswith("grpc://"):
        from inferd.bench.grpc_load import run_grpc_load

        return run_grpc_load(url.removeprefix("grpc://"), body, concurrency, seconds, counter)
    return loadgen.run_load(url, body, header_length, concurrency, seconds, counter)


def _load(url: str, body: bytes, header_length: int | None, concurrency: int, seconds: float,
          processes: int, progress: bool) -> tuple[list[int], int, float]:
    if processes <= 1:
        counter = [0]
        stop = threading.Event()
        if progress:
            threading.Thread(target=_progress, args=(counter, stop, concurrency), daemon=True).start()
        try:
            result = asyncio.run(_one_load(url, body, header_length, concurrency, seconds, counter))
        finally:
            stop.set()
        return result.latencies_ns, result.errors, result.seconds
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    jobs = [(url, body, header_length, share, seconds) for share in shares if share]
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        parts = pool.map(_worker, jobs)
    latencies = [ns for part in parts for ns in part[0]]
    return latencies, sum(p[1] for p in parts), max(p[2] for p in parts)


def _progress(counter: list[int], stop: threading.Event, concurrency: int) -> None:
    last, start = 0, time.monotonic()
    while not stop.wait(1.0):
        now = counter[0]
        print(f"\r  c={concurrency}: {now - last:,} req/s, {now:,} done, {time.monotonic() - start:.0f}s",
              end="", file=sys.stderr, flush=True)
        last = now
    print(file=sys.stderr)


def run(settings: BenchSettings) -> list[report.Row]:
    metadata = json.loads(_get(_model_path(settings)))
    if settings.grpc_url:
        from inferd.bench.grpc_load import request_bytes

        body, header_length = request_bytes(settings.model, settings.version, metadata, settings.binary,
                                            settings.batch), None
        infer_url = "grpc://" + settings.grpc_url
    else:
        body, header_length = request_body(metadata, settings.binary, settings.batch)
        infer_url = _model_path(settings) + "/infer"
    metrics_url = settings.url.rstrip("/") + "/metrics"
    rows = []
    for concurrency in settings.concurrency:
        if settings.warmup > 0:
            _load(infer_url, body, header_length, concurrency, settings.warmup, settings.processes, False)
        before = _scrape(metrics_url)
        latencies, errors, seconds = _load(infer_url, body, header_length, concurrency, settings.duration,
                                           settings.processes, sys.stderr.isatty() or True)
        row = report.summarize(concurrency, latencies, errors, seconds)
        after = _scrape(metrics_url)
        if before is not None and after is not None:
            row.server_queue_ms, row.server_compute_ms = report.server_split(before, after, settings.model)
        rows.append(row)
    return rows


def _scrape(url: str) -> str | None:
    try:
        return _get(url).decode()
    except OSError:
        return None  # not an inferd server, or metrics off: no server-side split


def main(settings: BenchSettings) -> int:
    rows = run(settings)
    form = ("raw" if settings.binary else "typed") + " gRPC" if settings.grpc_url else (
        "binary" if settings.binary else "JSON")
    print(f"\ninferd bench: model {settings.model} at {settings.url}, {form} bodies, "
          f"{settings.duration:g}s per point, {settings.processes} load process(es)\n")
    print(report.table(rows))
    if settings.json_out is not None:
        settings.json_out.write_text(json.dumps({"model": settings.model, "url": settings.url,
                                                 "binary": settings.binary,
                                                 "rows": [r.to_dict() for r in rows]}, indent=1))
    if settings.plot_out is not None:
        report.plot(rows, settings.model, str(settings.plot_out))
    return 1 if any(r.errors for r in rows) else 0
