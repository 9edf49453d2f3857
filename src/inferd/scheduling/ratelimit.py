"""Triton's rate limiter (``--rate-limit execution_count``): an execution of a model whose instance
group lists rate_limiter resources runs only while it holds them, across every model the server runs.

Each registered group (a model version's instance pool) names what one of its executions holds:
per-device resources on its device (CPU instances count as device 0, as Triton's do), global ones
once for the server. The server has of each resource the largest count any registered group asks
for, or what ``--rate-limit-resource`` says (then a resource it leaves out has none, and a group
that needs more than there is fails its load: Triton's rule). Executions that find too little wait
in one queue ordered by their group's executions so far times its priority (0 counts as 1), so a
group of priority 2 gets half the turns of one of priority 1; only the first in that order is
granted (a large need is never overtaken for good by small ones), again as Triton does.

Waiting happens on the instance thread that will run the execution (never on the event loop: a
rate-limited pool never runs inline); it gives up when the pool unloads, or when ``stop`` says the
call's deadline passed or its client left. What an execution took goes back when it ends, however
it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from inferd.config import RateLimit, ResourceCount
from inferd.errors import ConfigError, DeadlineExceeded, InferdError, Unavailable
from inferd.runtimes.base import Answer, Arrays, Emit, Runtime
from inferd.scheduling.instances import AnswerStream, InstancePool, hand_over, model_failure
from inferd.types import CallContext

Key = tuple[int | None, str]  # (device, resource name); device None: a global resource
_POLL_S = 0.05  # how often a waiting execution looks at its stop condition
_RETURN_S = 0.1  # at most this long, grants wait for a group whose next execution is on its way


@dataclass(eq=False)
class Holder:
    """One registered instance group: what each of its executions holds, and its turns so far."""

    name: str
    need: dict[Key, int]
    priority: int  # >= 1
    instances: Callable[[], int]
    executions: int = 0
    closed: bool = False  # unloading: its waiting executions give up, new ones are refused

    def rank(self) -> float:
        """Triton's scaled priority (executions × priority), per instance of the group."""
        return self.executions * self.priority / max(self.instances(), 1)


@dataclass(eq=False)
class _Waiter:
    holder: Holder
    granted: threading.Event = field(default_factory=threading.Event)
    gone: bool = False  # gave up: skipped when its turn comes


