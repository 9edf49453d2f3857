"""The gRPC server: every servicer registered under its protocol's name, on its own port.

grpc's C core receives and parses on a pool of threads (the synchronous grpcio server); each call is
handed to the event loop, where the servicer method runs like an HTTP route, and its thread waits for
the answer. Many calls reach the loop in one pass, so the batcher sees them together, as it sees
HTTP requests parsed in one pass. (grpc.aio delivers each call through several loop passes of its
own, so batches stayed at one or two requests: see DESIGN.md.)

Bounded like the HTTP front end: at most ``max_calls`` calls at once (grpc answers the next one
RESOURCE_EXHAUSTED before reading it; under ``--workers N``, also counted with every worker's calls
against the server's limit: ``_SharedCalls``), and every request message
counted against the byte budget HTTP shares while its call runs (on the loop: no lock).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import re
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf.message import Message

from inferd.core import Core
from inferd.transport.budget import ByteBudget
from inferd.transport.grpc.errors import SHUTTING_DOWN
from inferd.transport.grpc.health import Health
from inferd.transport.grpc.servicers import (
    Answer,
    Context,
    KServeV2Servicer,
    ModelServicer,
    PredictionServicer,
    Servicer,
    StreamTurns,
    Turn,
    restricted_paths,
    restriction_refusal,
)
from inferd.transport.grpc.torchserve_servicers import TorchServeInferenceServicer, TorchServeManagementServicer
from inferd.transport.restrictions import Restriction
from inferd.transport.shared_counts import SharedCount

STREAM_BUFFER = 64  # answers of one stream waiting for a slow client; then the models wait
STREAM_INFLIGHT = 64  # requests of one stream running at once; then its messages wait to be read
THREADS = 256  # calls running at once; more (up to max_calls) wait in grpc's queue for a thread
MAX_STREAMS_PER_CONNECTION = 1000  # per connection; calls at once are bounded by max_calls

Method = Callable[[Any, Context], Awaitable[Answer]]


class _Aborted(grpc.aio.AbortError):
    """A servicer method aborted: carried back to the calling thread, which aborts the call there."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _LoopContext:
    """What a servicer method may ask of its call, answered from the grpc thread's context."""

    def __init__(self, context: grpc.ServicerContext, turn: Turn | None = None) -> None:
        self._context = context
        self.turn = turn  # a stream request's place in its stream's order

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)

    def cancelled(self) -> bool:
        return not self._context.is_active()

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()


def _budgeted(method: Method, budget: ByteBudget) -> Method:
    async def call(request: Any, context: Context) -> Answer:
        size = request.ByteSize()
        if not budget.take(size):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, budget.refusal(size))
        try:
            return await method(request, context)
        finally:
            budget.give(size)

    return call


def _on_loop(method: Method, loop: asyncio.AbstractEventLoop) -> Callable[[Message, grpc.ServicerContext], Answer]:
    """The grpc thread's side of a call: run ``method`` on the loop and wait for its answer."""

    def call(request: Message, context: grpc.ServicerContext) -> Answer:
        coroutine = method(request, cast(Context, _LoopContext(context)))
        future = asyncio.run_coroutine_threadsafe(cast(Coroutine[Any, Any, Answer], coroutine), loop)
        try:
            return future.result()
        except _Aborted as exc:
            context.abort(exc.code, exc.details)
            raise  # not reached: abort raises

    return call


StreamMethod = Callable[[Any, Context], AsyncGenerator[Message, None]]
_DONE = object()


