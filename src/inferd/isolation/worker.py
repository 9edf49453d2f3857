"""An instance process: ``python -m inferd.isolation.worker FD CALLS_FD CANCELS_FD READY_FD ATTACH_FD`` loads one
model and runs its calls.

The server sends, over the socket FD, the model to load, then one message per call. Whatever the
model does to this process (segfault, ``os._exit``, hang, runaway memory), the server only loses
this instance: it answers the call with an error and starts a new one.

Messages in (``channel.py``): ``("load", backend, LoadContext, memory_limit_mb)``, then
``("infer", call id, header, input_path | None)`` (``"parts"``: answered in parts first, ``"stream"``:
a decoupled model's answers; ``("requests", ..., count)``: a batch's requests apart,
``"streams"``: a decoupled model's batch apart) and ``("stop",)``. The model's own requests to
other models (BLS) go over CALLS_FD (``calls.py``), a forked child's over a socket it hands the
server on ATTACH_FD; a model with its own readiness check (Triton's
``is_ready``) answers ``("ready?",)`` on READY_FD with ``("ready", bool, error)``, on a thread of its own
(a check may come while a call runs).
Out: ``("ready", metadata)`` or ``("failed", reason)``; per call ``("ok", call id, header,
output_path | None)`` (``"answers"``, one more item: the requests that failed alone) or
``("error", call id, type name, message, fatal)``; a stream's ``("part", call id, header, path)``
each, then ``("end", call id)``; a batch of streams' ``("request_part", ..., index)`` and
``("request_end", call id, index, type name | None, message)`` per request, then ``"end"``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from inferd.errors import InferdError, describe
from inferd.isolation import calls
from inferd.isolation.cancels import CancelBoard
from inferd.isolation.channel import Channel, MessageTooLarge
from inferd.isolation.shm import Reader, SharedMemoryFull, Writer, pack_calls, unpack_calls
from inferd.observability.logging import configure_instance_process
from inferd.runtimes.base import Arrays, Emit, LoadContext, Runtime, call_cancelled_by, requests_cancelled_by

_PARENT_CHECK_S = 1.0


def main(fd: int, calls_fd: int, cancels_fd: int, ready_fd: int, attach_fd: int) -> None:
    faulthandler.enable()  # a segfault prints the model's Python stack to the server's log
    configure_instance_process()
    # Ctrl-C or a SIGTERM to the whole process group is the server's to handle: it drains the
    # requests this instance runs, then stops it. Not ignored (SIG_IGN), which the model's own
    # processes would inherit (a Pool's terminate, a helper's Popen.terminate would not end them):
    # a handler that does nothing, which an exec drops, and a forked child drops here.
    signal.signal(signal.SIGINT, _server_handles)
    signal.signal(signal.SIGTERM, _server_handles)
    os.register_at_fork(after_in_child=_default_signals)
    _exit_with_parent(os.getppid())
    conn = Channel(socket.socket(fileno=fd))
    calls.install(socket.socket(fileno=calls_fd), socket.socket(fileno=attach_fd))
    try:
        _, backend, context, memory_limit_mb = conn.receive()
        runtime = _load(conn, backend, context)
        if runtime is None:
            return
        if memory_limit_mb:
            _cap_address_space(memory_limit_mb)
        if runtime.checks_ready:
            threading.Thread(target=_answer_readiness, args=(Channel(socket.socket(fileno=ready_fd)), runtime),
                             name="inferd-readiness", daemon=True).start()
        if runtime.calls_at_once > 1:
            _serve_at_once(conn, runtime, CancelBoard(cancels_fd))
        else:
            _serve(conn, runtime, CancelBoard(cancels_fd))
    except (EOFError, OSError):  # the server closed our socket: it is gone or stopping us
        _leave_with_group()


def _load(conn: Channel, backend: str, context: LoadContext) -> Runtime | None:
    from inferd.runtimes.loader import load_runtime
    from inferd.runtimes.warmup import run_samples

    try:
        runtime = load_runtime(backend, context)
        runtime.warmup()
        run_samples(runtime, context)
    except Exception as exc:
        if not isinstance(exc, InferdError):  # the model's own code failed: where, as TorchServe logs it
            print(f"model {context.name} failed to load:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        conn.send(("failed", exc.message if isinstance(exc, InferdError) else describe(exc)))
        return None
    conn.send(("ready", {"platform": runtime.platform, "inputs": runtime.inputs, "outputs": runtime.outputs,
                         "max_batch_size": runtime.max_batch_size, "describe": runtime.describe(),
                         "takes_sequence": runtime.takes_sequence, "takes_request": runtime.takes_request,
                         "decoupled": runtime.decoupled, "requests_apart": runtime.requests_apart,
                         "parts": runtime.parts, "checks_ready": runtime.checks_ready,
                         "calls_at_once": runtime.calls_at_once}))
    return runtime


def _serve(conn: Channel, runtime: Runtime, cancels: CancelBoard) -> None:
    inputs, outputs = Reader(), Writer("out")
    try:
        while True:
            message = conn.receive()
            if message[0] == "stop":
                runtime.unload()
                return
            kind, call_id, header, path, *more = message
            try:
                if path is not None:
                    inputs.attach(path)
                # a batch of streams' requests may outlive the call (a thread of the model still
                # sending to a request whose client left): they get inputs of their own
                arrays = inputs.read(header, copy=kind == "streams")
            except (OSError, ValueError) as exc:  # e.g. EMFILE: this process cannot take calls
                conn.send(("error", call_id, "OSError", f"could not map its inputs: {exc}", True))
                continue
            with call_cancelled_by(functools.partial(cancels.cancelled, call_id)):  # the server's slot
                conn.send(_reply(conn, runtime, kind, arrays, outputs, cancels, call_id, *more))
    finally:
        outputs.close()


class _Running:
    """A stream of ``_serve_at_once`` in flight: the server's replies to its parts, and its cancel."""

    def __init__(self) -> None:
        self.replies: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self.cancelled = threading.Event()

    def told(self, reading: bool) -> None:
        if not reading:
            self.cancelled.set()
        self.replies.put(reading)


