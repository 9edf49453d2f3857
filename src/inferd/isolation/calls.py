"""A model's requests to other models (Triton's BLS) from an instance process, over a socket of their own.

The instance's call channel is the server's to drive (one call, its answer); a model's requests to
other models arrive in the middle of a call, several at once from an ``async def execute``, so they
travel on a second socket. Messages in (from the model): ``("infer" | "stream", id, InferRequest)``,
``("ready", id, name, version)``, ``("load", id, name, config)``, ``("unload", id, name, dependents)``,
``("cancel", id)``, ``("more", id)`` (the model took one of a stream's answers: one more may come),
``("metric", 0, MetricUpdate)`` (no answer).
Out: ``("ok" | "item", id, InferResponse)``, ``("end", id)``, ``("bool", id, value)``,
``("error", id, error class name, message)``. Each call ends with one last reply (an "item" is
not one; a cancelled stream's "end" is), and the instance keeps at most ``MAX_CALLS_AT_ONCE``
calls open, so the server answers each on a thread of its own and never stops reading the socket.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator
from concurrent.futures import Future, InvalidStateError
from dataclasses import replace
from typing import Any

from inferd import errors
from inferd.errors import InferdError, Unavailable, describe
from inferd.isolation.channel import Channel, MessageTooLarge, ProtocolError
from inferd.runtimes import model_calls
from inferd.types import InferRequest, InferResponse, MetricUpdate

log = logging.getLogger("inferd.isolation")

MAX_CALLS_AT_ONCE = 64  # one instance's requests running at once; more wait in the instance for one to finish
STREAM_AHEAD = 16  # a stream's answers sent that its model has not taken yet; then the stream waits


class ChannelModelCalls:
    """The instance process's ``ModelCalls``: each call goes to its server and waits there for its answer.

    At most ``MAX_CALLS_AT_ONCE`` calls are open at the server (sent, their last reply not yet
    come); more wait here, in order, and go as open ones end. So the server never has to stop
    reading this socket, and a stream's cancel reaches it while calls wait."""

    def __init__(self, sock: socket.socket) -> None:
        self._conn = Channel(sock)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()  # the calls' table: _waiting, _held, _open, _gone
        self._waiting: dict[int, Callable[[tuple[Any, ...]], None]] = {}  # each call's replies go there
        self._held: OrderedDict[int, tuple[Any, ...]] = OrderedDict()  # calls not sent yet, in order
        self._open = 0
        self._ids = itertools.count(1)
        self._gone: str | None = None
        threading.Thread(target=self._read, name="inferd-model-calls", daemon=True).start()

    def infer(self, request: InferRequest) -> InferResponse:
        response: InferResponse = _answer(self._ask("infer", request), "ok")
        return response

    def start_infer(self, request: InferRequest) -> Future[InferResponse]:
        future: Future[InferResponse] = Future()

        def settle(reply: tuple[Any, ...]) -> None:
            with contextlib.suppress(InvalidStateError):  # the model stopped waiting (cancelled the future)
                try:
                    future.set_result(_answer(reply, "ok"))
                except Exception as exc:  # the call's error, raised where the model awaits it
                    future.set_exception(exc)

        self._start(settle, "infer", request)
        return future

    def infer_stream(self, request: InferRequest) -> Generator[InferResponse, None, None]:
        answers: queue.Queue[tuple[Any, ...]] = queue.Queue()
        call_id = self._start(answers.put, "stream", request)
        ended = False
        try:
            while (reply := answers.get())[0] != "end":
                if reply[0] != "item":
                    ended = True
                    _answer(reply, "item")
                self._send(("more", call_id))  # taken: the server may send one more
                yield reply[2]
            ended = True
        finally:
            if not ended:  # the model stopped reading: the server stops the stream
                self._cancel(call_id)

    def is_model_ready(self, name: str, version: str | None) -> bool:
        return bool(_answer(self._ask("ready", name, version), "bool"))

    def load_model(self, name: str, config: str | None, files: dict[str, bytes] | None = None) -> None:
        _answer(self._ask("load", name, config, files), "ok")

    def unload_model(self, name: str, unload_dependents: bool) -> None:
        _answer(self._ask("unload", name, unload_dependents), "ok")

    def record_metric(self, update: MetricUpdate) -> None:
        self._send(("metric", 0, update))  # no answer: a change the server could not take is logged there

    def _ask(self, kind: str, *arguments: Any) -> tuple[Any, ...]:
        """A call's one reply, waited for."""
        replies: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._start(replies.put, kind, *arguments)
        return replies.get()

    def _start(self, deliver: Callable[[tuple[Any, ...]], None], kind: str, *arguments: Any) -> int:
        """Send a call (or hold it while ``MAX_CALLS_AT_ONCE`` are open); its replies go to ``deliver``."""
        call_id = next(self._ids)
        message = (kind, call_id, *arguments)
        with self._lock:
            if self._gone is not None:
                raise Unavailable(f"the server is gone ({self._gone})")
            self._waiting[call_id] = deliver
            held = self._open >= MAX_CALLS_AT_ONCE
            if held:
                self._held[call_id] = message
            else:
                self._open += 1
        if not held:
            self._go(message)
        return call_id

    def _cancel(self, call_id: int) -> None:
        """A stream its model stopped reading: one still held is dropped; an open one is stopped at
        the server, and stays open (its replies dropped) until the server's last reply for it."""
        with self._lock:
            if call_id not in self._waiting:  # it had ended
                return
            if self._held.pop(call_id, None) is not None:
                del self._waiting[call_id]
                return
            self._waiting[call_id] = _drop
        self._send(("cancel", call_id))

    def _send(self, message: tuple[Any, ...]) -> bool:
        """False once the server is gone; ``MessageTooLarge`` for a call too large to go."""
        try:
            with self._send_lock:
                self._conn.send(message, refuse_oversized=True)
        except OSError as exc:
            self._gone = self._gone or str(exc)
            return False
        return True

    def _go(self, message: tuple[Any, ...]) -> None:
        """Send an open call; one that cannot go ends with the reason (the reader ends the rest)."""
        try:
            if self._send(message):
                return
            why = ("Unavailable", f"the server is gone ({self._gone})")
        except MessageTooLarge as exc:  # this call alone fails: the channel carries the others on
            why = ("PayloadTooLarge", f"a call to model '{getattr(message[2], 'model_name', '')}' is too large to "
                                      f"send to the server: {exc}")
        with self._lock:
            deliver = self._waiting.pop(message[1], None)
            self._open -= 1
        if deliver is not None:
            deliver(("error", message[1], *why))

    def _read(self) -> None:
        try:
            while True:
                reply = self._conn.receive()
                deliver, following = self._route(reply)
                if deliver is not None:
                    deliver(reply)
                if following is not None:
                    self._go(following)
        except (EOFError, OSError, ProtocolError) as exc:
            with self._lock:
                self._gone = self._gone or str(exc) or type(exc).__name__
                ended, self._waiting, self._held = self._waiting, {}, OrderedDict()
            for call_id, deliver in ended.items():
                deliver(("error", call_id, "Unavailable", f"the server is gone ({self._gone})"))

    def _route(self, reply: tuple[Any, ...]) -> tuple[Callable[[tuple[Any, ...]], None] | None, tuple[Any, ...] | None]:
        """Where a reply goes and, when it was its call's last, the held call that may go now."""
        with self._lock:
            if reply[0] == "item":
                return self._waiting.get(reply[1]), None
            deliver = self._waiting.pop(reply[1], None)
            if deliver is None:
                return None, None
            if not self._held:
                self._open -= 1
                return deliver, None
            return deliver, self._held.popitem(last=False)[1]


