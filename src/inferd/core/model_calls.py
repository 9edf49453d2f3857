"""A model's requests to other models (Triton's BLS), answered by the data plane.

A Python model's ``pb_utils.InferenceRequest(...).exec()`` reaches here on the model's own thread
(in the server process, or forwarded by its instance process's server thread): each call runs on the
event loop as any request does (the target's batching, queue, deadline, statistics), without the
credentials check, since the request that led to it was checked."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Generator
from concurrent.futures import Future

from inferd.core.control import ModelControl
from inferd.core.dataplane import DataPlane
from inferd.observability.metrics import Metrics
from inferd.types import InferRequest, InferResponse, LoadOverride, MetricUpdate

_END = object()
_AHEAD = 16  # a stream's answers waiting for the calling model at most (then the target waits too)
_CANCEL_CHECK_S = 0.05  # how often a stream waiting for its next answer asks whether its caller cancelled


class LoopModelCalls:
    """``ModelCalls`` over the data plane on ``loop`` (the server's event loop)."""

    def __init__(self, data: DataPlane, control: ModelControl, loop: asyncio.AbstractEventLoop,
                 metrics: Metrics | None) -> None:
        self._data = data
        self._control = control
        self._loop = loop
        self._metrics = metrics

    def infer(self, request: InferRequest) -> InferResponse:
        self._not_on_loop()
        return self.start_infer(request).result()

    def start_infer(self, request: InferRequest) -> Future[InferResponse]:
        return asyncio.run_coroutine_threadsafe(self._data.run_step(request), self._loop)

    def infer_stream(self, request: InferRequest) -> Generator[InferResponse, None, None]:
        self._not_on_loop()
        answers: queue.Queue[object] = queue.Queue()
        stopped = threading.Event()

        async def pump() -> None:
            try:
                async with contextlib.aclosing(self._data.run_stream(request)) as stream:
                    async for answer in stream:
                        while answers.qsize() >= _AHEAD and not stopped.is_set():  # a slow reader slows the model
                            await asyncio.sleep(0.005)
                        answers.put(answer)
                        if stopped.is_set():
                            return
            except BaseException as exc:  # CancelledError too: the reader must not wait for ever
                answers.put(exc)
            finally:
                answers.put(_END)

        running = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while (item := _next(answers, request)) is not _END:
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, InferResponse)
                yield item
        finally:
            stopped.set()
            running.cancel()  # the reader stopped early: the model's stream is closed, as a client's would be

    def is_model_ready(self, name: str, version: str | None) -> bool:
        return self._data.is_model_ready(name, version, None, check_access=False)

    def load_model(self, name: str, config: str | None, files: dict[str, bytes] | None = None) -> None:
        self._not_on_loop()
        override = LoadOverride(config=config, files=files or {}) if config else None
        asyncio.run_coroutine_threadsafe(self._control.load_for_model(name, override), self._loop).result()

    def unload_model(self, name: str, unload_dependents: bool) -> None:
        self._not_on_loop()
        asyncio.run_coroutine_threadsafe(self._control.unload_for_model(name, unload_dependents), self._loop).result()

    def record_metric(self, update: MetricUpdate) -> None:
        if self._metrics is None:
            return
        u = update
        if u.source == "torchserve":
            self._metrics.torchserve_models.record(u.family, u.description, u.kind, u.labels, u.value)
        else:
            self._metrics.custom.apply(u.family, u.description, u.kind, u.labels, u.op, u.value, u.buckets)

    def _not_on_loop(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if running is self._loop:
            raise RuntimeError("a model called another model from the server's event loop, where the call "
                               "could never be answered; run it on the model's own thread")


def _next(answers: queue.Queue[object], request: InferRequest) -> object:
    """A stream's next item, or ``_END`` once its caller cancelled it (an instance process's model,
    whose server thread waits here): a silent target stops then, not at its next answer."""
    if request.cancelled is None:
        return answers.get()
    while True:
        try:
            return answers.get(timeout=_CANCEL_CHECK_S)
        except queue.Empty:
            if request.cancelled():
                return _END