def _stream_on_loop(method: StreamMethod, loop: asyncio.AbstractEventLoop, budget: ByteBudget,
                    draining: threading.Event
                    ) -> Callable[[Iterator[Message], grpc.ServicerContext], Iterator[Message]]:
    """A bidirectional call: a thread reads the client's messages and starts each on the loop
    (they run at once, their answers interleave); the call's thread sends the answers from a
    bounded queue. When the client goes away every request still running is cancelled, which
    closes its model's stream. Each request counts against the byte budget while it runs, each
    answer while it waits to be sent: an answer waits for room (and its model behind it), so
    slow readers cannot grow the server's memory together. While the server drains, a stream
    with nothing running and nothing left to send ends with UNAVAILABLE: an idle stream the
    client keeps open would otherwise hold the drain for all of --drain-timeout."""

    def call(requests: Iterator[Message], context: grpc.ServicerContext) -> Iterator[Message]:
        answers: queue.Queue[object] = queue.Queue(STREAM_BUFFER)
        running: set[concurrent.futures.Future[None]] = set()
        lock = threading.Lock()
        open_parts = [1]  # the reader, plus one per request running
        slots = threading.Semaphore(STREAM_INFLIGHT)
        turns = StreamTurns()  # requests reach the data plane in the order they were read

        def part_done(_: object = None) -> None:
            with lock:
                open_parts[0] -= 1
                last = open_parts[0] == 0
            if last:
                answers.put(_DONE)

        async def room(size: int) -> int:
            """Wait until the budget holds ``size`` more bytes; what was taken (0 for a message
            larger than the whole budget: it goes uncounted)."""
            while not budget.take(size):
                if size > budget.limit:
                    return 0
                await asyncio.sleep(0.005)
            return size

        ended = threading.Event()  # the call is over: answers still queued give their room back

        def drain() -> None:
            while True:
                try:
                    item = answers.get_nowait()
                except queue.Empty:
                    return
                if isinstance(item, tuple) and item[1]:
                    loop.call_soon_threadsafe(budget.give, item[1])

        async def put(item: Message) -> None:
            size = await room(item.ByteSize())
            try:
                answers.put_nowait((item, size))
            except queue.Full:
                await asyncio.to_thread(answers.put, (item, size))
            if ended.is_set():
                drain()

        async def run(request: Message) -> None:
            turn = turns.next()  # before any await: tasks start in the order their messages were read
            size = 0
            try:
                await turn.wait()  # room in arrival order: a later request never holds room an earlier one waits for
                size = await room(request.ByteSize())  # read already: its model waits for room
                loop_context = cast(Context, _LoopContext(context, turn))
                async with contextlib.aclosing(method(request, loop_context)) as produced:
                    async for item in produced:
                        await put(item)
            except _Aborted as aborted:  # the whole stream ends with its status, sent after what came before
                await asyncio.to_thread(answers.put, aborted)
            finally:
                turn.entered()
                budget.give(size)

        def finished(future: concurrent.futures.Future[None]) -> None:
            with lock:
                running.discard(future)
            slots.release()
            part_done()

        def read() -> None:
            try:
                for request in requests:
                    while not slots.acquire(timeout=0.1):  # reading waits while the stream has its most
                        if not context.is_active():
                            return
                    with lock:
                        open_parts[0] += 1
                    future = asyncio.run_coroutine_threadsafe(run(request), loop)
                    with lock:
                        running.add(future)
                    future.add_done_callback(finished)
            except grpc.RpcError:
                pass  # the client went away: on_end cancels what runs
            finally:
                part_done()

        def on_end() -> None:
            with lock:
                pending = list(running)
            for future in pending:
                future.cancel()

        context.add_callback(on_end)
        threading.Thread(target=read, name="inferd-grpc-stream", daemon=True).start()
        try:
            while True:
                try:
                    item = answers.get(timeout=0.1)
                except queue.Empty:
                    if not context.is_active():
                        return
                    if draining.is_set():
                        with lock:
                            idle = open_parts[0] == 1  # only the reader, waiting for the client
                        if idle and answers.empty():
                            context.set_code(grpc.StatusCode.UNAVAILABLE)
                            context.set_details(SHUTTING_DOWN)
                            return
                    continue
                if item is _DONE:
                    return
                if isinstance(item, _Aborted):
                    context.abort(item.code, item.details)
                message, size = cast(tuple[Message, int], item)
                if size:
                    loop.call_soon_threadsafe(budget.give, size)
                yield message
        finally:
            ended.set()
            drain()

    return call


def _handler(servicer: Servicer, loop: asyncio.AbstractEventLoop, budget: ByteBudget,
             draining: threading.Event) -> grpc.GenericRpcHandler[Any, Any]:
    streams = {
        name: grpc.stream_stream_rpc_method_handler(
            _stream_on_loop(method, loop, budget, draining), request_deserializer=request_type.FromString,
            response_serializer=lambda message: message.SerializeToString())
        for name, (method, request_type) in servicer.streams().items()
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _on_loop(_budgeted(method, budget), loop), request_deserializer=request_type.FromString,
            response_serializer=lambda message: message.SerializeToString())
        for name, (method, request_type) in servicer.methods().items()
    }
    return grpc.method_handlers_generic_handler(servicer.name, {**handlers, **streams})


if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:  # grpc's class takes no type arguments at run time
    _Interceptor = grpc.ServerInterceptor