class RateLimiter:
    """The server's resources and the executions waiting for them (thread-safe)."""

    def __init__(self, explicit: tuple[ResourceCount, ...] = ()) -> None:
        self._explicit = _explicit_counts(explicit)
        self._lock = threading.Lock()
        self._holders: list[Holder] = []
        self._available: dict[Key, int] = {}
        self._held: dict[Key, int] = {}
        self._queue: list[tuple[float, int, _Waiter]] = []
        self._arrivals = 0
        self._returning: dict[Holder, float] = {}  # groups whose next execution is on its way: until when

    # -- registration (at load and unload) ---------------------------------------------------
    def register(self, name: str, limit: RateLimit, devices: tuple[int, ...],
                 instances: Callable[[], int]) -> Holder:
        """A model version's group joins; ConfigError (its load fails) when the server cannot give
        one of its executions what it asks for."""
        shared = [r for r in limit.resources if r.shared]
        local = [r for r in limit.resources if not r.shared]
        if local and len(devices) > 1:
            raise ConfigError(f"model '{name}': its instance group runs on GPUs {list(devices)} and its rate_limiter "
                              f"lists per-device resources ({', '.join(r.name for r in local)}); inferd does not "
                              "tell which GPU an execution runs on: mark them global or use one GPU per group")
        need: dict[Key, int] = {(None, r.name): r.count for r in shared}
        need.update({(devices[0], r.name): r.count for r in local})
        holder = Holder(name, need, max(limit.priority, 1), instances)
        with self._lock:
            self._available = self._limits([*self._holders, holder])
            self._holders.append(holder)
            self._grant_in_order()
        return holder

    def unregister(self, holder: Holder) -> None:
        """The group left (its pool unloaded): counts that followed its needs follow the others'."""
        with self._lock:
            holder.closed = True
            self._returning.pop(holder, None)
            if holder in self._holders:
                self._holders.remove(holder)
                self._available = self._limits(self._holders)
            self._grant_in_order()

    def close(self, holder: Holder) -> None:
        """The group is unloading: its waiting executions give up now rather than wait their turn."""
        with self._lock:
            holder.closed = True
            self._returning.pop(holder, None)
            for _, _, waiter in self._queue:
                if waiter.holder is holder and not waiter.gone:
                    waiter.granted.set()  # wakes it; it sees closed and leaves
            self._grant_in_order()

    def _limits(self, holders: list[Holder]) -> dict[Key, int]:
        """What the server has of each resource: the largest need, or the explicit count."""
        most: dict[Key, int] = {}
        for holder in holders:
            for key, count in holder.need.items():
                most[key] = max(most.get(key, 0), count)
        shared = {name for device, name in most if device is None}
        for device, name in most:
            if device is not None and name in shared:
                raise ConfigError(f"model '{holders[-1].name}': Resource \"{name}\" is present as both global and "
                                  "device-specific resource in the model configuration (rate_limiter of the models "
                                  "loaded); name it the same way in every model")
        if not self._explicit:
            return most
        for key, needed in most.items():
            have = self._explicit_count(key)
            if have < needed:
                place = "global" if key[0] is None else f"device {key[0]}"
                raise ConfigError(f"model '{holders[-1].name}': Resource count for \"{key[1]}\" is limited to {have} "
                                  "which will prevent scheduling of one or more model instances, the minimum required "
                                  f"count is {needed} ({place}; --rate-limit-resource sets the counts, and a "
                                  "resource it leaves out has none)")
            most[key] = have
        return most

    def _explicit_count(self, key: Key) -> int:
        device, name = key
        if device is None:  # a global resource: the largest count given for its name, whatever the device
            return max((count for (_, given), count in self._explicit.items() if given == name), default=0)
        return max(self._explicit.get((device, name), 0), self._explicit.get((None, name), 0))

    # -- executions ---------------------------------------------------------------------------
    def acquire(self, holder: Holder, stop: Callable[[], BaseException | None] | None = None) -> None:
        """Block this (instance) thread until ``holder``'s need is granted. Raises Unavailable when the
        group unloads meanwhile, or what ``stop`` returns once it returns something."""
        with self._lock:
            if holder.closed:
                raise _unloading(holder)
            self._returning.pop(holder, None)
            if not self._queue and not self._paused() and self._fits(holder.need):  # nobody ahead: take it
                self._take(holder.need)
                return
            waiter = _Waiter(holder)
            self._arrivals += 1
            heapq.heappush(self._queue, (holder.rank(), self._arrivals, waiter))
            self._grant_in_order()
        while not waiter.granted.wait(_POLL_S) or holder.closed:
            reason = _unloading(holder) if holder.closed else (stop() if stop is not None else None)
            if reason is not None:
                self._give_up(waiter)
                raise reason
            with self._lock:  # a group expected back that did not come lets the others go on
                self._grant_in_order()

    def release(self, holder: Holder, again: bool = False) -> None:
        """An execution of ``holder`` ended: what it held goes to the next in order. ``again``: the
        group has its next call waiting for the thread that just finished; as Triton stages such an
        instance again before it allocates, the choice waits (briefly) until that call is in line
        with its new rank, so that priorities count also for a group of one instance."""
        with self._lock:
            for key, count in holder.need.items():
                self._held[key] -= count
            holder.executions += 1
            if again and self._queue and not holder.closed:
                self._returning[holder] = time.monotonic() + _RETURN_S
            self._grant_in_order()

    def _give_up(self, waiter: _Waiter) -> None:
        """A waiting execution leaves; granted meanwhile (out of the queue, set), it hands its need back."""
        with self._lock:
            if waiter.gone:  # popped as closed: it was never granted anything
                return
            granted = waiter.granted.is_set() and not _still_queued(self._queue, waiter)
            waiter.gone = True
            if granted:
                for key, count in waiter.holder.need.items():
                    self._held[key] -= count
            self._grant_in_order()

    def _grant_in_order(self) -> None:
        """Grant from the front of the queue while the first one's need fits (lock held)."""
        if self._paused():
            return
        while self._queue:
            _, _, waiter = self._queue[0]
            if waiter.gone or waiter.holder.closed:
                heapq.heappop(self._queue)
                waiter.gone = True
                waiter.granted.set()
                continue
            if not self._fits(waiter.holder.need):
                return
            heapq.heappop(self._queue)
            self._take(waiter.holder.need)
            waiter.granted.set()

    def _paused(self) -> bool:
        """A group's next execution is on its way (and not overdue): grants wait for it (lock held)."""
        if self._returning:
            now = time.monotonic()
            for holder in [h for h, until in self._returning.items() if until < now]:
                del self._returning[holder]
        return bool(self._returning)

    def _fits(self, need: Mapping[Key, int]) -> bool:
        return all(self._held.get(key, 0) + count <= self._available.get(key, 0) for key, count in need.items())

    def _take(self, need: Mapping[Key, int]) -> None:
        for key, count in need.items():
            self._held[key] = self._held.get(key, 0) + count

    def held(self) -> dict[Key, int]:
        """What executions hold now (for tests and logs)."""
        with self._lock:
            return {key: count for key, count in self._held.items() if count}

    def available(self) -> dict[Key, int]:
        with self._lock:
            return dict(self._available)


def _still_queued(queue: list[tuple[float, int, _Waiter]], waiter: _Waiter) -> bool:
    return any(entry[2] is waiter for entry in queue)


def _unloading(holder: Holder) -> Unavailable:
    return Unavailable(f"model '{holder.name}' is unloading; retry (a newer version may be serving)")


