"""The core as a front-end worker sees it: every call goes to the process that owns the models.

The transports are the same objects as in a single process; they get a :class:`Core` whose parts
forward their calls. Coroutine methods (infer, load, unload, ...) go over an asynchronous line and
many are in flight at once; the few plain methods (metadata, health, index) go over a second,
blocking line and answer at once, as they do in one process.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

from inferd.core import Core, DataPlane, ModelControl
from inferd.errors import InvalidInput, PayloadTooLarge, Unavailable
from inferd.observability.metrics import Metrics
from inferd.types import InferRequest, InferResponse
from inferd.workers.channel import FrameProtocol, FrameTooLarge, describe, frame, read_frame
from inferd.workers.codec import pack_request, unpack_response

CALL_NOW_TIMEOUT_S = 10.0  # a plain call holds the worker's loop; the model process answers it at once
CANCEL_SWEEP_S = 0.1  # how often calls in flight are checked for clients that went away
# What transports ask before each request (is the model there, its tensors, a label's version):
# kept for a moment so a request costs no blocking round trip. Only answers are kept, never
# errors; model control through any worker clears every worker's copy, and what changes inside
# the model process (a poll, a reload) shows within KEEP_S. Inference itself is always decided by
# the model process, so a stale copy can only delay an error, never serve an unloaded model.
KEPT = frozenset({"model_metadata", "signature_metadata", "resolve_label", "model_ready", "authorize"})
KEEP_S = 0.25
KEEP_MAX = 1024


class Channel:
    """Both lines to the model process. ``lost`` is set when it goes away (the worker then stops)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], Callable[[], bool] | None]] = {}
        self._protocol = FrameProtocol(self._on_message, self._on_lost, self._refuse)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._kept: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._streams: dict[int, asyncio.Queue[tuple[str, Any]]] = {}
        self.lost = asyncio.Event()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: self._protocol, str(self._path))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CALL_NOW_TIMEOUT_S)
        sock.connect(str(self._path))
        sock.sendall(b"".join(frame([("sync", 0)])))
        self._sock = sock
        self._sweeper = loop.create_task(self._sweep())

    async def call(self, target: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return await self._request(lambda call_id: ("call", call_id, target, name, args, kwargs), None)

    async def infer(self, request: InferRequest) -> InferResponse:
        packed = pack_request(request)
        return unpack_response(await self._request(lambda call_id: ("infer", call_id, packed), request.cancelled))

    async def stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        """A decoupled model's answers as the model process sends them, at most STREAM_WINDOW
        ahead of what this side has taken (a slow client slows the model, as in one process);
        closing the iterator (the client went away) cancels the model's generator there."""
        if self.lost.is_set():
            raise Unavailable("the model process is gone; this worker is stopping")
        call_id = next(self._ids)
        answers: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._streams[call_id] = answers
        self._protocol.send(("stream", call_id, pack_request(request)))
        finished = False
        try:
            while True:
                kind, value = await answers.get()
                if kind == "item":
                    self._protocol.send(("ack", call_id))  # room for one more in the window
                    yield unpack_response(value)
                    continue
                finished = True
                if kind == "err":
                    raise value
                return
        finally:
            self._streams.pop(call_id, None)
            if not finished:
                self._protocol.send(("cancel", call_id))

    async def _request(self, message: Callable[[int], tuple[Any, ...]], cancelled: Callable[[], bool] | None) -> Any:
        if self.lost.is_set():
            raise Unavailable("the model process is gone; this worker is stopping")
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = (future, cancelled)
        self._protocol.send(message(call_id))
        try:
            return await future
        except asyncio.CancelledError:
            self._protocol.send(("cancel", call_id))
            raise
        finally:
            self._pending.pop(call_id, None)

    def call_now(self, target: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._sock is None or self.lost.is_set():
            raise Unavailable("the model process is gone; this worker is stopping")
        message = ("call", 0, target, name, args, kwargs)
        try:
            framed = frame([message])
        except Exception as exc:  # nothing was sent: the line is as it was
            raise _refusal(exc) from None
        with self._lock:
            try:
                self._sock.sendall(b"".join(framed))
                kind, value = self._answer_now(self._sock)
            except OSError as exc:  # includes the timeout: the channel's state is unknown now
                self._on_lost()
                raise Unavailable(f"the model process did not answer: {exc}") from exc
        if kind == "err":
            raise value
        return value

    @staticmethod
    def _answer_now(sock: socket.socket) -> tuple[str, Any]:
        """The blocking line's answer; a "changed" notice the model process sent before it knew
        this line for what it is is skipped (nothing is kept yet when the line opens)."""
        while True:
            for kind, _, value in read_frame(sock):
                if kind != "changed":
                    return kind, value

    def call_kept(self, target: str, name: str, *args: Any, **kwargs: Any) -> Any:
        """``call_now`` for what KEPT names: an answer younger than KEEP_S is answered again."""
        key = (target, name, args, tuple(sorted(kwargs.items())))
        now = time.monotonic()
        kept = self._kept.get(key)
        if kept is not None and kept[0] > now:
            return kept[1]
        value = self.call_now(target, name, *args, **kwargs)
        if len(self._kept) >= KEEP_MAX:  # keys come from clients: a bound, not a policy
            self._kept.clear()
        self._kept[key] = (now + KEEP_S, value)
        return value

    def _on_message(self, message: Any) -> None:
        kind, call_id, value = message
        if kind == "changed":
            self._kept.clear()
            return
        stream = self._streams.get(call_id)
        if stream is not None:
            stream.put_nowait((kind, value))
            return
        waiting = self._pending.get(call_id)
        if waiting is None or waiting[0].done():
            return  # cancelled meanwhile
        if kind == "ok":
            waiting[0].set_result(value)
        else:
            waiting[0].set_exception(value)

    def _refuse(self, message: tuple[Any, ...], exc: Exception) -> None:
        """A call that cannot go to the model process (an argument that does not pickle, or over
        the channel's frame size) fails where it was asked; nothing goes in its place."""
        error = _refusal(exc)
        waiting = self._pending.get(message[1])
        if waiting is not None and not waiting[0].done():
            waiting[0].set_exception(error)
        stream = self._streams.get(message[1])
        if stream is not None:
            stream.put_nowait(("err", error))

    def _on_lost(self) -> None:
        self.lost.set()
        gone = Unavailable("the model process went away during the call")
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(gone)
        for stream in self._streams.values():
            stream.put_nowait(("err", gone))
        if self._sock is not None:
            self._sock.close()

    async def _sweep(self) -> None:
        """A client gone away cancels its call in the model process (its batch slot is freed)."""
        while True:
            await asyncio.sleep(CANCEL_SWEEP_S)
            for future, cancelled in list(self._pending.values()):
                if cancelled is not None and not future.done() and cancelled():
                    future.cancel()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._protocol.transport is not None:
            self._protocol.transport.close()
        if self._sock is not None:
            self._sock.close()



def _refusal(exc: Exception) -> InvalidInput:
    """What a caller hears when its call cannot be handed over (``frame`` raised ``exc``)."""
    kind = PayloadTooLarge if isinstance(exc, FrameTooLarge) else InvalidInput
    return kind(f"this request cannot be handed to the model process: {describe(exc)}")


class _Part:
    """One part of the core (``shape`` is its class in the model process): each method forwards."""

    def __init__(self, channel: Channel, target: str, shape: type) -> None:
        self._channel, self._target, self._shape = channel, target, shape

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._shape, name, None)
        if method is None or isinstance(method, property):  # a setting of the core's: read (and kept)
            return self._channel.call_kept(self._target, name)
        if inspect.iscoroutinefunction(method):
            async def forward(*args: Any, **kwargs: Any) -> Any:
                return await self._channel.call(self._target, name, args, kwargs)
            bound: Any = forward
        elif name in KEPT:
            bound = functools.partial(self._channel.call_kept, self._target, name)
        else:
            bound = functools.partial(self._channel.call_now, self._target, name)
        setattr(self, name, bound)  # looked up once
        return bound


class _RemoteDataPlane(_Part):
    """Health is partly the worker's own: it stops being ready as soon as it drains."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(channel, "data", DataPlane)
        self._draining = False

    def live(self) -> bool:
        return not self._channel.lost.is_set()

    def ready(self) -> bool:
        return not self._draining and bool(self._channel.call_now("data", "ready"))

    def start_draining(self) -> None:
        self._draining = True

    def infer_stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        return self._channel.stream(request)

    async def infer(self, request: InferRequest) -> InferResponse:
        started = time.perf_counter()
        response = await self._channel.infer(request)
        response.timings.total = time.perf_counter() - started  # the hop to the model process counts too
        return response


def remote_core(channel: Channel) -> Core:
    """A :class:`Core` for the transports of a worker (typed as the real one: same methods)."""
    return Core(data=cast(DataPlane, _RemoteDataPlane(channel)),
                control=cast(ModelControl, _Part(channel, "control", ModelControl)),
                metrics=cast(Metrics, _Part(channel, "metrics", Metrics)))