class _Restrictions(_Interceptor):
    """Triton's --grpc-restricted-protocol: a call to a restricted method without its metadata ends
    with UNAVAILABLE before any message is read."""

    def __init__(self, restrictions: tuple[Restriction, ...]) -> None:
        self._restricted = restricted_paths(restrictions)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        restriction = self._restricted.get(details.method)
        if handler is None or restriction is None:
            return handler
        if dict(details.invocation_metadata or ()).get(restriction.header) == restriction.value:
            return handler
        message = restriction_refusal(restriction)

        def refuse(_: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAVAILABLE, message)

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)


class _SharedCalls(_Interceptor):
    """--workers N: a unary or bidirectional call counts, while it runs, with the other workers'
    calls (``shared_counts.py``) against the server's limit; over it, RESOURCE_EXHAUSTED. grpc's
    own count is this worker's alone, and a client's calls on one connection are one worker's."""

    def __init__(self, slots: SharedCount, limit: int) -> None:
        self._slots, self._limit = slots, limit
        self._active = 0
        self._lock = threading.Lock()  # grpc's threads admit and release

    def _admit(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            if self._active + self._slots.others() < self._limit:
                self._active += 1
                self._slots.publish(self._active)
                return
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")

    def _release(self) -> None:
        with self._lock:
            self._active -= 1
            self._slots.publish(self._active)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            def counted(request: Any, context: grpc.ServicerContext) -> Any:
                self._admit(context)
                try:
                    return unary(request, context)
                finally:
                    self._release()

            return grpc.unary_unary_rpc_method_handler(counted, handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.stream_stream is not None:
            stream = handler.stream_stream

            def counted_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
                self._admit(context)
                try:
                    yield from stream(requests, context)
                finally:
                    self._release()

            return grpc.stream_stream_rpc_method_handler(counted_stream, handler.request_deserializer,
                                                         handler.response_serializer)
        return handler  # health's Watch: grpc's own count


class GrpcServer:
    """Must be built on the event loop's thread: calls are handed to that loop."""

    def __init__(self, core: Core, host: str, port: int, max_message_bytes: int,
                 budget: ByteBudget | None = None, max_calls: int = 1000, socket_path: str | None = None,
                 extra_options: tuple[tuple[str, str | int], ...] = (), extra_ports: tuple[int, ...] = (),
                 restrictions: tuple[Restriction, ...] = (), header_forward: re.Pattern[str] | None = None,
                 shared_calls: tuple[SharedCount, int] | None = None) -> None:
        """``max_calls`` bounds this server's calls at once; ``shared_calls`` (a worker's: the
        slots every worker counts its calls in, and the limit over all of them) bounds them with
        the other workers'."""
        options: list[tuple[str, str | int]] = [("grpc.max_receive_message_length", max_message_bytes),
                                                ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0),
                                                ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION)]
        # later wins (TF Serving's --grpc_channel_arguments, --workers' port sharing): grpc itself
        # takes the first of two equal keys, so the list is merged here
        options = list(dict([*options, *extra_options]).items())
        loop = asyncio.get_running_loop()
        budget = budget or ByteBudget(8 * max_message_bytes)
        servicers: list[Servicer] = [KServeV2Servicer(core, header_forward), PredictionServicer(core),
                                     ModelServicer(core),
                                     TorchServeInferenceServicer(core), TorchServeManagementServicer(core)]
        self._draining = threading.Event()
        interceptors: list[_Interceptor] = [_Restrictions(restrictions)]
        if shared_calls is not None:
            interceptors.append(_SharedCalls(*shared_calls))
        self._server = grpc.server(ThreadPoolExecutor(min(THREADS, max_calls), thread_name_prefix="inferd-grpc"),
                                   handlers=[_handler(s, loop, budget, self._draining) for s in servicers],
                                   options=options, interceptors=interceptors,
                                   maximum_concurrent_rpcs=max_calls)
        self.health = Health(self._server, [s.name for s in servicers])
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {host}:{port}")
        if socket_path and not self._server.add_insecure_port(f"unix:{socket_path}"):
            raise OSError(f"cannot listen for gRPC on unix:{socket_path}")
        for extra in extra_ports:
            if not self._server.add_insecure_port(f"{host}:{extra}"):
                raise OSError(f"cannot listen for gRPC on {host}:{extra}")

    async def start(self) -> None:
        self._server.start()

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let running ones finish for up to ``grace`` seconds (the loop keeps
        serving them meanwhile), then cancel the rest. Health watchers hear NOT_SERVING first."""
        self.health.drain()
        self._draining.set()
        await asyncio.to_thread(self._server.stop(grace).wait)
