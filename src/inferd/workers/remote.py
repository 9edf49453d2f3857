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
from inferd.errors import GroupRefused, InvalidInput, ModelError, PayloadTooLarge, Unavailable, describe
from inferd.observability.metrics import Metrics
from inferd.types import InferRequest, InferResponse, Tensor, Timings
from inferd.workers.channel import FrameProtocol, FrameTooLarge, frame, read_frame
from inferd.workers.codec import pack_request, unpack_response

CALL_NOW_TIMEOUT_S = 10.0  # a plain call holds the worker's loop; the model process answers it at once
BEAT_S = 1.0  # how often a worker tells the model process its loop runs
CANCEL_SWEEP_S = 0.1  # how often calls in flight are checked for clients that went away
# What transports ask before each request (is the model there, its tensors, a label's version):
# kept for a moment so a request costs no blocking round trip. Only answers are kept, never
# errors; model control through any worker clears every worker's copy, and what changes inside
# the model process (a poll, a reload) shows within KEEP_S. Inference itself is always decided by
# the model process, so a stale copy can only delay an error, never serve an unloaded model.
KEPT = frozenset({"model_metadata", "signature_metadata", "resolve_label", "model_ready", "authorize"})
KEEP_S = 0.25
KEEP_MAX = 1024
GROUP_BYTES = 64 * 2**20  # a group's inputs at most (a request this large alone goes alone)


class _Member:
    """A request waiting to go as part of a group (see ``Channel.infer``)."""

    __slots__ = ("future", "nbytes", "request", "rows", "sent")

    def __init__(self, request: InferRequest, rows: int, nbytes: int, future: asyncio.Future[InferResponse]) -> None:
        self.request, self.rows, self.nbytes, self.future = request, rows, nbytes, future
        self.sent: _Group | None = None


class _Group:
    """Members sent as one call: its future gets the joined answer, which is split among them."""

    __slots__ = ("call_id", "future", "members")

    def __init__(self, call_id: int, future: asyncio.Future[Any], members: list[_Member]) -> None:
        self.call_id, self.future, self.members = call_id, future, members

    def all_gone(self) -> bool:
        """Every member's client went away: the model process may drop the call."""
        return all(m.request.cancelled is not None and m.request.cancelled() for m in self.members)


