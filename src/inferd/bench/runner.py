"""`inferd bench`: fetch the model's metadata, build a body, load each concurrency, report."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import multiprocessing
import sys
import threading
import time
import urllib.error
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
    input_files: tuple[tuple[str, Path], ...] = ()  # BYTES inputs' content, from files
    classification: int = 0  # > 0: ask every output for its top classes (Triton's extension)
    json_out: Path | None = None
    plot_out: Path | None = None


class BenchError(Exception):
    """Why the bench cannot run, in one line."""


def http_url(url: str) -> str:
    """``host:port`` (as perf_analyzer takes it) means ``http://host:port``."""
    return url if "://" in url else f"http://{url}"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return cast(bytes, response.read())


def _metadata(settings: BenchSettings) -> dict[str, Any]:
    url = _model_path(settings)
    try:
        return cast(dict[str, Any], json.loads(_get(url)))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()[:200]
        what = f"model '{settings.model}'" + (f" version {settings.version}" if settings.version else "")
        raise BenchError(f"{what} is not served at {settings.url} (GET {url}: {exc.code} {detail})") from None
    except urllib.error.URLError as exc:
        raise BenchError(f"no server answers at {settings.url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read the model's metadata from {url}: {exc}") from None


def _files(settings: BenchSettings, metadata: dict[str, Any]) -> dict[str, bytes]:
    byte_inputs = [spec["name"] for spec in metadata["inputs"] if spec["datatype"] == "BYTES"]
    files = {}
    for name, path in settings.input_files:
        if name not in byte_inputs:
            raise BenchError(f"--input-file {name}=...: model '{settings.model}' has no BYTES input '{name}' "
                             f"(its BYTES inputs: {', '.join(byte_inputs) or 'none'})")
        try:
            files[name] = path.read_bytes()
        except OSError as exc:
            raise BenchError(f"--input-file {name}={path}: {exc.strerror}") from None
    return files


def _model_path(settings: BenchSettings) -> str:
    version = f"/versions/{settings.version}" if settings.version else ""
    return f"{settings.url.rstrip('/')}/v2/models/{settings.model}{version}"


def _worker(args: tuple[str, bytes, int | None, int, float]) -> loadgen.LoadResult:
    url, body, header_length, concurrency, seconds = args
    return cast(loadgen.LoadResult, asyncio.run(_one_load(url, body, header_length, concurrency, seconds, None)))


def _one_load(url: str, body: bytes, header_length: int | None, concurrency: int, seconds: float,
              counter: list[int] | None) -> Any:
    if url.startswith("grpc://"):
        from inferd.bench.grpc_load import run_grpc_load

        return run_grpc_load(url.removeprefix("grpc://"), body, concurrency, seconds, counter)
    return loadgen.run_load(url, body, header_length, concurrency, seconds, counter)


def _load(url: str, body: bytes, header_length: int | None, concurrency: int, seconds: float,
          processes: int, progress: bool) -> loadgen.LoadResult:
    if processes <= 1:
        counter = [0]
        stop = threading.Event()
        if progress:
            threading.Thread(target=_progress, args=(counter, stop, concurrency), daemon=True).start()
        try:
            return cast(loadgen.LoadResult, asyncio.run(_one_load(url, body, header_length, concurrency, seconds,
                                                                  counter)))
        finally:
            stop.set()
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    jobs = [(url, body, header_length, share, seconds) for share in shares if share]
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        parts = pool.map(_worker, jobs)
    merged = loadgen.LoadResult(seconds=max(p.seconds for p in parts))
    for part in parts:
        merged.latencies_ns += part.latencies_ns
        merged.errors += part.errors
        for kind, (count, message) in part.failures.items():
            seen = merged.failures.setdefault(kind, [0, message])
            seen[0] = cast(int, seen[0]) + cast(int, count)
    return merged


def _progress(counter: list[int], stop: threading.Event, concurrency: int) -> None:
    last, start = 0, time.monotonic()
    while not stop.wait(1.0):
        now = counter[0]
        print(f"\r  c={concurrency}: {now - last:,} req/s, {now:,} done, {time.monotonic() - start:.0f}s",
              end="", file=sys.stderr, flush=True)
        last = now
    print(file=sys.stderr)


def run(settings: BenchSettings) -> list[report.Row]:
    metadata = _metadata(settings)
    files = _files(settings, metadata)
    if settings.grpc_url:
        from inferd.bench.grpc_load import request_bytes

        body, header_length = request_bytes(settings.model, settings.version, metadata, settings.binary,
                                            settings.batch, files, settings.classification), None
        infer_url = "grpc://" + settings.grpc_url
    else:
        body, header_length = request_body(metadata, settings.binary, settings.batch, files=files,
                                           classification=settings.classification)
        infer_url = _model_path(settings) + "/infer"
    metrics_url = settings.url.rstrip("/") + "/metrics"
    rows = []
    for concurrency in settings.concurrency:
        try:
            if settings.warmup > 0:
                _load(infer_url, body, header_length, concurrency, settings.warmup, settings.processes, False)
            before = _scrape(metrics_url)
            result = _load(infer_url, body, header_length, concurrency, settings.duration,
                           settings.processes, sys.stderr.isatty() or True)
        except OSError as exc:  # the server went away (connection refused) while loading
            raise BenchError(f"lost the server at {settings.url} at concurrency {concurrency}: {exc}") from None
        row = report.summarize(concurrency, result.latencies_ns, result.errors, result.seconds, result.failures)
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
    settings = dataclasses.replace(settings, url=http_url(settings.url))
    try:
        rows = run(settings)
    except BenchError as exc:
        print(f"inferd bench: {exc}", file=sys.stderr)
        return 2
    form = ("raw" if settings.binary else "typed") + " gRPC" if settings.grpc_url else (
        "binary" if settings.binary else "JSON")
    print(f"\ninferd bench: model {settings.model} at {settings.url}, {form} bodies, "
          f"{settings.duration:g}s per point, {settings.processes} load process(es)\n")
    print(report.table(rows))
    for line in report.failures(rows):
        print(line)
    if settings.json_out is not None:
        settings.json_out.write_text(json.dumps({"model": settings.model, "url": settings.url,
                                                 "binary": settings.binary,
                                                 "rows": [r.to_dict() for r in rows]}, indent=1))
    if settings.plot_out is not None:
        report.plot(rows, settings.model, str(settings.plot_out))
    return 1 if any(r.errors for r in rows) else 0