def install(sock: socket.socket, attach: socket.socket) -> None:
    """An instance process's calls: over ``sock``; in a child the model forks (multiprocessing's
    fork start method, as Triton's QA bls model forks a Pool), over a socket of the child's own,
    handed to the server through ``attach``. The inherited socket is the parent's: its reader thread
    did not survive the fork, and two processes writing it would mix their messages."""
    model_calls.install(ChannelModelCalls(sock))
    os.register_at_fork(after_in_child=lambda: model_calls.install(_attached(attach)))


def _attached(attach: socket.socket) -> ChannelModelCalls | None:
    """A new socket to the server for this (forked) process; None (calls refused) if it cannot be had."""
    try:
        ours, theirs = socket.socketpair()
        with theirs:
            socket.send_fds(attach, [b"attach"], [theirs.fileno()])  # one datagram: atomic between processes
    except OSError as exc:
        log.error("a forked child of the instance process cannot reach the server for its model calls: %s", exc)
        return None
    return ChannelModelCalls(ours)


def serve_attached(attach: socket.socket, model: str) -> threading.Thread:
    """The server's side of ``attach``: each socket a forked child of the instance process sends is
    served as the instance's own (``serve``); ends once the instance and all its children are gone."""

    def accept() -> None:
        with attach:
            while True:
                try:
                    message, fds, _, _ = socket.recv_fds(attach, 16, 4)
                except OSError:
                    return
                if not message and not fds:
                    return
                for fd in fds:
                    serve(socket.socket(fileno=fd), model)

    thread = threading.Thread(target=accept, name=f"inferd-{model}-attach", daemon=True)
    thread.start()
    return thread


def _too_large(message: tuple[Any, ...], why: str) -> tuple[Any, ...]:
    """An answer too large to hand back, as the error its call gets (a stream's: one error response
    of the stream, which goes on)."""
    error = errors.PayloadTooLarge(f"the answer is too large to hand back to the calling model: {why}")
    if message[0] == "item":
        return ("item", message[1], replace(message[2], outputs=[], parameters={}, error=error))
    return ("error", message[1], "PayloadTooLarge", error.message)


def _drop(reply: tuple[Any, ...]) -> None:
    """Where a cancelled stream's replies go until its last."""


