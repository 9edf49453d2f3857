"""Instance pools: N executions of one model at once, on threads (frameworks release the GIL)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from inferd.errors import DeadlineExceeded, InferdError, ModelError, QueueFull, Unavailable, describe
from inferd.runtimes.base import (
    Answer,
    Arrays,
    Emit,
    Runtime,
    call_cancelled_by,
    requests_cancelled_by,
    with_request,
)
from inferd.scheduling.policy import inline_threshold
from inferd.scheduling.scheduler import Scheduler, SchedulerStats
from inferd.types import BatchStatistics, CallContext, Duration, WorkerStatus

# A call this fast costs the event loop less than handing it to a thread and back (about 70 µs of
# CPU on this project's reference machine), so it runs inline: see policy.inline_threshold.
TRIVIAL_S = 0.0001  # calls below this cost less than one event-loop pass: the batcher runs them at once
_PROBE_CALLS = 16  # threaded calls measured before a model may run inline
_SLOW_STREAK = 3  # calls in a row 10x over the threshold send an inline model back to threads
_EWMA = 0.2
STREAM_BUFFER = 16  # a decoupled model's answers held for a slow reader; then the model waits
_END = object()


class InstancePool(Scheduler):
    """Runs a runtime on ``count`` threads; at most ``max_queue`` calls wait for one.

    Without dynamic batching each request is one call. It is a Runtime itself; the batcher uses
    ``submit``/``execute`` and counts free instances on its own. Models whose calls take less
    than ``policy.inline_threshold`` run on the calling (event loop) thread: see ``inline``.
    """

    def __init__(self, runtime: Runtime, count: int, name: str, max_queue: int = 1024,
                 observe_batch: Callable[[int], None] | None = None,
                 on_unload: Callable[[], None] | None = None) -> None:
        self.inner = runtime
        self.adopt_metadata(runtime)
        self._count = count
        self.name = name
        self._max_queue = max_queue
        # a thread per execution one instance runs at once (several streams of a decoupled async execute)
        self._executor = ThreadPoolExecutor(count * runtime.calls_at_once, thread_name_prefix=f"inferd-{name}")
        self._observe_batch = observe_batch
        self._on_unload = on_unload
        self.pending = 0  # submitted and not finished (on the event loop)
        self._busy = 0  # running right now (instance threads)
        self._executions = 0
        self._inferences = 0
        self._batches: dict[int, Duration] = {}  # rows of an execution -> executions and their time
        self._batches_lock = threading.Lock()  # guards the counters instance threads update
        self._closed = False
        self._mean_s = 0.0  # moving average of a call's duration
        self._measured = 0
        self.inline = False
        self.trivial = False  # inline and cheaper than a pass of the event loop
        self._slow_streak = 0
        self._inline_below_s = inline_threshold(_usable_cpus())
        self._inline_max_bytes = 0  # the largest input measured while deciding: larger runs threaded
        self._started = time.time()

    @property
    def instances(self) -> int:
        return self._count

    @property
    def busy(self) -> int:
        return self._busy

    def statistics(self) -> SchedulerStats:
        with self._batches_lock:
            batches = tuple(BatchStatistics(rows, Duration(d.count, d.ns))
                            for rows, d in sorted(self._batches.items()))
        return SchedulerStats(self._count, self._busy, max(self.pending - self._busy, 0), self._executions,
                              self._inferences, batches)

    def infer(self, inputs: Arrays) -> Arrays:
        return self.inner.infer(inputs)

    async def infer_async(self, inputs: Arrays, context: CallContext) -> Arrays:
        if self._closed:
            raise self.unloading()
        if self.takes_request:  # one call, one request: the model may ask for its parameters
            inputs = with_request(inputs, context)
        if self.pending >= self._max_queue + self._count:
            raise QueueFull(f"model '{self.name}' queue is full ({self._max_queue} waiting); retry later")
        if self.pending == 0 and self.runs_inline(inputs):
            return self._run(inputs, context, time.perf_counter())
        self.pending += 1
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._run, inputs, context,
                                                            time.perf_counter())
        future.add_done_callback(self.finished)  # the call holds its place until it leaves its thread
        if context.deadline is None:
            return await future
        remaining = context.deadline - time.perf_counter()
        done, _ = await asyncio.wait((future,), timeout=max(remaining, 0.0))
        if not done:  # the answer leaves at the deadline; a call still queued then never runs
            raise DeadlineExceeded(f"model '{self.name}': the request's deadline passed while it waited "
                                   "for an instance; it was dropped")
        return future.result()

    async def infer_stream_async(self, inputs: Arrays, context: CallContext) -> AsyncGenerator[Arrays, None]:
        """A decoupled model's answers: its generator runs on an instance thread (holding it until
        it ends) and hands each answer over a bounded queue, so a slow reader slows the model down
        instead of filling memory; closing this iterator (the client went away) stops it."""
        if self.takes_request and self.decoupled:
            inputs = with_request(inputs, context)
        if not self.decoupled:
            if self.parts:
                async with contextlib.aclosing(self._answer_in_parts(inputs, context)) as in_parts:
                    async for answer in in_parts:
                        yield answer
            else:
                yield await self.infer_async(inputs, context)
            return
        if self.pending >= self._max_queue + self._count:
            raise QueueFull(f"model '{self.name}' queue is full ({self._max_queue} waiting); retry later")
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[object] = asyncio.Queue(STREAM_BUFFER)
        stop = threading.Event()
        self.pending += 1
        enqueued = time.perf_counter()
        future = loop.run_in_executor(self._executor, self._produce, inputs, context, enqueued, answers, stop, loop)
        future.add_done_callback(self.finished)
        async with contextlib.aclosing(self.read_answers(answers, stop, context)) as read:
            async for answer in read:
                yield answer

    async def read_answers(self, answers: asyncio.Queue[object], stop: threading.Event,
                           context: CallContext) -> AsyncGenerator[Arrays, None]:
        """A stream's answers as an instance hands them over, until its end or its error; ``stop``
        is set when the reader leaves or the request's deadline passes."""
        # the deadline stops the model even while the reader is stuck on a slow client
        deadline = _Deadline(stop)
        timer = None if context.deadline is None else asyncio.get_running_loop().call_later(
            max(context.deadline - time.perf_counter(), 0.0), deadline.pass_)
        try:
            while True:
                item = await self._next_answer(answers, context, deadline)
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            stop.set()
            if timer is not None:
                timer.cancel()

    async def _answer_in_parts(self, inputs: Arrays, context: CallContext) -> AsyncGenerator[Arrays, None]:
        """The parts a model sends before its answer (a handler's intermediate answers), then the
        answer. The call runs as ``infer_async``'s do, its answer the thread's result; only parts
        cross to the loop on their own, and a slow reader holds the model at its next part."""
        if self._closed:
            raise self.unloading()
        if self.pending >= self._max_queue + self._count:
            raise QueueFull(f"model '{self.name}' queue is full ({self._max_queue} waiting); retry later")
        loop = asyncio.get_running_loop()
        parts = _Parts(loop)
        self.pending += 1
        future = loop.run_in_executor(self._executor, self._run, inputs, context, time.perf_counter(), parts.emit)
        future.add_done_callback(self.finished)
        future.add_done_callback(parts.wake)
        timer = None if context.deadline is None else loop.call_later(
            max(context.deadline - time.perf_counter(), 0.0), parts.expire)
        try:
            while (part := await parts.next(future)) is not None:
                yield part
            if parts.expired:
                raise DeadlineExceeded(f"model '{self.name}': the request's deadline passed before its "
                                       "answer; the answer was dropped")
            yield await future
        finally:
            parts.close()
            if timer is not None:
                timer.cancel()

    async def _next_answer(self, answers: asyncio.Queue[object], context: CallContext, deadline: _Deadline
                           ) -> object:
        """The stream's next answer, within the request's deadline: it bounds the whole stream
        (the time its reader took included), not each answer."""
        if context.deadline is None:
            return await answers.get()
        try:
            item = await asyncio.wait_for(answers.get(), max(context.deadline - time.perf_counter(), 0.0))
        except TimeoutError:
            item = None
        if item is None or (item is _END and (deadline.passed or time.perf_counter() >= context.deadline)):
            # stopped by the timer
            raise DeadlineExceeded(f"model '{self.name}': the request's deadline passed while it streamed "
                                   "its answers; the model was stopped")
        return item

    def _produce(self, inputs: Arrays, context: CallContext, enqueued: float, answers: asyncio.Queue[object],
                 stop: threading.Event, loop: asyncio.AbstractEventLoop) -> None:
        def hand(item: object) -> bool:
            return hand_over(answers, loop, stop, item)

        start = time.perf_counter()
        context.timings.queue += start - enqueued
        self._busy += 1
        self._executions += 1
        self._inferences += self._rows(inputs)
        stream = self.inner.infer_stream(inputs, stop)
        try:
            for item in stream:
                if stop.is_set() or context.is_cancelled() or not hand(item):
                    break
            hand(_END)  # also after a client left: the reader ends instead of waiting
        except InferdError as exc:
            hand(exc)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # as in execute: a model's SystemExit is its request's error
            hand(model_failure(self.name, exc))
        finally:
            stream.close()
            self._busy -= 1
            context.timings.compute += time.perf_counter() - start

    def finished(self, future: asyncio.Future[Any]) -> None:
        self.pending -= 1
        if not future.cancelled():
            future.exception()  # retrieved: an answer dropped at its deadline logs nothing

    def submit(self, inputs: Arrays) -> asyncio.Future[Arrays]:
        """Run one execution (a whole batch) on a free instance thread."""
        if self._closed:
            failed: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
            failed.set_exception(self.unloading())
            return failed
        return asyncio.get_running_loop().run_in_executor(self._executor, self._execute_threaded, inputs)

    def _execute_threaded(self, inputs: Arrays) -> Arrays:
        """``execute`` on an instance thread. An inline model's input larger than any it ran inline
        comes here (``runs_inline``); if it too ran faster than the inline threshold, inputs of its
        size run inline from now on. Else a model first measured on small batches (a lone client)
        would run every larger batch threaded for good, paying the hop the inline path saves."""
        start = time.perf_counter()
        outputs = self.execute(inputs)
        if self.inline and time.perf_counter() - start < self._inline_below_s:
            self._inline_max_bytes = max(self._inline_max_bytes, _nbytes(inputs))
        return outputs

    def unloading(self) -> Unavailable:
        """What a call that comes after the pool shut gets (it found the version before its unload)."""
        return Unavailable(f"model '{self.name}' is unloading; retry (a newer version may be serving)")

    def runs_inline(self, inputs: Arrays) -> bool:
        """Inline only for inputs no larger than those the decision was measured on: a call's
        time on the loop is bounded by its size, not only by an average."""
        return self.inline and _nbytes(inputs) <= self._inline_max_bytes

    def execute(self, inputs: Arrays, lane: int | None = None, emit: Emit | None = None,
                requests: int | None = None, rows: int | None = None) -> Arrays:
        """One call on this thread; ``lane``: on that instance (a sequence's, see Runtime.infer_on);
        ``emit``: the parts it sends before its answer go there (Runtime.infer_parts); ``requests``:
        the rows that are requests, when some are not (the sequence batcher's empty slots);
        ``rows``: the call's rows, when the caller has counted them (the dynamic batcher)."""
        if not self.inline and self._measured < _PROBE_CALLS:
            self._inline_max_bytes = max(self._inline_max_bytes, _nbytes(inputs))
        if rows is None:
            rows = self._rows(inputs)
        with self._batches_lock:
            self._busy += 1
        start = time.perf_counter()
        succeeded = False  # as Triton's inference_count and execution_count: successes only
        try:
            if emit is not None:
                answer = self.inner.infer_parts(inputs, emit)
            else:
                answer = self.inner.infer(inputs) if lane is None else self.inner.infer_on(lane, inputs)
            succeeded = True
            return answer
        except InferdError:
            raise
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # sys.exit() or KeyboardInterrupt in a model ends its call, not the server
            raise model_failure(self.name, exc) from exc
        finally:
            answered = rows if requests is None else requests
            self._counted(rows, time.perf_counter() - start, answered if succeeded else None)

    def submit_requests(self, requests: list[Arrays], cancelled: list[Callable[[], bool]] | None = None
                        ) -> asyncio.Future[list[Answer]]:
        """Run one execution of several requests handed over apart (``requests_apart``) on a free
        instance thread: per request, its outputs or its own error. ``cancelled``: per request,
        whether its client went away (the model's ``request.is_cancelled()``)."""
        if self._closed:
            failed: asyncio.Future[list[Answer]] = asyncio.get_running_loop().create_future()
            failed.set_exception(self.unloading())
            return failed
        return asyncio.get_running_loop().run_in_executor(self._executor, self.execute_requests, requests, None,
                                                          cancelled)

    def execute_requests(self, requests: list[Arrays], lane: int | None = None,
                         cancelled: list[Callable[[], bool]] | None = None) -> list[Answer]:
        """``execute`` for a batch handed over apart (``lane``: on that instance); a request's own
        failure is its error alone."""
        rows = [self._rows(inputs) for inputs in requests]
        with self._batches_lock:
            self._busy += 1
        start = time.perf_counter()
        answered: int | None = None
        try:
            with requests_cancelled_by(cancelled):
                answers = (self.inner.infer_requests(requests) if lane is None
                           else self.inner.infer_requests_on(lane, requests))
            if len(answers) != len(requests):
                raise ModelError(f"model '{self.name}' gave {len(answers)} answers to {len(requests)} requests")
            answered = sum(n for n, answer in zip(rows, answers, strict=True) if not isinstance(answer, Exception))
            return [answer if not isinstance(answer, Exception) or isinstance(answer, InferdError)
                    else model_failure(self.name, answer) for answer in answers]
        except InferdError:
            raise
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # as in execute: the model's failure, for every request of the batch
            raise model_failure(self.name, exc) from exc
        finally:
            self._counted(sum(rows), time.perf_counter() - start, answered)

    def submit_streams(self, requests: list[Arrays], streams: list[AnswerStream]) -> asyncio.Future[None]:
        """Run one execution of a decoupled model's batch handed over apart on a free instance
        thread, which it holds until every request's stream has ended: each request's answers go
        to its own stream."""
        if self._closed:
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(self.unloading())
            return failed
        return asyncio.get_running_loop().run_in_executor(self._executor, self.execute_streams, requests, streams)

    def execute_streams(self, requests: list[Arrays], streams: list[AnswerStream]) -> None:
        """``execute_requests`` for a decoupled model: never raises; what fails a request ends its stream."""
        rows = [self._rows(inputs) for inputs in requests]
        with self._batches_lock:
            self._busy += 1
        start = time.perf_counter()
        try:
            self.inner.infer_streams(requests, list(streams))
        except BaseException as exc:  # the model's failure, for every request not ended yet
            for stream in streams:
                stream.end(exc)
        finally:
            for stream in streams:
                stream.end()  # a request the runtime left open (its reader had gone) ends here
            answered = sum(n for n, stream in zip(rows, streams, strict=True) if not stream.failed)
            self._counted(sum(rows), time.perf_counter() - start, answered)

    def _counted(self, rows: int, seconds: float, answered: int | None) -> None:
        """An execution of ``rows`` rows took ``seconds``; ``answered``: the rows it answered
        (None: it failed). As Triton's inference_count and execution_count: successes only."""
        with self._batches_lock:
            self._busy -= 1
            if answered is not None:
                self._executions += 1
                self._inferences += answered
            of_size = self._batches.get(rows)
            if of_size is None:
                of_size = self._batches[rows] = Duration()
            of_size.add(seconds)
            self._measure(seconds)

    def _measure(self, seconds: float) -> None:
        """Decide inline or threaded from the calls' moving average; a slow call resets it."""
        if self.inline and seconds > 10 * self._inline_below_s:
            self._slow_streak += 1
            if self._slow_streak >= _SLOW_STREAK:  # not one preempted call: the model got slow
                self.inline = self.trivial = False
                self._measured, self._mean_s, self._slow_streak = 0, seconds, 0
                self._inline_max_bytes = 0
            return
        self._slow_streak = 0
        self._mean_s = seconds if self._measured == 0 else (
            (1 - _EWMA) * self._mean_s + _EWMA * seconds)
        self._measured += 1
        # a batch handed over apart never runs inline: the batcher's inline path joins requests
        if (self._measured >= _PROBE_CALLS and not self.out_of_process and not self.calls_models
                and not self.requests_apart):
            self.inline = self._mean_s < self._inline_below_s
            self.trivial = self.inline and self._mean_s < TRIVIAL_S

    def _run(self, inputs: Arrays, context: CallContext, enqueued: float, emit: Emit | None = None) -> Arrays:
        start = time.perf_counter()
        context.timings.queue += start - enqueued
        if context.deadline is not None and start > context.deadline:
            raise DeadlineExceeded(f"model '{self.name}': the request's deadline passed after "
                                   f"{(start - enqueued) * 1000:.1f} ms in the queue; it did not run")
        if context.is_cancelled():
            raise asyncio.CancelledError("the client went away")
        if self._observe_batch is not None:  # unbatched: each call is a "batch" of its rows
            self._observe_batch(self._rows(inputs))
        try:
            with call_cancelled_by(context.is_cancelled if context.cancelled is not None else None):
                return self.execute(inputs, emit=emit)
        finally:
            context.timings.compute += time.perf_counter() - start

    def lane_losses(self, lane: int) -> int:
        return self.inner.lane_losses(lane)

    def _rows(self, inputs: Arrays) -> int:
        """Rows of one call: dim 0 when the model batches, else 1."""
        if self.max_batch_size <= 0 or not inputs:
            return 1
        return int(next(iter(inputs.values())).shape[0])

    async def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pending > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    def resize(self, count: int) -> None:
        """Run ``count`` executions at once from now on. Calls already running finish where they
        are; the old threads leave once idle."""
        if count < 1:
            raise ValueError(f"an instance pool needs at least one instance, got {count}")
        if count == self._count:
            return
        self.inner.scale(count)  # process instances start or retire processes too
        old, self._executor = self._executor, ThreadPoolExecutor(count * self.inner.calls_at_once,
                                                                 thread_name_prefix=f"inferd-{self.name}")
        self._count = count
        old.shutdown(wait=False)

    @property
    def checks_ready(self) -> bool:
        return self.inner.checks_ready

    def model_ready(self) -> bool:
        return self.inner.model_ready()

    def start_failure(self) -> str:
        return self.inner.start_failure()

    def workers(self) -> list[WorkerStatus]:
        """The inner runtime's processes, or this pool's threads (each in the server's process)."""
        own = self.inner.workers()
        if own is not None:
            return own
        return [WorkerStatus(i, os.getpid(), self._started, True) for i in range(self._count)]

    def unload(self) -> None:
        self._closed = True
        if self._on_unload is not None:
            self._on_unload()
        self._executor.shutdown(wait=True)
        self.inner.unload()

    def describe(self) -> str:
        return f"{self.inner.describe()}, {self._count} instance(s)"