class Channel:
    """Both lines to the model process. ``lost`` is set when it goes away (the worker then stops).

    Requests for a model that a dynamic batcher schedules are sent together: those that reach
    ``infer`` in one pass of the loop with the same model, shapes past the batch dimension,
    dtypes, outputs, parameters and credentials go as one request, their inputs joined along the
    batch dimension, up to the model's max_batch_size rows, and the answer is split back. The
    batcher would have joined them so anyway; the model process then pays its per-request work
    (unpacking, checking, queueing, counting) once per group instead of once per request, which
    is what bounds how many workers it can keep up with (benchmarks/model_process.py).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], Callable[[], bool] | None]] = {}
        self._protocol = FrameProtocol(self._on_message, self._on_lost, self._refuse, self._gather)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._kept: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._streams: dict[int, asyncio.Queue[tuple[str, Any]]] = {}
        self._forming: dict[tuple[Any, ...], tuple[int, list[_Member]]] = {}  # key -> (most rows, members)
        # per (model, version): until when its group_rows answer holds, and that answer; asked
        # over the asynchronous line, and a model's requests go alone until it is known
        self._group_rows: dict[tuple[str, str | None], tuple[float, int]] = {}
        self._asking: set[tuple[str, str | None]] = set()
        self._changes = 0  # "changed" notices so far: an answer asked for before one is not kept
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

    async def beat(self, number: int) -> None:
        """Tell the model process, once every BEAT_S, that this worker's loop runs (owner.py
        replaces a worker that stops beating)."""
        while not self.lost.is_set():
            self._protocol.send(("beat", number))
            await asyncio.sleep(BEAT_S)

    async def call(self, target: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return await self._request(lambda call_id: ("call", call_id, target, name, args, kwargs), None)

    async def infer(self, request: InferRequest) -> InferResponse:
        grouping = self._group_key(request)
        if grouping is None:
            packed = pack_request(request)
            return unpack_response(await self._request(lambda call_id: ("infer", call_id, packed), request.cancelled))
        if self.lost.is_set():
            raise Unavailable("the model process is gone; this worker is stopping")
        key, rows, limit = grouping
        nbytes = sum(_size(tensor.data) for tensor in request.inputs)
        member = _Member(request, rows, nbytes, asyncio.get_running_loop().create_future())
        forming = self._forming.get(key)
        if forming is None:
            self._forming[key] = (limit, [member])
        else:
            forming[1].append(member)
        self._protocol.wake()
        try:
            return await member.future
        except asyncio.CancelledError:
            group = member.sent
            if group is not None and not group.future.done() and all(m.future.done() for m in group.members):
                group.future.cancel()  # nobody waits for the answer any more
            raise

    def _group_key(self, request: InferRequest) -> tuple[tuple[Any, ...], int, int] | None:
        """What a request must share with others to go with them, its rows, and the most rows a
        group may have; None when it goes alone."""
        if request.timeout_us is not None:  # a deadline of its own
            return None
        limit = self._group_limit(request.model_name, request.model_version)
        if limit < 2:  # the model takes each request alone (or is not known yet): nothing to compute
            return None
        shapes = []
        rows = -1
        for tensor in request.inputs:
            data = tensor.data
            if data.ndim == 0 or rows not in (-1, data.shape[0]) or tensor.shared is not None:
                return None
            rows = data.shape[0]
            shapes.append((tensor.name, tensor.datatype, data.dtype.str, data.shape[1:]))
        if rows < 1 or rows >= limit:  # a request that fills a batch alone
            return None
        if request.outputs is not None and any(o.shared is not None for o in request.outputs):
            return None  # written to the client's region: one request's answer, not a group's part
        outputs = None if request.outputs is None else tuple(
            (o.name, o.binary, o.classification) for o in request.outputs)
        # typed: True == 1 == 1.0 in Python, and a group goes with its first member's parameters
        parameters = tuple(sorted((name, type(value).__name__, value) for name, value in request.parameters.items()))
        key = (request.model_name, request.model_version, tuple(shapes), outputs, parameters, request.protocol,
               request.credentials)
        try:
            hash(key)
        except TypeError:  # a parameter holding a list or a map
            return None
        return key, rows, limit

    def _group_limit(self, name: str, version: str | None) -> int:
        """The model's group_rows as last heard (KEEP_S at most, forgotten when model control runs);
        0 while it is being asked."""
        key = (name, version)
        known = self._group_rows.get(key)
        if known is not None and known[0] > time.monotonic():
            return known[1]
        if key not in self._asking and not self.lost.is_set():
            self._asking.add(key)
            asyncio.get_running_loop().create_task(self._ask_group_rows(key))
        return 0

    async def _ask_group_rows(self, key: tuple[str, str | None]) -> None:
        changes = self._changes
        try:
            rows = int(await self.call("data", "group_rows", key, {}))
        except Exception:  # the channel went away: nothing is grouped
            rows = 0
        finally:
            self._asking.discard(key)
        if changes != self._changes:  # model control ran meanwhile: the answer may be of the old model
            return
        if len(self._group_rows) >= KEEP_MAX:  # names come from clients: a bound, not a policy
            self._group_rows.clear()
        self._group_rows[key] = (time.monotonic() + KEEP_S, rows)

    def _gather(self) -> list[Any]:
        """The groups formed in this pass, as messages (the channel's flush asks at the pass's end)."""
        forming, self._forming = self._forming, {}
        messages: list[Any] = []
        for limit, members in forming.values():
            chunk: list[_Member] = []
            rows = nbytes = 0
            for member in members:
                if member.future.done():  # its caller went away before it was sent
                    continue
                if chunk and (rows + member.rows > limit or nbytes + member.nbytes > GROUP_BYTES):
                    messages.extend(self._send_group(chunk))
                    chunk, rows, nbytes = [], 0, 0
                chunk.append(member)
                rows += member.rows
                nbytes += member.nbytes
            if chunk:
                messages.extend(self._send_group(chunk))
        return messages

    def _send_group(self, members: list[_Member]) -> list[tuple[Any, ...]]:
        """The message for ``members`` (none when they cannot be joined: each is told why)."""
        try:
            message = self._group_message(members)
        except Exception as exc:  # nothing of this group was sent; the pass's other messages still go
            error = _refusal(exc)
            for member in members:
                if not member.future.done():
                    member.future.set_exception(error)
            return []
        return [message]

    def _group_message(self, members: list[_Member]) -> tuple[Any, ...]:
        body: tuple[Any, ...]
        if len(members) == 1:
            kind, body = "infer", (pack_request(members[0].request),)
        else:
            first = members[0].request
            joined = [Tensor(tensor.name, tensor.datatype, _join([m.request.inputs[n].data for m in members]))
                      for n, tensor in enumerate(first.inputs)]
            request = InferRequest(first.model_name, first.model_version, joined, None, first.outputs,
                                   first.parameters, None, first.protocol, None, first.credentials, first.priority)
            kind, body = "group", (pack_request(request), len(members))
        call_id = next(self._ids)  # registered only once the message exists
        group = _Group(call_id, asyncio.get_running_loop().create_future(), members)
        for member in members:
            member.sent = group
        self._pending[call_id] = (group.future, group.all_gone)
        group.future.add_done_callback(lambda future: self._settle(group))
        return (kind, call_id, *body)

    def _settle(self, group: _Group) -> None:
        """The group's answer (or error) to each member still waiting."""
        self._pending.pop(group.call_id, None)
        future, members = group.future, group.members
        if future.cancelled():
            self._protocol.send(("cancel", group.call_id))
            for member in members:
                member.future.cancel()
            return
        error = future.exception()
        if isinstance(error, GroupRefused) and len(members) > 1:  # the model changed: each goes alone
            for member in members:
                if not member.future.done():
                    for message in self._send_group([member]):
                        self._protocol.send(message)
            return
        if error is None:
            response = unpack_response(future.result())
            if len(members) == 1:
                if not members[0].future.done():
                    members[0].future.set_result(response)
                return
            parts = _split(response, members)
            if isinstance(parts, list):
                for member, part in zip(members, parts, strict=True):
                    if not member.future.done():
                        member.future.set_result(part)
                return
            error = parts
        for member in members:
            if not member.future.done():
                member.future.set_exception(error)

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
            self._group_rows.clear()
            self._changes += 1
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
        for future, _ in list(self._pending.values()):
            if not future.done():
                future.set_exception(gone)
        forming, self._forming = self._forming, {}
        for _, members in forming.values():
            for member in members:
                if not member.future.done():
                    member.future.set_exception(gone)
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