def _explicit_counts(given: tuple[ResourceCount, ...]) -> dict[Key, int]:
    """--rate-limit-resource's counts by (device, name), device None for every device; a resource
    given twice for the same device keeps the smaller count (Triton's AddRateLimiterResource)."""
    counts: dict[Key, int] = {}
    for resource in given:
        key = (resource.device, resource.name)
        counts[key] = min(counts.get(key, resource.count), resource.count)
    return counts


class RateLimitedPool(InstancePool):
    """An InstancePool whose every execution holds its group's resources while it runs. Apart from
    InstancePool, so that a model without rate_limiter resources pays nothing for them; it never
    runs inline (a wait for resources would block the event loop)."""

    def __init__(self, runtime: Runtime, count: int, name: str, limiter: RateLimiter, holder: Holder,
                 max_queue: int = 1024, observe_batch: Callable[[int], None] | None = None,
                 on_unload: Callable[[], None] | None = None) -> None:
        super().__init__(runtime, count, name, max_queue, observe_batch, on_unload)
        self._limiter = limiter
        self._holder = holder
        self._holding = threading.local()  # this thread's execution holds the resources already
        # whether a call of this pool waits to run after the one ending (the batcher's queue, when batched)
        self.more_waiting: Callable[[], bool] = self._queued_calls

    @contextlib.contextmanager
    def _held(self, stop: Callable[[], BaseException | None] | None = None) -> Iterator[None]:
        if getattr(self._holding, "now", False):
            yield
            return
        self._limiter.acquire(self._holder, stop)
        self._holding.now = True
        try:
            yield
        finally:
            self._holding.now = False
            self._limiter.release(self._holder, self.more_waiting())

    def _queued_calls(self) -> bool:
        return self._executor._work_queue.qsize() > 0  # calls handed to the pool, not yet on a thread

    def infer(self, inputs: Arrays) -> Arrays:
        with self._held():
            return super().infer(inputs)

    def execute(self, inputs: Arrays, lane: int | None = None, emit: Emit | None = None,
                requests: int | None = None, rows: int | None = None) -> Arrays:
        with self._held():
            return super().execute(inputs, lane, emit, requests, rows)

    def _run(self, inputs: Arrays, context: CallContext, enqueued: float, emit: Emit | None = None) -> Arrays:
        """An unbatched call waits for resources only while its deadline holds and its client stays."""
        with self._held(lambda: _call_over(self.name, context)):
            return super()._run(inputs, context, enqueued, emit)

    def execute_requests(self, requests: list[Arrays], lane: int | None = None,
                         cancelled: list[Callable[[], bool]] | None = None) -> list[Answer]:
        with self._held():
            return super().execute_requests(requests, lane, cancelled)

    def execute_streams(self, requests: list[Arrays], streams: list[AnswerStream]) -> None:
        """Never raises (as InstancePool's): a batch that cannot get its resources ends its streams."""
        try:
            with self._held(lambda: _streams_over(streams)):
                super().execute_streams(requests, streams)
        except BaseException as exc:  # the limiter refused (unloading) or every reader left
            for stream in streams:
                stream.end(exc)

    def _produce(self, inputs: Arrays, context: CallContext, enqueued: float, answers: asyncio.Queue[object],
                 stop: threading.Event, loop: asyncio.AbstractEventLoop) -> None:
        def over() -> BaseException | None:
            return asyncio.CancelledError("the reader left") if stop.is_set() else _call_over(self.name, context)

        try:
            with self._held(over):
                super()._produce(inputs, context, enqueued, answers, stop, loop)
        except BaseException as exc:  # never started: its reader gets the reason (or nothing, gone)
            hand_over(answers, loop, stop, exc if isinstance(exc, InferdError) else model_failure(self.name, exc))

    def _measure(self, seconds: float) -> None:
        super()._measure(seconds)
        self.inline = self.trivial = False

    def unload(self) -> None:
        """Waiting executions give up at once; the group leaves the limiter once its threads ended."""
        self._limiter.close(self._holder)
        try:
            super().unload()
        finally:
            self._limiter.unregister(self._holder)

    def leave(self) -> None:
        """The pool never served (its version's load failed after it was built): its group leaves."""
        self._limiter.unregister(self._holder)

    def describe(self) -> str:
        return f"{super().describe()}, rate limited"


def _call_over(name: str, context: CallContext) -> BaseException | None:
    """Why a waiting call should not run any more: its deadline passed or its client left."""
    if context.deadline is not None and time.perf_counter() > context.deadline:
        return DeadlineExceeded(f"model '{name}': the request's deadline passed while its instance waited for "
                                "rate limiter resources; it did not run")
    if context.is_cancelled():
        return asyncio.CancelledError("the client went away")
    return None


def _streams_over(streams: list[AnswerStream]) -> BaseException | None:
    if all(stream.stopped() for stream in streams):
        return asyncio.CancelledError("every reader left")
    return None
