"""One model version on several GPUs (``gpus = [0, 1]``): a runtime per device, each instance
thread tied to one of them in turn, so ``count`` instances run on every listed GPU (Triton's rule)."""

from __future__ import annotations

import itertools
import threading

from inferd.runtimes.base import Answer, Arrays, Runtime


class DeviceSpread(Runtime):
    """Runs each call on the runtime its thread was given at its first call (round robin)."""

    def __init__(self, runtimes: list[Runtime]) -> None:
        self._runtimes = runtimes
        self.adopt_metadata(runtimes[0])
        self._turn = itertools.count()
        self._mine = threading.local()

    def infer(self, inputs: Arrays) -> Arrays:
        return self._runtime().infer(inputs)

    def infer_requests(self, requests: list[Arrays]) -> list[Answer]:
        return self._runtime().infer_requests(requests)

    def _runtime(self) -> Runtime:
        """The runtime of this thread's device."""
        runtime: Runtime | None = getattr(self._mine, "runtime", None)
        if runtime is None:
            runtime = self._mine.runtime = self._runtimes[next(self._turn) % len(self._runtimes)]
        return runtime

    def warmup(self) -> None:
        for runtime in self._runtimes:
            runtime.warmup()

    def scale(self, count: int) -> None:
        share = -(-count // len(self._runtimes))
        for runtime in self._runtimes:
            runtime.scale(share)

    def unload(self) -> None:
        for runtime in self._runtimes:
            runtime.unload()

    def describe(self) -> str:
        return " + ".join(runtime.describe() for runtime in self._runtimes)
