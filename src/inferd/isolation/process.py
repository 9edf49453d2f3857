"""Process instances: a model whose executions each run in their own subprocess.

A :class:`ProcessRuntime` is a Runtime like any other (pools and batchers wrap it), but each of its
instances is a ``python -m inferd.isolation.worker`` process that loaded the model itself. A call
checks out an idle instance, writes the tensors to shared memory and waits for the answer while
watching the process: if it dies (segfault, ``os._exit``), answers later than
``response_timeout_s``, or grows past ``memory_limit_mb`` of resident memory, that call fails with
a ModelError saying which, and a fresh instance starts in the background. Nothing else notices. A
version's instances start in parallel at load, which returns once every one has loaded.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import inferd
from inferd import errors
from inferd.allocator import without_kept_memory
from inferd.errors import InferdError, InstanceLost, ModelError, Unavailable
from inferd.isolation import calls
from inferd.isolation.cancels import CancelBoard
from inferd.isolation.channel import Channel, MessageTooLarge, ProtocolError
from inferd.isolation.shm import (
    Reader,
    SharedMemoryFull,
    Writer,
    pack_calls,
    pid_alive,
    remove_shared_memory,
    unpack_calls,
)
from inferd.runtimes.base import (
    Answer,
    AnswerSink,
    Arrays,
    Emit,
    LoadContext,
    Runtime,
    call_cancelled,
    requests_cancelled,
)
from inferd.types import WorkerStatus

log = logging.getLogger("inferd.isolation")
T = TypeVar("T")

LOAD_TIMEOUT_S = 600.0  # the longest an instance process may take to import and load its model
READY_TIMEOUT_S = 5.0  # a model's own readiness check (is_ready) answers within this, or says not ready (Triton's)
_WATCH_MS = 20  # how often a waiting call looks at the process (exit, memory, time)
_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
SCRATCH_PREFIX = "inferd-scratch-"  # + the server's pid: an instance's temporary folder


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """What an instance process loads, and the limits it runs under."""

    backend: str
    context: LoadContext
    response_timeout_s: float
    memory_limit_mb: int  # 0 = no limit
    devices: tuple[str, ...] = ()  # the devices instances load on in turn (KIND_GPU's gpus); () = the context's

    def context_of(self, index: int) -> LoadContext:
        """What instance ``index`` loads: the context, as that instance, on its device."""
        device = self.devices[index % len(self.devices)] if self.devices else self.context.device
        return replace(self.context, instance=index, device=device)


_RUNNING: weakref.WeakSet[InstanceProcess] = weakref.WeakSet()  # killed with their groups at exit


@atexit.register
def _kill_running() -> None:
    """Every exit path of the server (a drain that ran out of time exits without unloading) takes
    its instance processes, what they started, and their files with it."""
    for instance in list(_RUNNING):
        instance.kill()
    shutil.rmtree(shared_scratch(), ignore_errors=True)


class InstanceDied(Exception):
    """The process is gone or was killed; ``reason`` says how, for the caller's error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InstanceProcess:
    """One worker process and its two shared-memory buffers. Used by one call at a time (or, when
    its model runs several at once, by up to ``calls_at_once`` streams: ``stream_shared``)."""

    def __init__(self, spec: InstanceSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.metadata: dict[str, Any] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Channel | None = None
        self._calls = 0  # the id of the last call: an answer must carry it
        self._inputs = Writer(f"{spec.context.name}-{index}-in")
        self._outputs = Reader()
        self._scratch: str | None = None
        self._killed = False
        self._cancels: CancelBoard | None = None  # where a running call's cancel reaches the process
        self._readiness: _ReadinessChecks | None = None  # the model's own is_ready, when it has one
        self._shared: _SharedChannel | None = None  # several streams at once (calls_at_once > 1): their answers by id
        self.started = 0.0  # time.time() once its model loaded

    @property
    def killed(self) -> bool:
        return self._killed

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Spawn the process and wait until its model is loaded; raises with the reason if not."""
        ours, theirs = socket.socketpair()
        calls_ours, calls_theirs = socket.socketpair()  # the model's requests to other models (calls.py)
        ready_ours, ready_theirs = socket.socketpair()  # readiness checks, answered while a call runs
        # where the model's forked children hand the server sockets for their own calls (calls.install)
        attach_ours, attach_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ) if not self.spec.memory_limit_mb else without_kept_memory(dict(os.environ))
        # the model's temporary files (an unpacked .mar, ...) go here, removed however the process ends
        self._scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-{self.index}-")
        env["TMPDIR"] = self._scratch
        env["INFERD_UNPACK_DIR"] = shared_scratch()  # a .mar unpacks once per version, not per instance
        package_root = str(Path(inferd.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        self._cancels = CancelBoard()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "inferd.isolation.worker", str(theirs.fileno()), str(calls_theirs.fileno()),
                 str(self._cancels.fd), str(ready_theirs.fileno()), str(attach_theirs.fileno())],
                pass_fds=(theirs.fileno(), calls_theirs.fileno(), self._cancels.fd, ready_theirs.fileno(),
                          attach_theirs.fileno()), env=env,
                stdin=subprocess.DEVNULL, start_new_session=True)  # its own group: what it starts is killed with it
        except BaseException:
            calls_ours.close()
            ready_ours.close()
            attach_ours.close()
            raise
        finally:
            theirs.close()
            calls_theirs.close()
            ready_theirs.close()
            attach_theirs.close()
        calls.serve(calls_ours, self.spec.context.name)  # ends when the process closes its side
        calls.serve_attached(attach_ours, self.spec.context.name)  # ends when it and its children are gone
        _RUNNING.add(self)
        self._conn = Channel(ours)
        self._poller = select.poll()
        self._poller.register(self._conn.fileno(), select.POLLIN)
        context = self.spec.context_of(self.index)
        self._conn.send(("load", self.spec.backend, context, self.spec.memory_limit_mb))
        try:
            reply = self._wait(LOAD_TIMEOUT_S, "loading the model")
        except InstanceDied as exc:
            self.kill()
            raise ModelError(f"model '{self.spec.context.name}': instance process {exc.reason}") from None
        if reply[0] == "failed":
            self.stop()
            raise ModelError(reply[1])
        self.metadata = reply[1]
        self.started = time.time()
        if self.metadata.get("calls_at_once", 1) > 1:
            self._shared = _SharedChannel(self)
        if self.metadata.get("checks_ready"):
            self._readiness = _ReadinessChecks(ready_ours, self.spec.context.name)
        else:
            ready_ours.close()

    def model_ready(self) -> bool:
        """The model's own readiness check (``is_ready``); True when it has none."""
        return self._readiness is None or self._readiness.ask(READY_TIMEOUT_S)

    def call(self, arrays: Arrays, emit: Emit | None = None) -> Arrays:
        """Run one execution; raises InstanceDied if the process did not survive it. ``emit`` takes
        the parts the model sends before its answer (infer_parts), each copied out before the
        process may write the next; once it returns False the process sends no more."""
        call_id = self._send("infer" if emit is None else "parts", arrays)
        reading, cancelled = True, call_cancelled()
        while True:
            reply = self._wait(self.spec.response_timeout_s, "running this request", call_id, cancelled)
            if reply[0] == "ok":
                return self._read(reply[2], reply[3])
            if reply[0] != "part" or emit is None:
                self._raise(reply)
            part = self._read(reply[2], reply[3])
            reading = reading and emit(part)
            assert self._conn is not None
            self._conn.send(("next" if reading else "cancel", call_id))

    def call_requests(self, requests: list[Arrays]) -> list[Answer]:
        """Run one execution of a batch's requests handed over apart (Runtime.infer_requests): per
        request, its outputs or the error that failed it alone. Raises InstanceDied as ``call`` does."""
        call_id = self._send("requests", pack_calls(requests), len(requests))
        reply = self._wait(self.spec.response_timeout_s, "running these requests", call_id,
                           self._requests_cancels(call_id))
        if reply[0] != "answers":
            self._raise(reply)
        answers: list[Answer] = [*unpack_calls(self._read(reply[2], reply[3]), len(requests))]
        for index, kind, message in reply[4]:
            answers[index] = self._error(kind, message)
        return answers

    def _requests_cancels(self, call_id: int) -> Callable[[], bool] | None:
        """For ``_wait``: tells the process of each request of the batch whose client went away
        (its flag on the board), as they go; True once all have (nothing more to tell)."""
        cancels = requests_cancelled()
        if not cancels or self._cancels is None:
            return None
        board, told = self._cancels, set()

        def tell() -> bool:
            for index, cancelled in enumerate(cancels):
                if index not in told and cancelled():
                    board.cancel_request(call_id, index)
                    told.add(index)
            return len(told) == len(cancels)
        return tell

    def stream(self, arrays: Arrays, stop: threading.Event) -> Generator[Arrays, None, None]:
        """One execution answered in parts (a decoupled model):
        each part is copied out before the process may write the next; ``stop`` (or closing this
        generator) cancels the rest. Raises InstanceDied as ``call`` does."""
        call_id, ended = self._send("stream", arrays), False
        assert self._conn is not None
        try:
            while True:
                reply = self._wait(self.spec.response_timeout_s, "streaming this request", call_id, stop.is_set)
                if reply[0] != "part":
                    ended = True
                    if reply[0] == "end":
                        return
                    self._raise(reply)
                yield self._read(reply[2], reply[3])
                self._conn.send(("cancel" if stop.is_set() else "next", call_id))
        finally:
            if not ended:  # closed early: cancel, and read up to its end so the channel stays in step
                self._finish(call_id)

    def streams(self, requests: list[Arrays], sinks: list[AnswerSink]) -> None:
        """One execution of a decoupled batch's requests (Runtime.infer_streams): each part the
        process sends names its request and goes to that request's sink, copied out before the
        process may write the next ("cancel" when that request's reader left); each request's end
        (or error) too, then the execution's "end". Raises InstanceDied as ``call`` does; a stream
        left in the middle kills the process (its channel is out of step)."""
        call_id, ended = self._send("streams", pack_calls(requests), len(requests)), False
        assert self._conn is not None
        try:
            while True:
                reply = self._wait(self.spec.response_timeout_s, "streaming these requests", call_id)
                if reply[0] == "request_part":
                    sink = sinks[reply[4]]
                    reading = sink.send(self._read(reply[2], reply[3])) and not sink.stopped()
                    self._conn.send(("next" if reading else "cancel", call_id))
                elif reply[0] == "request_end":
                    _, _, index, kind, message = reply
                    sinks[index].end(None if kind is None else self._error(kind, message))
                else:
                    ended = True
                    if reply[0] == "end":
                        return
                    self._raise(reply)
        finally:
            if not ended:
                self.kill()

    def stream_shared(self, arrays: Arrays, stop: threading.Event) -> Generator[Arrays, None, None]:
        """``stream`` on an instance that runs several at once (``_SharedChannel``): the inputs and
        each part travel in the messages; ``stop`` (or closing this generator) cancels the rest, told
        at once. Raises InstanceDied as ``call`` does, for every stream the instance ran."""
        assert self._shared is not None
        call_id, replies = self._shared.open()
        ended, told = False, False
        try:
            try:
                self._shared.send(("astream", call_id, None, None, arrays))
            except MessageTooLarge as exc:
                raise ModelError(f"model '{self.spec.context.name}': {exc}") from None
            deadline = time.monotonic() + self.spec.response_timeout_s
            while True:
                if stop.is_set() and not told:
                    self._shared.send(("cancel", call_id))
                    told = True
                try:
                    reply = replies.get(timeout=_WATCH_MS / 1000)
                except queue.Empty:
                    if time.monotonic() > deadline:
                        self.kill()
                        raise InstanceDied(f"did not answer within {self.spec.response_timeout_s:g} s while "
                                           "streaming this request (response_timeout_s); it was killed") from None
                    continue
                if isinstance(reply, InstanceDied):
                    raise InstanceDied(reply.reason)
                if reply[0] != "apart":
                    ended = True
                    if reply[0] == "end":
                        return
                    self._raise(reply)
                yield reply[2]
                self._shared.send(("cancel" if stop.is_set() else "next", call_id))
                deadline = time.monotonic() + self.spec.response_timeout_s
        finally:
            self._shared.close(call_id, tell=not ended and not told)

    def _send(self, kind: str, arrays: Arrays, *more: Any) -> int:
        """The inputs into shared memory and the request on the channel (``more`` after its
        path); the call's id."""
        assert self._conn is not None
        try:
            header, path = self._inputs.write(arrays)
        except SharedMemoryFull as exc:
            raise ModelError(f"model '{self.spec.context.name}': {exc}") from None
        self._calls += 1
        try:
            self._conn.send((kind, self._calls, header, path, *more))
        except OSError:
            raise InstanceDied(self._exit_reason("before it could take this request")) from None
        return self._calls

    def _finish(self, call_id: int) -> None:
        assert self._conn is not None
        try:
            self._conn.send(("cancel", call_id))
            while self._wait(self.spec.response_timeout_s, "stopping a stream", call_id)[0] == "part":
                self._conn.send(("cancel", call_id))
        except (InstanceDied, OSError):
            self.kill()

    def _read(self, header: Any, path: str | None) -> Arrays:
        try:
            if path is not None:
                self._outputs.attach(path)
            return self._outputs.read(header, copy=True)
        except (OSError, ValueError, TypeError) as exc:  # e.g. EMFILE: the next call would fail too
            self.kill()
            raise InstanceDied(f"answered, but its outputs could not be mapped ({exc}); it was killed") from None

    def _raise(self, reply: tuple[Any, ...]) -> NoReturn:
        """The error a call's "error" reply names; any other reply here breaks the protocol."""
        if reply[0] != "error":
            self.kill()
            raise InstanceDied(f"broke the protocol (a {reply[0]!r} message where its call could not take "
                               "one); it was killed")
        _, _, kind, message, fatal = reply
        if fatal:
            self.kill()
            raise InstanceDied(f"failed and was stopped: {message}")
        raise self._error(kind, message)

    def _error(self, kind: str, message: str) -> InferdError:
        """The error the process named: one of inferd's by its class, "" the model's own failure."""
        error = getattr(errors, kind, None) if kind else None
        if isinstance(error, type) and issubclass(error, InferdError):
            return error(message)
        return ModelError(f"model '{self.spec.context.name}' failed: {message}")

    def over_memory(self) -> int:
        """Resident MiB of the process and every process it started, if above the limit, else 0."""
        if not self.spec.memory_limit_mb or self._process is None:
            return 0
        rss = _tree_resident_mib(self._process.pid)
        return rss if rss > self.spec.memory_limit_mb else 0

    def _wait(self, timeout: float, doing: str, call_id: int | None = None,
              cancelled: Callable[[], bool] | None = None, any_call: bool = False) -> Any:
        """The next message, read as it arrives while the process is watched; any message that is
        not the expected answer (``call_id``) kills the instance. Once ``cancelled()`` (the call's
        client went away) the process is told, and the model may stop early; its answer is still read."""
        conn, process = self._conn, self._process
        if conn is None or process is None:
            raise InstanceDied("was stopped")
        deadline = time.monotonic() + timeout
        while True:
            if cancelled is not None and call_id is not None and self._cancels is not None and cancelled():
                self._cancels.cancel(call_id)
                cancelled = None
            try:
                if (reply := conn.buffered()) is not None or (
                        self._poller.poll(_WATCH_MS) and (reply := conn.receive_ready()) is not None):
                    if any_call:  # whichever call it answers (a shared channel's reader), never the load's
                        return _checked(reply, reply[1] if _answers_a_call(reply) else -1)
                    return _checked(reply, call_id)
            except (EOFError, OSError):
                raise InstanceDied(self._exit_reason(f"while {doing}")) from None
            except ProtocolError as exc:
                self.kill()
                raise InstanceDied(f"broke the protocol while {doing} ({exc}); it was killed") from None
            if process.poll() is not None or self._killed:
                raise InstanceDied(self._exit_reason(f"while {doing}"))
            rss = self.over_memory()
            if rss:
                self.kill()
                raise InstanceDied(f"used {rss} MiB of resident memory while {doing}, over its "
                                   f"memory_limit_mb of {self.spec.memory_limit_mb}; it was killed")
            if time.monotonic() > deadline:
                self.kill()
                raise InstanceDied(f"did not answer within {timeout:g} s while {doing} "
                                   "(response_timeout_s); it was killed")

    def _exit_reason(self, when: str) -> str:
        assert self._process is not None
        try:
            code = self._process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.kill()
            return f"stopped answering {when}; it was killed"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"crashed {when} (killed by {name})"
        return f"exited with code {code} {when}"

    def kill(self) -> None:
        """Kill the process and its whole group (what the model started too), then free its files."""
        if self._process is not None and not self._killed:
            self._killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)  # the group outlives a dead leader
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            remove_shared_memory(self._process.pid)  # an output buffer it made and we never mapped
        _RUNNING.discard(self)
        self._close()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the process to unload and leave; kill it if it does not within ``timeout``."""
        if self._process is None:
            return
        if self._conn is not None and self._process.poll() is None:
            try:
                if self._shared is not None:  # its reader thread may be sending too
                    self._shared.send(("stop",))
                else:
                    self._conn.send(("stop",))
                self._process.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired, InstanceDied):
                pass
        self.kill()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._inputs.close()
        self._outputs.close()
        if self._cancels is not None:
            self._cancels.close()
            self._cancels = None
        if self._readiness is not None:
            self._readiness.close()
        if self._shared is not None:
            self._shared.lose(InstanceDied("was killed"))
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


class _SharedChannel:
    """The channel of an instance that runs several streams at once: one thread reads it (watching
    the process as ``_wait`` does) and hands each answer to its stream's queue by call id; sends go
    one at a time. A part for a stream that was closed is answered "cancel" here (its thread in the
    process waits for an answer); a message for a call never made kills the instance."""

    def __init__(self, instance: InstanceProcess) -> None:
        self._instance = instance
        self._lock = threading.Lock()  # the table of streams, the ids and the channel's sends
        self._open: dict[int, queue.SimpleQueue[Any]] = {}
        self._lost: InstanceDied | None = None
        threading.Thread(target=self._read, name=f"inferd-channel-{instance.spec.context.name}",
                         daemon=True).start()

    def open(self) -> tuple[int, queue.SimpleQueue[Any]]:
        replies: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with self._lock:
            if self._lost is not None:
                raise InstanceDied(self._lost.reason)
            self._instance._calls += 1
            call_id = self._instance._calls
            self._open[call_id] = replies
        return call_id, replies

    def send(self, message: tuple[Any, ...]) -> None:
        conn = self._instance._conn
        try:
            with self._lock:
                if conn is None or self._lost is not None:
                    raise InstanceDied(self._lost.reason if self._lost is not None else "was stopped")
                conn.send(message, refuse_oversized=True)
        except OSError:
            raise InstanceDied(self._instance._exit_reason("while it ran this request")) from None

    def close(self, call_id: int, tell: bool) -> None:
        """The stream is done here; ``tell``: it had not ended in the process, which is told to stop."""
        with self._lock:
            self._open.pop(call_id, None)
        if tell:
            with contextlib.suppress(InstanceDied):
                self.send(("cancel", call_id))

    def lose(self, died: InstanceDied) -> None:
        """Every stream in flight fails with ``died`` (the process is gone)."""
        with self._lock:
            self._lost = self._lost or died
            waiting, self._open = list(self._open.values()), {}
        for replies in waiting:
            replies.put(self._lost)

    def _read(self) -> None:
        instance = self._instance
        try:
            while True:
                reply = instance._wait(float("inf"), "running its requests", any_call=True)
                with self._lock:
                    replies = self._open.get(reply[1])
                    made = reply[1] <= instance._calls
                if replies is not None:
                    replies.put(reply)
                elif not made:
                    instance.kill()
                    raise InstanceDied(f"broke the protocol (an answer to call {reply[1]!r}, never made); "
                                       "it was killed")
                elif reply[0] == "apart":  # its reader left: the process's thread stops
                    self.send(("cancel", reply[1]))
        except InstanceDied as exc:
            self.lose(exc)


class _ReadinessChecks:
    """An instance's readiness checks, as python_backend runs them (python_be.cc,
    RunUserModelReadinessCheck): one in flight at a time; a check asked meanwhile waits for it and
    takes its answer; a check not answered within its timeout is "not ready", while the one in
    flight goes on and the next check waits for it. Answers are read on a thread of their own."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self._conn = Channel(sock)
        self._name = name
        self._done = threading.Condition()
        self._asked = False  # a check is in flight
        self._answer: tuple[bool, str] = (False, "")
        threading.Thread(target=self._read, name=f"inferd-readiness-{name}", daemon=True).start()

    def ask(self, timeout: float) -> bool:
        """The model's answer; raises ModelError when its check failed (raised, or not a bool)."""
        with self._done:
            if not self._asked:
                try:
                    self._conn.send(("ready?",))
                except OSError:
                    return False  # the process is gone: its calls say why
                self._asked = True
            if not self._done.wait_for(lambda: not self._asked, timeout):
                return False
            ready, error = self._answer
        if error:
            raise ModelError(f"model '{self._name}': is_ready() failed: {error}")
        return ready

    def _read(self) -> None:
        while True:
            try:
                _, ready, error = self._conn.receive()
            except (EOFError, OSError, ProtocolError, ValueError):
                ready, error = False, "the instance process is gone"
            with self._done:
                self._answer, self._asked = (bool(ready), str(error)), False
                self._done.notify_all()
            if error == "the instance process is gone":
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader
        self._conn.close()


