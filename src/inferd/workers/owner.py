"""The model-owning side of ``--workers N``: the core served to the front-end workers over a Unix
socket, and the workers' processes started, restarted when they die, and stopped.

Every worker's requests land in this process's data plane, so a model has one batch queue and one
set of instances whatever worker a request arrived on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from pathlib import Path
from typing import Any, cast

from inferd.config import ServerSettings
from inferd.core import Core
from inferd.errors import InferdError, ModelError, describe
from inferd.types import InferResponse
from inferd.workers.channel import FrameProtocol
from inferd.workers.codec import pack_response, unpack_request

log = logging.getLogger("inferd.workers")

RESTART_PAUSE_S = 1.0
STREAM_WINDOW = 16  # a stream's answers sent and not yet taken by the worker
# model control's plain methods that change what is served (its coroutines all do; its other
# plain methods only read, and must not make every worker drop what it keeps)
SYNC_CHANGES = frozenset({"set_default_version", "scale"})
FOLDER_PREFIX = "inferd-workers-"  # + the model process's pid: its socket and the settings (a token too)
START_TIMEOUT_S = 60.0  # a worker imports the transports and opens its ports well within this
# a worker that sent no beat (remote.py: one a second, from its event loop) for this long is stuck
# (its loop blocked, or stopped): it holds its share of new connections unanswered, so it is killed
# and replaced. Well above what a worker's own loop may block (a plain call waits 10 s at most).
HUNG_S = 15.0
# a worker drains for --drain-timeout itself, then closes and exits: killed only when it has not
# exited this long after (else one whose drain ran to the limit is always killed, mid-exit)
EXIT_GRACE_S = 2.0


class CoreService:
    """Answers workers' calls: ``("call", id, target, method, args, kwargs)`` gets ``("ok", id,
    result)`` or ``("err", id, exception)``; ``("cancel", id)`` cancels a call still running.
    ``parts`` are what may be called (the core's data plane, model control, metrics), by name."""

    def __init__(self, parts: dict[str, Any]) -> None:
        self._parts = parts
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self.beats: dict[int, float] = {}  # worker number -> when its last beat came (monotonic)

    async def start(self, path: Path) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Connection(self).protocol, str(path))
        os.chmod(path, 0o600)

    async def infer(self, packed: tuple[Any, ...]) -> tuple[Any, ...]:
        return pack_response(await self._parts["data"].infer(unpack_request(packed)))

    async def infer_group(self, packed: tuple[Any, ...], requests: int) -> tuple[Any, ...]:
        return pack_response(await self._parts["data"].infer_group(unpack_request(packed), requests))

    def infer_stream(self, packed: tuple[Any, ...]) -> AsyncGenerator[InferResponse, None]:
        return cast(AsyncGenerator[InferResponse, None], self._parts["data"].infer_stream(unpack_request(packed)))

    def method(self, target: str, name: str) -> Any:
        part = self._parts.get(target)
        if part is None or name.startswith("_"):
            raise InferdError(f"a worker asked for {target}.{name}, which this server does not offer")
        return getattr(part, name)

    def changed(self) -> None:
        """Model control ran: every worker drops the metadata it keeps (see remote.py)."""
        for connection in self._connections:
            if not connection.sync:
                connection.protocol.send(("changed", 0, None))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.cancel_all()