def _serve_at_once(conn: Channel, runtime: Runtime, cancels: CancelBoard) -> None:
    """A model that runs several streams at once (``Runtime.calls_at_once``: a decoupled ``async
    def execute``): this thread reads the channel and nothing else; each ``("astream", id, None,
    None, inputs)`` runs on a thread of its own, its tensors in the messages (one buffer could
    not serve several calls), its parts ``("apart", id, outputs)`` each answered "next" or "cancel"
    (also sent unasked once its client left); messages go out one at a time."""
    lock = threading.Lock()
    running: dict[int, _Running] = {}

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message, refuse_oversized=True)

    while True:
        message = conn.receive()
        if message[0] == "stop":
            runtime.unload()
            return
        if message[0] in ("next", "cancel"):
            call = running.get(message[1])
            if call is not None:
                call.told(message[0] == "next")
            continue
        kind, call_id, *_, inputs = message
        if kind != "astream":
            send(("error", call_id, "ModelError", f"a {kind!r} call, where this model runs streams only", False))
            continue
        call = running[call_id] = _Running()
        threading.Thread(target=_stream_at_once, args=(runtime, inputs, call_id, call, send, running, cancels),
                         name=f"inferd-stream-{call_id}", daemon=True).start()


def _stream_at_once(runtime: Runtime, inputs: Arrays, call_id: int, call: _Running,
                    send: Callable[[tuple[Any, ...]], None], running: dict[int, _Running], cancels: CancelBoard
                    ) -> None:
    """One stream of ``_serve_at_once``, then its "end" (or error)."""
    stop = threading.Event()
    reply: tuple[Any, ...] = ("end", call_id)
    with call_cancelled_by(lambda: call.cancelled.is_set() or cancels.cancelled(call_id)):
        parts = runtime.infer_stream(inputs, stop)
        try:
            for item in parts:
                try:
                    send(("apart", call_id, item))
                except MessageTooLarge as exc:
                    reply = ("error", call_id, "ModelError", f"its outputs do not fit: {exc}", False)
                    break
                if not call.replies.get() or call.cancelled.is_set():
                    stop.set()
                    break
        except MemoryError as exc:
            reply = ("error", call_id, "MemoryError", f"ran out of memory: {exc}", True)
        except Exception as exc:
            reply = _failure(call_id, exc)
        finally:
            parts.close()
            running.pop(call_id, None)
    with contextlib.suppress(OSError):  # the server is gone: the main thread leaves
        send(reply)


def _answer_readiness(conn: Channel, runtime: Runtime) -> None:
    """Each readiness check the server asks: the model's answer, or why the check failed."""
    while True:
        try:
            conn.receive()
        except (EOFError, OSError):
            return
        try:
            answer: tuple[Any, ...] = ("ready", runtime.model_ready(), "")
        except Exception as exc:
            answer = ("ready", False, describe(exc))
        try:
            conn.send(answer)
        except OSError:
            return


