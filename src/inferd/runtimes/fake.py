"""A runtime without a framework, for tests: applies a numpy function, optionally slowly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from inferd.runtimes.base import Arrays, Runtime
from inferd.types import TensorSpec


class FakeRuntime(Runtime):
    platform = "fake"

    def __init__(self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 fn: Callable[[Arrays], Arrays], max_batch_size: int = 0,
                 delay_s: float = 0.0) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.max_batch_size = max_batch_size
        self._fn = fn
        self._delay_s = delay_s
        self._lock = threading.Lock()
        self.calls: list[int] = []  # batch size of every call (rows of the first input)
        self.running = 0
        self.max_running = 0

    def infer(self, inputs: Arrays) -> Arrays:
        with self._lock:
            first = next(iter(inputs.values()))
            self.calls.append(int(first.shape[0]) if first.ndim else 1)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self._delay_s:
                time.sleep(self._delay_s)
            return self._fn(inputs)
        finally:
            with self._lock:
                self.running -= 1