def _size(data: Any) -> int:
    """A tensor's bytes, strings' own included (an object array's nbytes counts only pointers)."""
    if data.dtype.kind != "O":
        return int(data.nbytes)
    return int(data.nbytes) + sum(len(item) for item in data.flat if isinstance(item, bytes | str))


def _join(arrays: list[Any]) -> Any:
    import numpy as np

    return np.concatenate(arrays)


def _split(response: InferResponse, members: list[_Member]) -> list[InferResponse] | ModelError:
    """The joined answer's rows, member by member (each its own id and timings)."""
    rows = sum(m.rows for m in members)
    for output in response.outputs:
        if output.data.ndim == 0 or output.data.shape[0] != rows:
            return ModelError(f"model '{response.model_name}' returned output '{output.name}' with shape "
                              f"{list(output.data.shape)} for a batch of {rows} rows; dim 0 must be the batch")
    parts, start = [], 0
    t = response.timings
    for member in members:
        end = start + member.rows
        parts.append(InferResponse(response.model_name, response.model_version,
                                   [Tensor(o.name, o.datatype, o.data[start:end]) for o in response.outputs],
                                   member.request.id, dict(response.parameters),
                                   Timings(t.queue, t.compute, t.total, dict(t.steps)), response.final))
        start = end
    return parts


def _refusal(exc: Exception) -> InvalidInput:
    """What a caller hears when its call cannot be handed over (``frame`` raised ``exc``)."""
    kind = PayloadTooLarge if isinstance(exc, FrameTooLarge) else InvalidInput
    return kind(f"this request cannot be handed to the model process: {describe(exc, 300)}")


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