def _reply(conn: Channel, runtime: Runtime, kind: str, arrays: Any, outputs: Writer, cancels: CancelBoard,
           call_id: int, *more: Any) -> tuple[Any, ...]:
    """A call of ``kind`` run, and the reply that ends it."""
    if kind == "stream":
        return _stream(conn, runtime, arrays, outputs, call_id)
    if kind == "streams":
        return _streams(conn, runtime, arrays, outputs, call_id, more[0])
    if kind == "requests":
        each = [functools.partial(cancels.request_cancelled, call_id, index) for index in range(more[0])]
        with requests_cancelled_by(each):  # each request's own client (the server's flags)
            return _call_requests(runtime, arrays, outputs, call_id, more[0])
    if kind == "parts":
        return _call(runtime, arrays, outputs, call_id, _part_sender(conn, outputs, call_id))
    return _call(runtime, arrays, outputs, call_id)


def _call(runtime: Runtime, arrays: Any, outputs: Writer, call_id: int, emit: Emit | None = None
          ) -> tuple[Any, ...]:
    """One call and its answer; with ``emit``, the parts the model sends before it (infer_parts)."""
    try:
        result = runtime.infer(arrays) if emit is None else runtime.infer_parts(arrays, emit)
    except MemoryError as exc:  # this process is spent: say so and let the server start another
        return ("error", call_id, "MemoryError", f"ran out of memory: {exc}", True)
    except Exception as exc:
        return _failure(call_id, exc)
    finally:
        del arrays
    return _written(outputs, call_id, result, "ok")


def _call_requests(runtime: Runtime, arrays: Any, outputs: Writer, call_id: int, count: int) -> tuple[Any, ...]:
    """One execution of a batch's ``count`` requests handed over apart (Runtime.infer_requests):
    ``("answers", call id, header, path, failures)``, the answered requests' outputs packed
    (``pack_calls``) and ``failures`` the (index, error class, message) of each request that failed alone."""
    try:
        answers = runtime.infer_requests(unpack_calls(arrays, count))
    except MemoryError as exc:
        return ("error", call_id, "MemoryError", f"ran out of memory: {exc}", True)
    except Exception as exc:
        return _failure(call_id, exc)
    finally:
        del arrays
    if len(answers) != count:
        return ("error", call_id, "ModelError", f"it gave {len(answers)} answers to {count} requests", False)
    failures = [(index, *_error_of(answer)) for index, answer in enumerate(answers) if isinstance(answer, Exception)]
    answered = [{} if isinstance(answer, Exception) else answer for answer in answers]
    return _written(outputs, call_id, pack_calls(answered), "answers", failures)


def _written(outputs: Writer, call_id: int, result: Arrays, reply: str, *more: Any) -> tuple[Any, ...]:
    """A call's outputs written to the buffer, and the reply that announces them."""
    try:
        header, path = outputs.write(result)
    except SharedMemoryFull as exc:
        return ("error", call_id, "ModelError", f"its outputs do not fit: {exc}", False)
    except Exception as exc:  # e.g. an output numpy cannot lay out: this call fails, not the process
        return ("error", call_id, "", f"its outputs could not be sent: {describe(exc)}", False)
    return (reply, call_id, header, path, *more)


def _failure(call_id: int, exc: Exception) -> tuple[Any, ...]:
    """A call's error reply (see ``_error_of``)."""
    return ("error", call_id, *_error_of(exc), False)


def _error_of(exc: BaseException) -> tuple[str, str]:
    """An error as it crosses: only inferd's own errors name their class (the server raises the
    same one); any other exception is the model's failure, whatever its class is called (a model's
    own ``NotFound`` is no 404), described even when its ``str`` raises."""
    if isinstance(exc, InferdError):
        return type(exc).__name__, exc.message
    return "", describe(exc)


def _part_sender(conn: Channel, outputs: Writer, call_id: int) -> Emit:
    """``emit`` for a call answered in parts: each part is written to the outputs buffer and
    announced; the server copies it out and says "next" (or "cancel": its client left) before the
    buffer is written again."""
    def send(part: Arrays) -> bool:
        header, path = outputs.write(part)
        conn.send(("part", call_id, header, path))
        return bool(conn.receive() == ("next", call_id))
    return send