class _Connection:
    def __init__(self, service: CoreService) -> None:
        self._service = service
        self.protocol = FrameProtocol(self._on_message, self._on_lost, self._refuse)
        self._running: dict[int, asyncio.Task[Any]] = {}
        self._data: set[int] = set()  # calls of the data plane among them: a client waits on each
        self._windows: dict[int, asyncio.Semaphore] = {}
        self.sync = False
        service._connections.add(self)

    def _on_message(self, message: Any) -> None:
        if not isinstance(message, tuple) or len(message) < 2:  # not from an inferd worker
            log.error("a worker sent %.100r, which is no message of this channel", message)
            return
        kind, call_id = message[0], message[1]
        if kind == "sync":  # the worker's blocking line: it reads answers only, never news
            self.sync = True
            return
        if kind == "beat":  # the worker's loop runs (its number in place of a call id)
            self._service.beats[call_id] = time.monotonic()
            return
        if kind == "ack":  # a worker took an answer of a stream: one more may go
            window = self._windows.get(call_id)
            if window is not None:
                window.release()
            return
        if kind == "cancel":
            task = self._running.get(call_id)
            if task is not None:
                task.cancel()
            return
        if kind == "infer":  # the one call on every request: packed as tuples (codec.py)
            self._start(call_id, self._service.infer(message[2]), "data")
            return
        if kind == "group":  # requests that arrived together, joined into one (remote.py)
            self._start(call_id, self._service.infer_group(message[2], message[3]), "data")
            return
        if kind == "stream":  # a decoupled model: each answer as it comes, then the end
            self._start(call_id, self._stream(call_id, message[2]), "data")
            return
        if kind != "call" or len(message) != 6:  # not from an inferd worker of this build
            log.error("a worker sent a message of kind %r, which this process does not take", kind)
            return
        _, _, target, name, args, kwargs = message
        try:
            method = self._service.method(target, name)
            if inspect.iscoroutinefunction(method):
                self._start(call_id, method(*args, **kwargs), target)
                return
            result = method(*args, **kwargs) if callable(method) else method  # a property's value
        except Exception as exc:  # the worker raises it where its client asked
            self._reply_error(call_id, exc)
            return
        finally:
            if target == "control" and name in SYNC_CHANGES:
                self._service.changed()
        self.protocol.send(("ok", call_id, result))

    async def _stream(self, call_id: int, packed: tuple[Any, ...]) -> None:
        window = self._windows[call_id] = asyncio.Semaphore(STREAM_WINDOW)
        try:
            async with contextlib.aclosing(self._service.infer_stream(packed)) as answers:  # closed if cancelled
                async for response in answers:
                    await window.acquire()  # the worker has not taken STREAM_WINDOW answers yet: wait
                    self.protocol.send(("item", call_id, pack_response(response)))
        finally:
            del self._windows[call_id]

    def _start(self, call_id: int, call: Coroutine[Any, Any, Any], target: str) -> None:
        task = asyncio.get_running_loop().create_task(call)
        self._running[call_id] = task
        if target == "data":
            self._data.add(call_id)
        task.add_done_callback(lambda t: self._finished(call_id, t, target))

    def _finished(self, call_id: int, task: asyncio.Task[Any], target: str) -> None:
        self._running.pop(call_id, None)
        self._data.discard(call_id)
        if target == "control":  # before the answer: its worker forgets what it knew first
            self._service.changed()
        if task.cancelled():
            return  # the worker cancelled it: it expects no answer
        exc = task.exception()
        if exc is None:
            self.protocol.send(("ok", call_id, task.result()))
        else:
            self._reply_error(call_id, exc)

    def _refuse(self, message: tuple[Any, ...], exc: Exception) -> tuple[Any, ...] | None:
        """An answer that cannot go to the worker (it does not pickle, or is over the channel's
        frame size): an error for its call goes instead, and a stream that sent it stops."""
        kind, call_id = message[0], message[1]
        if kind == "item":
            task = self._running.get(call_id)
            if task is not None:
                task.cancel()  # its model's generator is closed; the worker hears this error
        if kind not in ("ok", "item", "err"):
            return None
        what = describe(message[2], 300) if kind == "err" else "its answer"
        return ("err", call_id, ModelError(f"{what} could not be sent to the front-end worker ({describe(exc, 300)})"))

    def _reply_error(self, call_id: int, exc: BaseException) -> None:
        if not isinstance(exc, InferdError):
            log.error("a worker's call failed", exc_info=exc)
        self.protocol.send(("err", call_id, portable(exc)))

    def cancel_all(self) -> None:
        for task in list(self._running.values()):
            task.cancel()

    def _on_lost(self) -> None:
        """The worker is gone: nobody waits for its inferences, which stop. Model control it asked
        for (a load, an unload, a registration) runs to its end, as in one process when the client
        that asked goes away: cut short, a load would leave its model LOADING and its instances
        running unserved."""
        for call_id in list(self._data):
            task = self._running.get(call_id)
            if task is not None:
                task.cancel()
        self._service._connections.discard(self)


def portable(exc: BaseException) -> BaseException:
    """An exception the worker can unpickle: inferd's own and Python's built-in ones as they are;
    any other class (a model's own, defined where the worker never imports, or one whose
    constructor takes other arguments than it pickles) as its nearest inferd or built-in base, with
    the same message. One that did not unpickle would end the worker's whole channel."""
    if type(exc).__module__ in ("inferd.errors", "builtins"):
        return exc
    if isinstance(exc, InferdError):
        base = next(c for c in type(exc).__mro__ if c.__module__ == "inferd.errors")
        return cast(BaseException, base(exc.message))
    return RuntimeError(describe(exc, limit=64 * 1024))  # the message whole, within reason