class _Parts:
    """The parts of one answer, from the instance thread that runs the call to the reader on the
    event loop; at most STREAM_BUFFER wait unread, then the model waits at its next part."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: collections.deque[Arrays] = collections.deque()
        self._room = threading.Semaphore(STREAM_BUFFER)
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False  # nobody reads parts any more
        self.expired = False  # the request's deadline passed

    def emit(self, part: Arrays) -> bool:
        """On the instance thread: hand one part over; False once nobody reads them."""
        while not self._room.acquire(timeout=0.05):
            if self.closed:
                return False
        if self.closed:
            return False
        try:
            self._loop.call_soon_threadsafe(self._push, part)
        except RuntimeError:  # the loop closed
            return False
        return True

    def _push(self, part: Arrays) -> None:
        self._items.append(part)
        self.wake()

    def wake(self, _: object = None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def expire(self) -> None:
        self.expired = True
        self.wake()

    def close(self) -> None:
        self.closed = True

    async def next(self, call: asyncio.Future[Arrays]) -> Arrays | None:
        """The next part, or None once the call is done (its parts all read) or the deadline passed."""
        while not self._items:
            if call.done() or self.expired:
                return None
            self._waiter = self._loop.create_future()
            await self._waiter
        self._room.release()
        return self._items.popleft()


class AnswerStream:
    """One request's answers on their way from an instance (any thread the model sends from) to
    its reader on the event loop, over a bounded queue: a slow reader holds the model's sending
    thread, not the server's memory (a decoupled batch's request: see ``execute_streams``)."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self._name = name
        self._loop = loop
        self.answers: asyncio.Queue[object] = asyncio.Queue(STREAM_BUFFER)
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._ended = False
        self.failed = False

    def stopped(self) -> bool:
        return self.stop.is_set()

    def send(self, outputs: Arrays) -> bool:
        return not self._ended and not self.stop.is_set() and hand_over(self.answers, self._loop, self.stop, outputs)

    def end(self, error: BaseException | None = None) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self.failed = error is not None
        if error is not None and not isinstance(error, InferdError):
            error = model_failure(self._name, error)
        hand_over(self.answers, self._loop, self.stop, _END if error is None else error)

    def fail_now(self, error: BaseException) -> None:
        """On the event loop, before the model had the request (its execution never started)."""
        self._ended = self.failed = True
        self.answers.put_nowait(error)


