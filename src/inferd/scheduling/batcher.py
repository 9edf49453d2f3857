"""DynamicBatcher: queue requests per model version, run them together, split the answers back.

It wraps an InstancePool and is a Runtime itself. Its promises: every waiting request is answered
or failed exactly once (also when the model raises); each gets exactly its own rows back; a
request is never split; requests whose non-batch shapes differ never share a batch (except in a
ragged input, allow_ragged_batch: ragged.py joins those flat and splits the answers back); a request
whose deadline passes while queued fails and never runs (or, where the queue policy says DELAY,
waits behind the requests still in time); a request whose client went away is dropped before it
runs. With priority levels the queue is ordered by level (levels.py); batches are taken from its
front either way. A batcher that ``holds`` (``--batch-wait delay``) waits as Triton's: a batch short
of a preferred size waits for its oldest request's max_queue_delay even with every instance idle
(policy.hold_or_send); one that does not is work-conserving (policy.decide).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from inferd.config import DynamicBatching
from inferd.errors import DeadlineExceeded, ModelError, QueueFull
from inferd.runtimes.base import Answer, Arrays, with_request
from inferd.runtimes.ragged import RaggedBatching
from inferd.scheduling.instances import AnswerStream, InstancePool
from inferd.scheduling.levels import PriorityLevels
from inferd.scheduling.policy import decide, hold_or_send, plan_batch, queue_deadline
from inferd.scheduling.scheduler import Scheduler, SchedulerStats
from inferd.types import CallContext, WorkerStatus

BatchObserver = Callable[[int], None]  # rows of each execution


@dataclass(slots=True, eq=False)
class _Waiting:
    inputs: Arrays
    rows: int
    key: tuple[object, ...]  # requests batch together only when their keys are equal
    future: asyncio.Future[Arrays]
    enqueued: float
    context: CallContext
    expiry: asyncio.TimerHandle | None = None
    done: bool = field(default=False)
    stream: AnswerStream | None = None  # a decoupled model's request: its answers come this way


@dataclass(slots=True, eq=False)
class _Ranked(_Waiting):
    """A request of a model with priority levels (levels.py)."""

    level: int = 0
    rank: int = 0  # its place in the queue: 2 × level, +1 once its timeout delayed it


def batch_key(inputs: Arrays) -> tuple[object, ...]:
    return tuple([(name, array.shape[1:], array.dtype.str) for name, array in inputs.items()])


class DynamicBatcher(Scheduler):
    def __init__(self, pool: InstancePool, batching: DynamicBatching,
                 observe_batch: BatchObserver | None = None, ragged: RaggedBatching | None = None,
                 holds: bool = False) -> None:
        self.pool = pool
        self.adopt_metadata(pool)
        self._key = batch_key if ragged is None else ragged.key
        self._ragged = None if self.requests_apart else ragged  # requests handed over apart are never joined
        if ragged is not None:  # batch inputs are the server's to give, never the client's
            self.supplied_inputs = ragged.supplied
            self.inputs, self.outputs = ragged.client_specs(pool.inputs), ragged.client_specs(pool.outputs)
        self._batching = batching
        self._max_delay_s = batching.max_queue_delay_ms / 1000
        self._default_timeout_s = batching.default_timeout_ms / 1000
        self._observe_batch = observe_batch
        self._levels = PriorityLevels(batching, pool.name) if PriorityLevels.needed(batching) else None
        self._holds = holds  # Triton's wait (policy.hold_or_send) instead of the work-conserving one
        self._queues_always = holds or self._levels is not None  # never the run-at-once path
        self._draining = False  # a held batch goes at once
        self._queue: list[_Waiting] = []
        self._queued_rows = 0
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._first_done = False
        self._alone = False  # the model's requests come one per loop pass (a lone client): run them at once
        self._closed = False

    @property
    def instances(self) -> int:
        return self.pool.instances

    @property
    def busy(self) -> int:
        return self._running

    @property
    def group_rows(self) -> int:
        return self.max_batch_size

    def has_queued(self) -> bool:
        """Requests wait for an instance (read from any thread: a rate-limited pool asks)."""
        return bool(self._queue)

    def statistics(self) -> SchedulerStats:
        pool = self.pool.statistics()
        return SchedulerStats(pool.instances, self._running, len(self._queue), pool.executions, pool.inferences,
                              pool.batches)

    def infer(self, inputs: Arrays) -> Arrays:
        if self._ragged is not None:
            return self._ragged.split(self.pool.infer(self._ragged.join([inputs])), [inputs], self.pool.name)[0]
        return self.pool.infer(inputs)

    async def infer_async(self, inputs: Arrays, context: CallContext) -> Arrays:
        if self._closed:
            raise self.pool.unloading()
        if self._queues_always:
            return await self._infer_queued(inputs, context)
        if len(self._queue) >= self._batching.max_queue_size:
            raise QueueFull(f"model '{self.pool.name}' queue is full ({len(self._queue)} requests "
                            f"waiting, max_queue_size = {self._batching.max_queue_size}); retry later")
        loop = self._loop or self._bind_loop()
        first = next(iter(inputs.values()))
        if not self._queue and self._soon is None and self._runs_at_once() and self.pool.runs_inline(inputs):
            self._first_done = True  # the rest of this loop pass waits for company
            loop.call_soon(self._end_pass)
            return self._run_now(inputs, int(first.shape[0]), context)
        return await self._enqueue(inputs, int(first.shape[0]), context, None).future

    def _enqueue(self, inputs: Arrays, rows: int, context: CallContext, stream: AnswerStream | None) -> _Waiting:
        loop = self._loop or self._bind_loop()
        now = time.perf_counter()
        context.deadline = queue_deadline(context.deadline, now, self._default_timeout_s,
                                          self._batching.allow_timeout_override)
        waiting = _Waiting(inputs, rows, self._key(inputs), loop.create_future(), now, context, stream=stream)
        if context.deadline is not None:
            waiting.expiry = loop.call_later(max(context.deadline - now, 0), self._expire, waiting)
        self._queue.append(waiting)
        self._queued_rows += waiting.rows
        if self._soon is None:  # dispatch once this loop pass has queued all that arrived in it
            self._soon = loop.call_soon(self._dispatch)
        return waiting

    async def infer_stream_async(self, inputs: Arrays, context: CallContext) -> AsyncGenerator[Arrays, None]:
        """A decoupled model's request queues as any other and runs in a batch handed over apart
        (Triton's decoupled ``execute(requests)``); its own answers come back as they are sent."""
        if not self.decoupled:
            yield await self.infer_async(inputs, context)
            return
        if self._closed:
            raise self.pool.unloading()
        if self._levels is None and len(self._queue) >= self._batching.max_queue_size:
            raise QueueFull(f"model '{self.pool.name}' queue is full ({len(self._queue)} requests "
                            f"waiting, max_queue_size = {self._batching.max_queue_size}); retry later")
        stream = AnswerStream(self.pool.name, self._loop or self._bind_loop())
        waiting = (self._enqueue(inputs, int(next(iter(inputs.values())).shape[0]), context, stream)
                   if self._levels is None
                   else self._enqueue_by_level(inputs, context, self._levels, stream))
        try:
            await waiting.future  # its batch started (or it failed in the queue)
            async with contextlib.aclosing(self.pool.read_answers(stream.answers, stream.stop, context)) as read:
                async for answer in read:
                    yield answer
        finally:
            stream.stop.set()
            if not waiting.future.done():  # the reader left while it queued: it never runs
                waiting.future.cancel()

    async def _infer_queued(self, inputs: Arrays, context: CallContext) -> Arrays:
        """``infer_async`` for a model with priority levels or a DELAY policy (levels.py), or one
        whose batches wait as Triton's: the request always queues (at its level under that level's
        policy), never runs at once: the queue's order, or the held batch, decides. Apart, so that a
        model without them pays nothing for them."""
        if self._levels is not None:
            return await self._enqueue_by_level(inputs, context, self._levels, None).future
        if len(self._queue) >= self._batching.max_queue_size:
            raise QueueFull(f"model '{self.pool.name}' queue is full ({len(self._queue)} requests "
                            f"waiting, max_queue_size = {self._batching.max_queue_size}); retry later")
        return await self._enqueue(inputs, int(next(iter(inputs.values())).shape[0]), context, None).future

    def _enqueue_by_level(self, inputs: Arrays, context: CallContext, levels: PriorityLevels,
                          stream: AnswerStream | None) -> _Waiting:
        level = levels.admit(context.priority)
        policy = levels.policy(level)
        loop = self._loop or self._bind_loop()
        now = time.perf_counter()
        context.deadline = queue_deadline(context.deadline, now, policy.default_timeout_ms / 1000,
                                          policy.allow_timeout_override)
        waiting = _Ranked(inputs, int(next(iter(inputs.values())).shape[0]), self._key(inputs), loop.create_future(),
                          now, context, stream=stream, level=level)
        if context.deadline is not None:
            waiting.expiry = loop.call_later(max(context.deadline - now, 0), self._expire, waiting)
        levels.join(cast(list[_Ranked], self._queue), waiting)
        self._queued_rows += waiting.rows
        if self._soon is None:
            self._soon = loop.call_soon(self._dispatch)
        return waiting

    def _run_now(self, inputs: Arrays, rows: int, context: CallContext) -> Arrays:
        """A lone request for a trivial model: no queue, no future, the call itself."""
        if self._observe_batch is not None:
            self._observe_batch(rows)
        started = time.perf_counter()
        try:
            if self._ragged is not None:
                outputs = self.pool.execute(self._ragged.join([inputs]))
                return self._ragged.split(outputs, [inputs], self.pool.name)[0]
            return self.pool.execute(inputs, rows=rows)
        finally:
            context.timings.compute += time.perf_counter() - started

    def _runs_at_once(self) -> bool:
        """The first request of a loop pass runs at once, without a queue, a future or a pass of
        waiting, when the model is cheaper than the pass itself or its requests have been coming
        alone (one per pass, a lone client); requests arriving together still batch."""
        return (not self._first_done and (self.pool.trivial or self._alone)
                and self._running < self.pool.instances)

    def _end_pass(self) -> None:
        self._first_done = False
        self._alone = not self._queue  # another request came in the same pass: batch again

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        # get_running_loop() costs a getpid() system call each time; the batcher lives on one loop
        self._loop = asyncio.get_running_loop()
        return self._loop

    # -- queue -----------------------------------------------------------------------------
    def _expire(self, waiting: _Waiting) -> None:
        if waiting.done:
            return
        if isinstance(waiting, _Ranked) and self._levels is not None and self._levels.delays(waiting):
            waiting.expiry = waiting.context.deadline = None  # it waits behind the others, then runs
            self._levels.delay(cast(list[_Ranked], self._queue), waiting)
            return
        self._remove([waiting])
        waited = (time.perf_counter() - waiting.enqueued) * 1000
        _fail(waiting, DeadlineExceeded(f"model '{self.pool.name}': the request's deadline passed "
                                        f"after {waited:.1f} ms in the queue; it did not run"))

    def _remove(self, batch: list[_Waiting]) -> None:
        count = len(batch)
        if self._queue[:count] == batch:  # the queue's front, as a batch is taken: cut it off
            del self._queue[:count]
        else:
            gone = set(map(id, batch))
            self._queue = [w for w in self._queue if id(w) not in gone]
        if self._levels is not None:
            self._levels.leave(cast(list[_Ranked], batch))  # where there are levels, every request is _Ranked
        for waiting in batch:
            self._queued_rows -= waiting.rows
            waiting.done = True
            if waiting.expiry is not None:
                waiting.expiry.cancel()

    def _drop_abandoned(self) -> None:
        """Requests whose caller stopped waiting or whose client disconnected never run."""
        abandoned = [w for w in self._queue if w.future.done() or w.context.is_cancelled()]
        if abandoned:
            self._remove(abandoned)
            for waiting in abandoned:
                if not waiting.future.done():
                    waiting.future.cancel()

    # -- dispatch --------------------------------------------------------------------------
    def _dispatch(self) -> None:
        self._soon = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        instances = self.pool.instances
        if not self._queue or self._running >= instances:
            return
        self._drop_abandoned()  # once: nothing below awaits, so no request is abandoned meanwhile
        while self._queue and self._running < instances:
            if self._holds:
                batch = self._take_held()
                if batch is None:
                    return
            else:
                compatible = self._compatible(self._queue[0])
                decision = decide(self._queued_rows, time.perf_counter() - self._oldest(compatible),
                                  instances - self._running, self._running, self.max_batch_size,
                                  self._batching.preferred_batch_sizes, self._max_delay_s)
                if not decision.dispatch:
                    if decision.wait_s is not None:
                        self._timer = (self._loop or self._bind_loop()).call_later(decision.wait_s, self._dispatch)
                    return
                batch = self._take_batch(compatible)
            self._alone = len(batch) == 1 and not self._queue and self._running == 0
            self._start(batch)

    def _take_held(self) -> list[_Waiting] | None:
        """The batch a free instance takes now as Triton's batcher would (policy.hold_or_send), or
        None with the timer set for when the oldest request's delay runs out."""
        pending, cut = self._pending()
        count, wait_s = hold_or_send([w.rows for w in pending], cut, time.perf_counter() - self._oldest(pending),
                                     self.max_batch_size, self._batching.preferred_batch_sizes, self._max_delay_s,
                                     self._draining)
        if not count:
            self._timer = (self._loop or self._bind_loop()).call_later(wait_s, self._dispatch)
            return None
        batch = pending[:count]
        self._remove(batch)
        return batch

    def _pending(self) -> tuple[list[_Waiting], bool]:
        """The requests from the queue's front that share its head's shapes, up to one past
        max_batch_size rows, and whether one of other shapes stops them (Triton sends the batch
        before it as it is, rather than reaching past it)."""
        head = self._queue[0]
        pending: list[_Waiting] = []
        rows = 0
        for waiting in self._queue:
            if waiting.key != head.key:
                return pending, True
            pending.append(waiting)
            rows += waiting.rows
            if rows > self.max_batch_size:
                break
        return pending, False

    def _compatible(self, head: _Waiting) -> list[_Waiting]:
        """The requests the next batch would be taken from: those of the head's shapes, in queue
        order, up to max_batch_size rows."""
        compatible, rows = [], 0
        for waiting in self._queue:
            if waiting.key == head.key:
                compatible.append(waiting)
                rows += waiting.rows
                if rows >= self.max_batch_size:
                    break
        return compatible

    def _oldest(self, compatible: list[_Waiting]) -> float:
        """When the oldest request the next batch would take was queued: max_queue_delay runs from it,
        as Triton's runs from its pending batch's oldest request (core 73aad7c3, PriorityQueue::
        AdvanceCursor). Without levels the queue is in arrival order and that is its head; with them
        a lower level's request queued earlier may fill the batch behind a newer, higher one."""
        if self._levels is None:
            return compatible[0].enqueued
        return min(waiting.enqueued for waiting in compatible)

    def _take_batch(self, compatible: list[_Waiting]) -> list[_Waiting]:
        count, _ = plan_batch([w.rows for w in compatible], self.max_batch_size,
                              self._batching.preferred_batch_sizes)
        batch = compatible[:count]
        self._remove(batch)
        return batch

    def _start(self, batch: list[_Waiting]) -> None:
        started = time.perf_counter()
        rows = 0
        for waiting in batch:
            waiting.context.timings.queue += started - waiting.enqueued
            rows += waiting.rows
        if self.requests_apart and self.decoupled:
            self._start_streams(batch, rows, started)
            return
        if self.requests_apart:
            self._start_apart(batch, rows, started)
            return
        if self._ragged is not None:
            inputs = self._ragged.join([w.inputs for w in batch])
        else:
            inputs = batch[0].inputs if len(batch) == 1 else _concatenate(batch)
        if self._observe_batch is not None:
            self._observe_batch(rows)
        if self.pool.runs_inline(inputs):  # a fast model: run now, on this thread (see InstancePool)
            try:  # (a ragged batch's joined inputs have rows of their own)
                outputs = self.pool.execute(inputs, rows=rows if self._ragged is None else None)
            except Exception as exc:
                self._complete(batch, rows, started, None, exc)
            else:
                self._complete(batch, rows, started, outputs, None)
            return
        self._running += 1
        future = self.pool.submit(inputs)
        future.add_done_callback(lambda f: self._finished(f, batch, rows, started))

    def _start_apart(self, batch: list[_Waiting], rows: int, started: float) -> None:
        """Hand a runtime that takes a batch as its requests (Triton's ``execute(requests)``) each
        one's own inputs and facts; each gets its own answer or error back: nothing joined or split."""
        requests = [with_request(w.inputs, w.context) if self.takes_request else w.inputs for w in batch]
        if self._observe_batch is not None:
            self._observe_batch(rows)
        self._running += 1
        future = self.pool.submit_requests(requests, [w.context.is_cancelled for w in batch])
        future.add_done_callback(lambda f: self._answered(f, batch, started))

    def _start_streams(self, batch: list[_Waiting], rows: int, started: float) -> None:
        """``_start_apart`` for a decoupled model: each request's answers stream to its own reader,
        which starts reading now; the instance is the batch's until every stream has ended."""
        streams = [w.stream for w in batch if w.stream is not None]
        requests = [with_request(w.inputs, w.context) if self.takes_request else w.inputs for w in batch]
        if self._observe_batch is not None:
            self._observe_batch(rows)
        self._running += 1
        future = self.pool.submit_streams(requests, streams)
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_result({})  # started: its answers come over its stream
        future.add_done_callback(lambda f: self._streamed(f, batch, streams, started))

    def _streamed(self, future: asyncio.Future[None], batch: list[_Waiting], streams: list[AnswerStream],
                  started: float) -> None:
        self._running -= 1
        compute = time.perf_counter() - started
        for waiting in batch:
            waiting.context.timings.compute += compute
        error = future.exception()
        if error is not None:  # the execution never started (the model is unloading)
            for stream in streams:
                stream.fail_now(error)
        self._dispatch()

    def _answered(self, future: asyncio.Future[list[Answer]], batch: list[_Waiting], started: float) -> None:
        self._running -= 1
        compute = time.perf_counter() - started
        error = future.exception()
        answers: list[Answer | BaseException] = [error] * len(batch) if error is not None else [*future.result()]
        for waiting, answer in zip(batch, answers, strict=True):
            waiting.context.timings.compute += compute
            if isinstance(answer, BaseException):
                _fail(waiting, answer)
            elif not waiting.future.done():
                waiting.future.set_result(answer)
        self._dispatch()

    def _finished(self, future: asyncio.Future[Arrays], batch: list[_Waiting], rows: int,
                  started: float) -> None:
        self._running -= 1
        error = future.exception()
        self._complete(batch, rows, started, None if error else future.result(), error)
        self._dispatch()

    def _complete(self, batch: list[_Waiting], rows: int, started: float, outputs: Arrays | None,
                  error: BaseException | None) -> None:
        compute = time.perf_counter() - started
        for waiting in batch:
            waiting.context.timings.compute += compute
        if outputs is not None:
            try:
                if self._ragged is not None:
                    parts = self._ragged.split(outputs, [w.inputs for w in batch], self.pool.name)
                else:
                    parts = _split(outputs, [w.rows for w in batch], rows, self.pool.name)
            except ModelError as exc:
                error = exc
            else:
                for waiting, part in zip(batch, parts, strict=True):
                    if not waiting.future.done():
                        waiting.future.set_result(part)
                return
        for waiting in batch:
            _fail(waiting, error or ModelError(f"model '{self.pool.name}' gave no outputs"))

    def release_held(self) -> None:
        """From now on a batch short of a preferred size goes without waiting for its delay."""
        if self._holds and not self._draining:
            self._draining = True
            self._dispatch()

    async def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.release_held()
        while (self._queue or self._running) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await self.pool.drain(max(deadline - time.monotonic(), 0.0))

    def resize(self, count: int) -> None:
        self.pool.resize(count)
        self._dispatch()  # new instances take queued work at once

    def unload(self) -> None:
        """Shut the pool; a request still queued (the drain ran out of time) fails, never strands."""
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fail_queued)  # unload runs on a thread; the queue is the loop's
        self.pool.unload()

    def _fail_queued(self) -> None:
        left = list(self._queue)
        self._remove(left)
        for waiting in left:
            _fail(waiting, self.pool.unloading())

    def workers(self) -> list[WorkerStatus]:
        return self.pool.workers()

    @property
    def checks_ready(self) -> bool:
        return self.pool.checks_ready

    def model_ready(self) -> bool:
        return self.pool.model_ready()

    def start_failure(self) -> str:
        return self.pool.start_failure()

    def describe(self) -> str:
        return f"{self.pool.describe()}, dynamic batching up to {self.max_batch_size}"


def _fail(waiting: _Waiting, exc: BaseException) -> None:
    if not waiting.future.done():
        waiting.future.set_exception(exc)


def _concatenate(batch: list[_Waiting]) -> Arrays:
    return {name: np.concatenate([w.inputs[name] for w in batch]) for name in batch[0].inputs}


def _split(outputs: Arrays, sizes: list[int], rows: int, name: str) -> list[Arrays]:
    if len(sizes) == 1:
        return [outputs]
    named = outputs.items()
    for output, array in named:
        if array.ndim == 0 or array.shape[0] != rows:
            raise ModelError(f"model '{name}' returned output '{output}' with shape "
                             f"{list(array.shape)} for a batch of {rows} rows; dim 0 must be the batch")
    # plain slices: views, no copies (np.split costs more than the model here)
    return [{output: array[end - size:end] for output, array in named}
            for size, end in zip(sizes, itertools.accumulate(sizes), strict=True)]
