"""Instance pools: N executions of one model at once, on threads (frameworks release the GIL)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from inferd.errors import DeadlineExceeded, InferdError, ModelError, QueueFull
from inferd.runtimes.base import Arrays, Runtime
from inferd.types import Timings


class InstancePool(Runtime):
    """Runs a runtime on ``count`` threads; at most ``max_queue`` calls wait for one.

    It is a Runtime itself, so the batcher (or nothing) can sit on top of it.
    """

    def __init__(self, runtime: Runtime, count: int, name: str, max_queue: int = 1024) -> None:
        self.inner = runtime
        self.platform = runtime.platform
        self.inputs = runtime.inputs
        self.outputs = runtime.outputs
        self.max_batch_size = runtime.max_batch_size
        self.count = count
        self._name = name
        self._max_queue = max_queue
        self._executor = ThreadPoolExecutor(count, thread_name_prefix=f"inferd-{name}")
        self.pending = 0  # submitted and not finished
        self.busy = 0  # running right now

    def infer(self, inputs: Arrays) -> Arrays:
        return self.inner.infer(inputs)

    async def infer_async(self, inputs: Arrays, timings: Timings | None = None,
                          deadline: float | None = None) -> Arrays:
        if self.pending >= self._max_queue + self.count:
            raise QueueFull(f"model '{self._name}' queue is full ({self._max_queue} waiting); "
                            "retry later")
        timings = timings if timings is not None else Timings()
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, self._run, inputs, timings, time.perf_counter(), deadline)
        finally:
            self.pending -= 1

    def idle(self) -> bool:
        return self.busy < self.count

    def _run(self, inputs: Arrays, timings: Timings, enqueued: float,
             deadline: float | None) -> Arrays:
        start = time.perf_counter()
        timings.queue += start - enqueued
        if deadline is not None and start > deadline:
            raise DeadlineExceeded(f"model '{self._name}': the request's deadline passed after "
                                   f"{(start - enqueued) * 1000:.1f} ms in the queue; it did not run")
        self.busy += 1
        try:
            return self.inner.infer(inputs)
        except InferdError:
            raise
        except Exception as exc:
            raise ModelError(f"model '{self._name}' failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self.busy -= 1
            timings.compute += time.perf_counter() - start

    def unload(self) -> None:
        self._executor.shutdown(wait=True)
        self.inner.unload()

    def describe(self) -> str:
        return f"{self.inner.describe()}, {self.count} instance(s)"