def _stream(conn: Channel, runtime: Runtime, arrays: Any, outputs: Writer, call_id: int) -> tuple[Any, ...]:
    """A decoupled model's answers, each a part as ``_part_sender`` hands them, then "end"."""
    stop, send = threading.Event(), _part_sender(conn, outputs, call_id)
    parts = runtime.infer_stream(arrays, stop)
    try:
        for item in parts:
            try:
                reading = send(item)
            except SharedMemoryFull as exc:
                return ("error", call_id, "ModelError", f"its outputs do not fit: {exc}", False)
            if not reading:
                stop.set()
                break
    except MemoryError as exc:
        return ("error", call_id, "MemoryError", f"ran out of memory: {exc}", True)
    except Exception as exc:
        return _failure(call_id, exc)
    finally:
        parts.close()
        del arrays
    return ("end", call_id)


def _streams(conn: Channel, runtime: Runtime, arrays: Any, outputs: Writer, call_id: int, count: int
             ) -> tuple[Any, ...]:
    """A decoupled model's batch apart (Runtime.infer_streams): each request's answers cross as
    ``_part_sender``'s do, named by the request's index, one at a time whichever thread the model
    sends from; each request's end crosses on its own, then "end"."""
    lock = threading.Lock()  # one answer on the channel (and in the outputs buffer) at a time
    sinks = [_ChannelSink(conn, outputs, call_id, index, lock) for index in range(count)]
    try:
        runtime.infer_streams(unpack_calls(arrays, count), [*sinks])
    except MemoryError as exc:
        return ("error", call_id, "MemoryError", f"ran out of memory: {exc}", True)
    except Exception as exc:
        return _failure(call_id, exc)
    finally:
        with lock:  # a model thread that sends late finds its request closed, never the channel
            for sink in sinks:
                sink.closed = True
        del arrays
    return ("end", call_id)


class _ChannelSink:
    """One request of a decoupled batch in this process: its answers and its end go to the server."""

    def __init__(self, conn: Channel, outputs: Writer, call_id: int, index: int, lock: threading.Lock) -> None:
        self._conn, self._outputs, self._call_id, self._index, self._lock = conn, outputs, call_id, index, lock
        self.closed = False  # no more on the channel: its reader left, it ended, or the execution did

    def stopped(self) -> bool:
        return self.closed

    def send(self, outputs: Arrays) -> bool:
        with self._lock:
            if self.closed:
                return False
            try:
                header, path = self._outputs.write(outputs)
            except SharedMemoryFull as exc:
                self._end(("ModelError", f"its outputs do not fit: {exc}"))
                return False
            self._conn.send(("request_part", self._call_id, header, path, self._index))
            self.closed = self._conn.receive() != ("next", self._call_id)
            return not self.closed

    def end(self, error: BaseException | None = None) -> None:
        with self._lock:
            if not self.closed:
                self._end(None if error is None else _error_of(error))

    def _end(self, error: tuple[str, str] | None) -> None:
        self.closed = True
        kind, message = error if error is not None else (None, "")
        self._conn.send(("request_end", self._call_id, self._index, kind, message))


def _exit_with_parent(parent: int) -> None:
    """Leave when the server does, even if the model never returns to read the socket."""

    def watch() -> None:
        while True:
            time.sleep(_PARENT_CHECK_S)
            if os.getppid() != parent:
                _leave_with_group()

    threading.Thread(target=watch, name="inferd-parent-watch", daemon=True).start()


def _leave_with_group() -> None:
    """The server is gone: leave, and take what the model started (our process group) along."""
    if os.getpgrp() == os.getpid():  # the server started us as a group leader
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(0)


def _server_handles(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM in the instance process: nothing; the server stops it."""


def _default_signals() -> None:
    """A child the model forks takes SIGTERM and SIGINT as any Python process does."""
    with contextlib.suppress(ValueError):  # not Python's main thread: no handler can be set
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _cap_address_space(memory_limit_mb: int) -> None:
    """A backstop for allocations faster than the server's watch: address space beyond what the
    loaded model uses plus twice the limit fails with MemoryError (then the instance restarts)."""
    try:
        import resource

        with open("/proc/self/statm") as statm:
            virtual = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        cap = virtual + 2 * memory_limit_mb * 2**20 + 2**30
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (OSError, ValueError, ImportError):  # not Linux: the server's RSS watch still applies
        pass


if __name__ == "__main__":
    fds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    del sys.argv[1:]  # the model's own: argv parsers it calls (unittest.main) must not meet our sockets
    main(*fds)