def _answer(reply: tuple[Any, ...], kind: str) -> Any:
    """A reply's value; an "error" reply raised as the error the server raised."""
    if reply[0] == kind:
        return reply[2]
    _, _, name, message = reply
    error = getattr(errors, name, None)
    if isinstance(error, type) and issubclass(error, InferdError):
        raise error(message)
    raise RuntimeError(message)


def serve(sock: socket.socket, model: str) -> threading.Thread:
    """The server's side: a thread that answers one instance process's model calls through this
    process's ``ModelCalls`` until the process closes its socket (exits or dies)."""
    thread = threading.Thread(target=_serve, args=(Channel(sock), model), name=f"inferd-{model}-calls", daemon=True)
    thread.start()
    return thread


def _serve(conn: Channel, model: str) -> None:
    send_lock, slots = threading.Lock(), threading.BoundedSemaphore(MAX_CALLS_AT_ONCE)
    streams: dict[int, _Stream] = {}

    def reply(message: tuple[Any, ...]) -> bool:
        try:
            with send_lock:
                conn.send(message, refuse_oversized=True)
        except MessageTooLarge as exc:  # that answer alone fails: the channel carries the others on
            return reply(_too_large(message, str(exc)))
        except OSError:  # the instance is gone; its calls end as their answers fail to go
            return False
        return True

    def run(message: tuple[Any, ...]) -> None:
        try:
            last = _run_call(message, streams.get(message[1]) or _Stream(), reply)
        finally:
            streams.pop(message[1], None)
            slots.release()  # before the last reply: the instance sends its next call on it
        reply(last)

    try:
        while True:  # never waits for a call to end: cancels and metrics are read while calls run
            message = conn.receive()
            if not isinstance(message, tuple) or len(message) < 2 or message[0] not in (
                    "infer", "stream", "ready", "load", "unload", "cancel", "more", "metric"):
                log.error("model '%s': an instance process sent %.80r on its model-calls socket; ignored",
                          model, message)
                continue
            if message[0] == "metric":
                if len(message) == 3 and isinstance(message[2], MetricUpdate):
                    try:
                        model_calls.current().record_metric(message[2])
                    except InferdError:  # no server here: nothing shows metrics
                        pass
                    except Exception:  # one odd value must not end this loop (and the instance's BLS calls)
                        log.exception("model '%s': a metric from an instance process could not be recorded", model)
                continue
            if message[0] in ("cancel", "more"):
                stream = streams.get(message[1])
                if stream is None:  # the stream had ended
                    continue
                if message[0] == "cancel":
                    stream.stop()
                else:
                    stream.taken()
                continue
            if not slots.acquire(blocking=False):  # the instance holds calls past its share; this one did not
                log.error("model '%s': an instance process asked for more than %d calls at once; refused",
                          model, MAX_CALLS_AT_ONCE)
                reply(("error", message[1], "Unavailable", f"more than {MAX_CALLS_AT_ONCE} calls at once "
                       f"from one instance of model '{model}'"))
                continue
            if message[0] == "stream":
                streams[message[1]] = _Stream()
            threading.Thread(target=run, args=(message,), name=f"inferd-{model}-call", daemon=True).start()
    except (EOFError, OSError, ProtocolError):
        for stream in list(streams.values()):
            stream.stop()
    finally:
        conn.close()


class _Stream:
    """A stream the server runs for an instance's model: it sends at most ``STREAM_AHEAD`` answers
    the model has not taken (a slow reader slows the target, as in the server process), until the
    model cancels it."""

    def __init__(self) -> None:
        self._room = threading.Semaphore(STREAM_AHEAD)
        self._stopped = False

    def taken(self) -> None:
        self._room.release()

    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        self._stopped = True
        self._room.release()  # wakes a sender waiting for room

    def may_send(self) -> bool:
        """Wait for room for one more answer; False once the model cancelled the stream."""
        self._room.acquire()
        return not self._stopped


def _run_call(message: tuple[Any, ...], stream: _Stream,
              reply: Callable[[tuple[Any, ...]], bool]) -> tuple[Any, ...]:
    """Answer one call through this process's ``ModelCalls``; the reply that ends it (a stream's
    items are sent as the model makes room for them, until it cancels the stream)."""
    kind, call_id = message[0], message[1]
    try:
        calls = model_calls.current()
        if kind == "infer":
            return ("ok", call_id, calls.infer(message[2]))
        if kind == "ready":
            return ("bool", call_id, calls.is_model_ready(message[2], message[3]))
        if kind == "load":
            calls.load_model(message[2], message[3], message[4])
            return ("ok", call_id, None)
        if kind == "unload":
            calls.unload_model(message[2], message[3])
            return ("ok", call_id, None)
        request: InferRequest = message[2]
        request.cancelled = stream.stopped  # the cancel stops the target at once, answering or not
        answers = calls.infer_stream(request)
        try:
            for answer in answers:
                if not stream.may_send() or not reply(("item", call_id, answer)):
                    break
        finally:
            answers.close()
        return ("end", call_id)  # also after a cancel: the instance counts the call open until then
    except InferdError as exc:
        return ("error", call_id, type(exc).__name__, exc.message)
    except Exception as exc:
        return ("error", call_id, "", describe(exc))