_REPLY_SIZES = {"ready": 2, "failed": 2, "ok": 4, "answers": 5, "error": 5, "part": 4, "end": 2,
                "request_part": 5, "request_end": 5, "apart": 3}
_CALL_REPLIES = ("ok", "answers", "error", "part", "end", "request_part", "request_end", "apart")


def _answers_a_call(reply: Any) -> bool:
    return isinstance(reply, tuple) and len(reply) > 1 and reply[0] in _CALL_REPLIES


def _checked(reply: Any, call_id: int | None) -> Any:
    """``reply`` if it is a message of ours that answers ``call_id`` (None: the load), else raise."""
    if not isinstance(reply, tuple) or not reply or _REPLY_SIZES.get(reply[0]) != len(reply):
        raise ProtocolError(f"an unknown message {str(reply)[:80]!r}")
    answers_call = reply[0] in _CALL_REPLIES
    if answers_call != (call_id is not None) or (answers_call and reply[1] != call_id):
        raise ProtocolError(f"an answer to another request ({reply[0]!r} for call {reply[1]!r}, "
                            f"waiting for {call_id if call_id is not None else 'the load'})")
    return reply


class ProcessRuntime(Runtime):
    """``count`` instance processes of one model; ``infer`` runs a call on an idle one.

    A dead instance is replaced in the background (with backoff while replacements fail); calls
    wait for an idle instance meanwhile, unless none is running and the last start failed: then
    they fail at once with that reason.
    """

    out_of_process = True

    def __init__(self, spec: InstanceSpec, count: int) -> None:
        self.spec = spec
        self.name = f"{spec.context.name}:{spec.context.version}"
        self._idle: queue.Queue[InstanceProcess] = queue.Queue()
        self._lock = threading.Lock()
        self._target = count
        self._ready = 0  # started and alive: idle or running a call
        self._starting = 0  # being started or restarted
        self._next_index = 0
        self._closed = False
        self._start_failure = ""  # why the last start failed; "" once one succeeds
        self._live: dict[int, InstanceProcess] = {}  # started and not yet stopped, by index
        self._retiring: dict[int, InstanceProcess] = {}  # scaled away, stopping (workers: not ready)
        self._lanes: dict[int, int] = {}  # a sequence lane -> the instance (index) that keeps its state
        self._losses: dict[int, int] = {}  # a sequence lane -> how often its instance went (lane_losses)
        self._sharing: dict[int, int] = {}  # instance index -> its streams in flight (calls_at_once > 1)
        self.restarts = 0
        started = self._start_all(count)
        self._adopt(started[0].metadata)
        for instance in started:
            self._live[instance.index] = instance
            self._idle.put(instance)
        self._ready = len(started)

    def _start_all(self, count: int) -> list[InstanceProcess]:
        """Start ``count`` instances at once and wait for every one, as Triton's load does: the
        version is ready only with all of them. One that cannot load fails the load, with its
        reason, and the others are stopped."""
        instances = [self._new_instance() for _ in range(max(count, 1))]
        failures: dict[int, BaseException] = {}

        def start(instance: InstanceProcess) -> None:
            try:
                instance.start()
            except BaseException as exc:  # handed to the loading thread, raised there
                failures[instance.index] = exc

        threads = [threading.Thread(target=start, args=(instance,), name=f"inferd-start-{self.name}", daemon=True)
                   for instance in instances[1:]]
        for thread in threads:
            thread.start()
        start(instances[0])  # in this thread
        for thread in threads:
            thread.join()
        if failures:
            for instance in instances:
                if instance.index not in failures:
                    instance.stop()
            raise failures[min(failures)]
        return instances

    def _adopt(self, metadata: dict[str, Any]) -> None:
        self.platform = metadata["platform"]
        self.inputs, self.outputs = metadata["inputs"], metadata["outputs"]
        self.max_batch_size = metadata["max_batch_size"]
        self.takes_sequence = metadata["takes_sequence"]
        self.takes_request = metadata["takes_request"]
        self.decoupled = metadata["decoupled"]
        self.parts = metadata["parts"]
        self.requests_apart = metadata["requests_apart"]
        self._checks_ready = bool(metadata.get("checks_ready"))
        self.calls_at_once = int(metadata.get("calls_at_once", 1))
        self._description = metadata["describe"]

    def infer(self, inputs: Arrays) -> Arrays:
        return self._call(self._checkout(), inputs)

    def infer_parts(self, inputs: Arrays, emit: Emit) -> Arrays:
        return self._call(self._checkout(), inputs, emit)

    def infer_on(self, lane: int, inputs: Arrays) -> Arrays:
        """On the ``lane``-th running instance (by start order), waiting until it is idle: a
        sequence's state lives in one process. A restart gives the lane a fresh process."""
        return self._call(self._checkout(lane), inputs)

    def lane_losses(self, lane: int) -> int:
        return self._losses.get(lane, 0)

    def _lose_lanes(self, index: int) -> None:
        """Instance ``index`` is gone: the lanes it kept lose their state (their next use moves)."""
        with self._lock:
            for lane in [lane for lane, kept in self._lanes.items() if kept == index]:
                del self._lanes[lane]
                self._losses[lane] = self._losses.get(lane, 0) + 1

    def infer_stream(self, inputs: Arrays, stop: threading.Event) -> Generator[Arrays, None, None]:
        if self.calls_at_once > 1:
            yield from self._stream_shared(inputs, stop)
            return
        instance = self._checkout()
        try:
            yield from instance.stream(inputs, stop)
        except InstanceDied as exc:
            log.error("model %s instance %d (pid %s) %s; restarting it", self.name, instance.index,
                      instance.pid, exc.reason)
            self._replace(instance)
            raise InstanceLost(f"model '{self.name}' instance {instance.index} {exc.reason}; the request "
                             "failed and the instance is restarting (other requests are not affected)") from None
        except BaseException:  # the model's error, or the stream closed early (cancelled in the process)
            if instance.killed:
                self._replace(instance)
            else:
                self._give_back(instance)
            raise
        self._give_back(instance)

    def _stream_shared(self, inputs: Arrays, stop: threading.Event) -> Generator[Arrays, None, None]:
        """A stream on the running instance with the fewest in flight (each runs up to
        ``calls_at_once``): never checked out, so sync calls' instances are untouched."""
        instance = self._share()
        try:
            yield from instance.stream_shared(inputs, stop)
        except InstanceDied as exc:
            with self._lock:  # the first of its streams to fail says so and replaces it
                first = self._live.get(instance.index) is instance
                if first:
                    del self._live[instance.index]
            if first:
                log.error("model %s instance %d (pid %s) %s; restarting it", self.name, instance.index,
                          instance.pid, exc.reason)
                self._replace(instance)
            raise InstanceLost(f"model '{self.name}' instance {instance.index} {exc.reason}; the request "
                             "failed and the instance is restarting (other requests are not affected)") from None
        finally:
            with self._lock:
                self._sharing[instance.index] -= 1
                last = self._closed and self._sharing[instance.index] == 0
            if last:  # unloading: the instance's last stream stops it, as a checked-out one stops when back
                self._live.pop(instance.index, None)
                instance.stop()

    def _share(self) -> InstanceProcess:
        """The live instance with the fewest streams in flight, once one has room."""
        while True:
            if self._closed:
                raise Unavailable(f"model '{self.name}' is unloading")
            if self._ready == 0 and self._start_failure:
                raise Unavailable(f"model '{self.name}' has no running instance: {self._start_failure}")
            with self._lock:
                running = [instance for instance in self._live.values() if not instance.killed]
                if running:
                    instance = min(running, key=lambda one: self._sharing.get(one.index, 0))
                    if self._sharing.get(instance.index, 0) < self.calls_at_once:
                        self._sharing[instance.index] = self._sharing.get(instance.index, 0) + 1
                        return instance
            time.sleep(0.001)

    def infer_streams(self, requests: list[Arrays], sinks: list[AnswerSink]) -> None:
        instance = self._checkout()
        self._on(instance, lambda: instance.streams(requests, sinks))

    def infer_requests(self, requests: list[Arrays]) -> list[Answer]:
        instance = self._checkout()
        return self._on(instance, lambda: instance.call_requests(requests))

    def infer_requests_on(self, lane: int, requests: list[Arrays]) -> list[Answer]:
        instance = self._checkout(lane)
        return self._on(instance, lambda: instance.call_requests(requests))

    def _call(self, instance: InstanceProcess, inputs: Arrays, emit: Emit | None = None) -> Arrays:
        return self._on(instance, lambda: instance.call(inputs, emit))

    def _on(self, instance: InstanceProcess, call: Callable[[], T]) -> T:
        """``call`` on ``instance``, checked out for it: a dead process is replaced and the call
        fails; otherwise the instance goes back (or is replaced when over its memory limit)."""
        try:
            outputs = call()
        except InstanceDied as exc:
            log.error("model %s instance %d (pid %s) %s; restarting it", self.name, instance.index,
                      instance.pid, exc.reason)
            self._replace(instance)
            raise InstanceLost(f"model '{self.name}' instance {instance.index} {exc.reason}; the request "
                             "failed and the instance is restarting (other requests are not affected)") from None
        except BaseException:
            if instance.killed:  # left out of step with its channel (a stream stopped in the middle)
                self._replace(instance)
            else:
                self._give_back(instance)
            raise
        rss = instance.over_memory()
        if rss:  # this answer is good, but the instance may not take another call
            log.error("model %s instance %d uses %d MiB, over memory_limit_mb %d; restarting it",
                      self.name, instance.index, rss, self.spec.memory_limit_mb)
            self._replace(instance)
        else:
            self._give_back(instance)
        return outputs

    def _checkout(self, lane: int | None = None) -> InstanceProcess:
        while True:
            if self._closed:
                raise Unavailable(f"model '{self.name}' is unloading")
            if self._ready == 0 and self._start_failure:
                raise Unavailable(f"model '{self.name}' has no running instance: {self._start_failure}")
            if lane is not None:
                found = self._take(lane)
                if found is not None:
                    return found
                time.sleep(0.001)
                continue
            try:
                return self._idle.get(timeout=0.1)
            except queue.Empty:
                continue

    def _take(self, lane: int) -> InstanceProcess | None:
        """The lane's instance if it is idle now (the others go back as they were)."""
        with self._lock:
            live = sorted(self._live)
            if not live:
                return None
            wanted = self._lanes.get(lane, -1)
            if wanted not in self._live:  # first use, or its instance went (lane_losses counted it): it moves
                wanted = self._lanes[lane] = live[lane % len(live)]
            others, found = [], None
            while True:
                try:
                    instance = self._idle.get_nowait()
                except queue.Empty:
                    break
                if instance.index == wanted and found is None:
                    found = instance
                else:
                    others.append(instance)
            for instance in others:
                self._idle.put(instance)
            return found

    def _give_back(self, instance: InstanceProcess) -> None:
        with self._lock:
            retire = self._closed or self._ready > self._target
            if retire:
                self._ready -= 1
        if retire:
            self._retire(instance)
        else:
            self._idle.put(instance)

    def _retire(self, instance: InstanceProcess) -> None:
        self._live.pop(instance.index, None)
        self._lose_lanes(instance.index)
        self._retiring[instance.index] = instance
        threading.Thread(target=self._stop_retired, args=(instance,), daemon=True).start()

    def _stop_retired(self, instance: InstanceProcess) -> None:
        try:
            instance.stop()
        finally:
            self._retiring.pop(instance.index, None)

    def _replace(self, dead: InstanceProcess) -> None:
        self._live.pop(dead.index, None)
        self._lose_lanes(dead.index)
        dead.kill()
        with self._lock:
            self._ready -= 1
            self.restarts += 1
        self._fill()

    def _new_instance(self) -> InstanceProcess:
        with self._lock:
            index, self._next_index = self._next_index, self._next_index + 1
        return InstanceProcess(self.spec, index)

    def _fill(self) -> None:
        """Start instances up to the target, each on its own thread; each joins once loaded."""
        with self._lock:
            missing = self._target - self._ready - self._starting
            self._starting += max(missing, 0)
        for _ in range(missing):
            threading.Thread(target=self._start_one, name=f"inferd-start-{self.name}", daemon=True).start()

    def _start_one(self) -> None:
        pauses = iter(_RESTART_BACKOFF_S)
        while not self._closed and self._ready < self._target:  # scaled back meanwhile: no longer wanted
            instance = self._new_instance()
            try:
                instance.start()
            except ModelError as exc:
                self._start_failure = exc.message
                log.error("model %s: instance %d failed to start: %s", self.name, instance.index, exc.message)
                time.sleep(next(pauses, _RESTART_BACKOFF_S[-1]))
                continue
            log.info("model %s instance %d running (pid %s)", self.name, instance.index, instance.pid)
            self._live[instance.index] = instance
            with self._lock:
                self._starting -= 1
                self._ready += 1
                self._start_failure = ""
            self._give_back(instance)
            return
        with self._lock:
            self._starting -= 1

    def scale(self, count: int) -> None:
        """Start or retire instances (busy ones retire when their call ends)."""
        if count > self._target:
            self._start_failure = ""  # an earlier start's failure is not these new instances'
        self._target = count
        self._fill()
        while self._ready > self._target:
            try:
                instance = self._idle.get_nowait()
            except queue.Empty:
                break  # the rest retire as they come back
            with self._lock:
                self._ready -= 1
            self._retire(instance)

    @property
    def count(self) -> int:
        return self._target

    def start_failure(self) -> str:
        return self._start_failure if self._ready < self._target else ""

    def unload(self) -> None:
        """Stop every idle instance; one still busy (or starting) stops when it comes back."""
        self._closed = True
        while True:
            try:
                instance = self._idle.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                self._ready -= 1
                busy = self._sharing.get(instance.index, 0) > 0
            if busy:  # streams still run on it (calls_at_once): the last one stops it
                continue
            self._live.pop(instance.index, None)
            instance.stop()

    @property
    def checks_ready(self) -> bool:
        return self._checks_ready

    def model_ready(self) -> bool:
        """Every running instance's own check says ready (each bounded by READY_TIMEOUT_S)."""
        instances = list(self._live.values())
        return bool(instances) and all(instance.model_ready() for instance in instances)

    def workers(self) -> list[WorkerStatus]:
        """Every instance process: its pid, when it became ready, its resident memory; one scaled
        away is listed not ready until it has stopped."""
        running = [(index, instance, True) for index, instance in self._live.items()]
        running += [(index, instance, False) for index, instance in list(self._retiring.items())]
        return [WorkerStatus(index, instance.pid or 0, instance.started, ready,
                             _resident_mib(instance.pid) * 1024 * 1024 if instance.pid else 0)
                for index, instance, ready in sorted(running, key=lambda entry: entry[0])]

    def describe(self) -> str:
        return f"{self._description} in {self._target} process(es)"


def _tree_resident_mib(pid: int) -> int:
    """Resident MiB of ``pid`` and its descendants (a model's own subprocesses count too)."""
    return sum(_resident_mib(member) for member in _descendants(pid)) + _resident_mib(pid)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending and len(found) < 4096:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as children:
                    kids = [int(child) for child in children.read().split()]
            except (OSError, ValueError):
                continue
            found.extend(kids)
            pending.extend(kids)
    return found


def shared_scratch() -> str:
    """This server's folder for what its instances share (unpacked archives); removed at exit."""
    return os.path.join(tempfile.gettempdir(), f"{SCRATCH_PREFIX}{os.getpid()}-shared")


def remove_leftovers(temp_dir: str | None = None) -> int:
    """Instance folders that a server killed with SIGKILL left behind (its pid is gone), and shared
    memory files of processes that are gone: removed at start. Returns how many."""
    removed = 0
    root = Path(temp_dir or tempfile.gettempdir())
    for folder in root.glob(f"{SCRATCH_PREFIX}*"):
        owner = folder.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not pid_alive(int(owner)) and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed + remove_shared_memory(None)


def _resident_mib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE // 2**20
    except (OSError, ValueError, IndexError):
        return 0