class WorkerSupervisor:
    """Starts N front-end worker processes (``python -m inferd _frontend``), starts a new one when
    one dies, and stops them all on shutdown: SIGTERM, then their drain, then SIGKILL."""

    def __init__(self, count: int, socket_path: Path, settings_path: Path,
                 beats: dict[int, float] | None = None, gone: Callable[[int], None] | None = None) -> None:
        """``gone(number)``: called as a worker is seen dead, before another is started."""
        self._count = count
        self._gone = gone
        self._beats = beats if beats is not None else {}
        self._argv = [sys.executable, "-m", "inferd", "_frontend", str(socket_path), str(settings_path)]
        self._processes: list[subprocess.Popen[bytes]] = []
        self._stopping = False
        self._watcher: asyncio.Task[None] | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes]

    def start(self) -> None:
        self._processes = [self._spawn(n) for n in range(self._count)]
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def _spawn(self, number: int) -> subprocess.Popen[bytes]:
        self._beats[number] = time.monotonic() + START_TIMEOUT_S  # starting: its first beat may take this long
        env = {**os.environ, "INFERD_WORKER": str(number)}
        return subprocess.Popen(self._argv, env=env)  # output goes where the server's goes

    async def _watch(self) -> None:
        watched = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            judge, watched = now - watched < 1.0, now  # not after this loop was held up itself
            for number, process in enumerate(self._processes):
                code = process.poll()
                if code is None and judge and now - self._beats.get(number, now) > HUNG_S:
                    log.error("front-end worker %d (pid %d) sent no beat for %.0f s (its loop is stuck or "
                              "stopped); killing it", number, process.pid, now - self._beats[number])
                    process.kill()
                    continue
                if code is None or self._stopping:
                    continue
                log.error("front-end worker %d (pid %d) exited with %s; starting another", number, process.pid, code)
                if self._gone is not None:
                    self._gone(number)  # what it held is free now, not once another starts
                await asyncio.sleep(RESTART_PAUSE_S)  # a worker that cannot start does not spin
                if not self._stopping:
                    self._processes[number] = self._spawn(number)

    async def stop(self, timeout: float) -> bool:
        """True when every worker drained within ``timeout`` seconds and then exited (within
        ``EXIT_GRACE_S`` more)."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
        for process in self._processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout + EXIT_GRACE_S
        drained = True
        for number, process in enumerate(self._processes):
            try:
                await asyncio.to_thread(process.wait, max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                drained = False
                log.warning("front-end worker %d (pid %d) did not exit within its drain; killing it",
                            number, process.pid)
                process.kill()
                await asyncio.to_thread(process.wait)
        return drained


def remove_leftovers(temp_dir: str | None = None) -> int:
    """The folders of model processes that were killed (SIGKILL: no cleanup ran): their socket and
    settings, which hold the server's token when it has one. Returns how many were removed."""
    removed = 0
    for folder in Path(temp_dir or tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        owner = folder.name[len(FOLDER_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)) and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Workers:
    """``--workers N`` in the model process: its ports reserved (so a taken port fails the start,
    and port 0 becomes one port all workers share), the core served on a private socket, the
    workers started; ``start`` returns once every worker listens."""

    def __init__(self, core: Core, settings: ServerSettings,
                 worker_gone: Callable[[Path, int], None] | None = None) -> None:
        """``worker_gone(folder, number)``: a dead worker's leftovers in this server's private folder
        (the composition root's: the counts the workers share are the transports')."""
        self._settings = settings
        self._worker_gone = worker_gone
        self._service = CoreService({"data": core.data, "control": core.control, "metrics": core.metrics,
                                     "workers": self})
        remove_leftovers()
        # 0700: only this user enters; named by this process, so a later server removes it if this one is killed
        self._folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))
        self._reserved: list[socket.socket] = []
        self._ports: dict[str, int] = {}
        self._listening: set[int] = set()
        self._all_listening = asyncio.Event()
        self._supervisor: WorkerSupervisor | None = None

    async def reserve(self, what: str) -> None:
        """Bind the HTTP or gRPC port (an OSError when it is taken); port 0 picks the one to share."""
        self._ports[what] = self._reserve(self._settings.host, self._settings.http_port if what == "HTTP"
                                          else self._settings.grpc_port)

    async def start(self) -> ServerSettings:
        """After ``reserve`` of both ports."""
        s = self._settings
        settings = dataclasses.replace(s, http_port=self._ports["HTTP"], grpc_port=self._ports["gRPC"])
        settings_path = self._folder / "settings.pickle"
        settings_path.write_bytes(pickle.dumps(settings))
        await self._service.start(self._folder / "core.sock")
        gone = None if self._worker_gone is None else functools.partial(self._worker_gone, self._folder)
        self._supervisor = WorkerSupervisor(s.workers, self._folder / "core.sock", settings_path,
                                            self._service.beats, gone)
        self._supervisor.start()
        try:
            await asyncio.wait_for(self._all_listening.wait(), START_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(f"{s.workers - len(self._listening)} of {s.workers} front-end workers did not "
                               f"open their ports within {START_TIMEOUT_S:.0f} s (see their log lines)") from None
        return settings

    def _reserve(self, host: str, port: int) -> int:
        if not port:
            return 0
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))  # bound, never listening: it holds the port and takes no connections
        self._reserved.append(sock)
        return int(sock.getsockname()[1])

    def listening(self, number: int) -> None:
        """A worker's call once its ports are open."""
        self._listening.add(number)
        if len(self._listening) >= self._settings.workers:
            self._all_listening.set()

    @property
    def pids(self) -> list[int]:
        return self._supervisor.pids if self._supervisor is not None else []

    async def stop(self, timeout: float) -> bool:
        drained = await self._supervisor.stop(timeout) if self._supervisor is not None else True
        await self._service.close()
        for sock in self._reserved:
            sock.close()
        shutil.rmtree(self._folder, ignore_errors=True)
        return drained
