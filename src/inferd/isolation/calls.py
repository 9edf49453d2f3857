"""A model's requests to other models (Triton's BLS) from an instance process, over a socket of their own.

The instance's call channel is the server's to drive (one call, its answer); a model's requests to
other models arrive in the middle of a call, several at once from an ``async def execute``, so they
travel on a second socket. Messages in (from the model): ``("infer" | "stream", id, InferRequest)``,
``("ready", id, name, version)``, ``("load", id, name, config)``, ``("unload", id, name, dependents)``,
``("cancel", id)``, ``("metric", 0, MetricUpdate)`` (no answer).
Out: ``("ok" | "item", id, InferResponse)``, ``("end", id)``, ``("bool", id, value)``,
``("error", id, error class name, message)``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import socket
import threading
from collections.abc import Generator
from typing import Any

from inferd import errors
from inferd.errors import InferdError, Unavailable, describe
from inferd.isolation.channel import Channel, ProtocolError
from inferd.runtimes import model_calls
from inferd.types import InferRequest, InferResponse, MetricUpdate

log = logging.getLogger("inferd.isolation")

MAX_CALLS_AT_ONCE = 64  # one instance's requests running at once; more wait for one to finish


class ChannelModelCalls:
    """The instance process's ``ModelCalls``: each call goes to its server and waits there for its answer."""

    def __init__(self, sock: socket.socket) -> None:
        self._conn = Channel(sock)
        self._send_lock = threading.Lock()
        self._waiting: dict[int, queue.Queue[tuple[Any, ...]]] = {}
        self._ids = itertools.count(1)
        self._gone: str | None = None
        threading.Thread(target=self._read, name="inferd-model-calls", daemon=True).start()

    def infer(self, request: InferRequest) -> InferResponse:
        call_id, answers = self._start("infer", request)
        try:
            reply = answers.get()
        finally:
            self._waiting.pop(call_id, None)
        response: InferResponse = _answer(reply, "ok")
        return response

    def infer_stream(self, request: InferRequest) -> Generator[InferResponse, None, None]:
        call_id, answers = self._start("stream", request)
        ended = False
        try:
            while (reply := answers.get())[0] != "end":
                if reply[0] != "item":
                    ended = True
                    _answer(reply, "item")
                yield reply[2]
            ended = True
        finally:
            self._waiting.pop(call_id, None)
            if not ended:  # the model stopped reading: the server stops the stream
                self._send(("cancel", call_id))

    def is_model_ready(self, name: str, version: str | None) -> bool:
        call_id, answers = self._start("ready", name, version)
        try:
            return bool(_answer(answers.get(), "bool"))
        finally:
            self._waiting.pop(call_id, None)

    def load_model(self, name: str, config: str | None) -> None:
        call_id, answers = self._start("load", name, config)
        try:
            _answer(answers.get(), "ok")
        finally:
            self._waiting.pop(call_id, None)

    def unload_model(self, name: str, unload_dependents: bool) -> None:
        call_id, answers = self._start("unload", name, unload_dependents)
        try:
            _answer(answers.get(), "ok")
        finally:
            self._waiting.pop(call_id, None)

    def record_metric(self, update: MetricUpdate) -> None:
        self._send(("metric", 0, update))  # no answer: a change the server could not take is logged there

    def _start(self, kind: str, *arguments: Any) -> tuple[int, queue.Queue[tuple[Any, ...]]]:
        call_id, answers = next(self._ids), queue.Queue[tuple[Any, ...]]()
        self._waiting[call_id] = answers
        if not self._send((kind, call_id, *arguments)):
            self._waiting.pop(call_id, None)
            raise Unavailable(f"the server is gone ({self._gone})")
        return call_id, answers

    def _send(self, message: tuple[Any, ...]) -> bool:
        try:
            with self._send_lock:
                self._conn.send(message)
        except OSError as exc:
            self._gone = self._gone or str(exc)
            return False
        return True

    def _read(self) -> None:
        try:
            while True:
                reply = self._conn.receive()
                answers = self._waiting.get(reply[1])
                if answers is not None:  # else: the answer to a stream its model stopped reading
                    answers.put(reply)
        except (EOFError, OSError, ProtocolError) as exc:
            self._gone = str(exc) or type(exc).__name__
            for call_id, answers in list(self._waiting.items()):
                answers.put(("error", call_id, "Unavailable", f"the server is gone ({self._gone})"))


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
    cancelled: dict[int, threading.Event] = {}

    def reply(message: tuple[Any, ...]) -> bool:
        try:
            with send_lock:
                conn.send(message)
        except OSError:  # the instance is gone; its calls end as their answers fail to go
            return False
        return True

    def run(message: tuple[Any, ...]) -> None:
        kind, call_id = message[0], message[1]
        try:
            calls = model_calls.current()
            if kind == "infer":
                reply(("ok", call_id, calls.infer(message[2])))
            elif kind == "ready":
                reply(("bool", call_id, calls.is_model_ready(message[2], message[3])))
            elif kind == "load":
                calls.load_model(message[2], message[3])
                reply(("ok", call_id, None))
            elif kind == "unload":
                calls.unload_model(message[2], message[3])
                reply(("ok", call_id, None))
            else:
                stop = cancelled.get(call_id) or threading.Event()
                answers = calls.infer_stream(message[2])
                try:
                    for answer in answers:
                        if stop.is_set() or not reply(("item", call_id, answer)):
                            return
                finally:
                    answers.close()
                reply(("end", call_id))
        except InferdError as exc:
            reply(("error", call_id, type(exc).__name__, exc.message))
        except Exception as exc:
            reply(("error", call_id, "", describe(exc)))
        finally:
            cancelled.pop(call_id, None)
            slots.release()

    try:
        while True:
            message = conn.receive()
            if not isinstance(message, tuple) or len(message) < 2 or message[0] not in (
                    "infer", "stream", "ready", "load", "unload", "cancel", "metric"):
                log.error("model '%s': an instance process sent %.80r on its model-calls socket; ignored",
                          model, message)
                continue
            if message[0] == "metric":
                if len(message) == 3 and isinstance(message[2], MetricUpdate):
                    with contextlib.suppress(InferdError):  # no server here: nothing shows metrics
                        model_calls.current().record_metric(message[2])
                continue
            if message[0] == "cancel":
                stop = cancelled.get(message[1])
                if stop is not None:  # else: the stream had ended
                    stop.set()
                continue
            if message[0] == "stream":
                cancelled[message[1]] = threading.Event()
            slots.acquire()
            threading.Thread(target=run, args=(message,), name=f"inferd-{model}-call", daemon=True).start()
    except (EOFError, OSError, ProtocolError):
        for event in list(cancelled.values()):
            event.set()
    finally:
        conn.close()