class _Deadline:
    """Stops a stream's model when its request's deadline passes, and remembers that it did: the
    loop's timer may fire a little before ``perf_counter`` reaches the deadline (libuv reads its
    clock once per loop pass), and the end the stopped model then sends is the deadline's."""

    __slots__ = ("_stop", "passed")

    def __init__(self, stop: threading.Event) -> None:
        self.passed = False
        self._stop = stop

    def pass_(self) -> None:
        self.passed = True
        self._stop.set()


def hand_over(answers: asyncio.Queue[object], loop: asyncio.AbstractEventLoop, stop: threading.Event,
          item: object) -> bool:
    """Put ``item`` in the reader's queue from an instance thread, waiting while it is full;
    False once ``stop`` is set (nobody reads any more) or the loop closed."""
    handed = asyncio.run_coroutine_threadsafe(answers.put(item), loop)
    while True:
        try:
            handed.result(timeout=0.05)
            return True
        except concurrent.futures.TimeoutError:
            if stop.is_set() or loop.is_closed():
                handed.cancel()
                return False


def model_failure(name: str, exc: BaseException) -> ModelError:
    """A model's own exception as its request's error. Also a BaseException that is no Exception
    (``sys.exit()``, ``KeyboardInterrupt``): raised by a model, it is the model's failure — the
    server stops on its signal handlers, never on an exception a model raised."""
    return ModelError(f"model '{name}' failed: {describe(exc)}")


def _nbytes(inputs: Arrays) -> int:
    return sum(array.nbytes for array in inputs.values())


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1
