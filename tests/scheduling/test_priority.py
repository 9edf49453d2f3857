"""The dynamic batcher's priority levels and queue policies (Triton's priority_levels,
priority_queue_policy and timeout_action), on a real instance pool."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from inferd.config import DynamicBatching, QueuePolicy
from inferd.errors import DeadlineExceeded, QueueFull
from inferd.runtimes.fake import FakeRuntime
from inferd.scheduling import batcher as batcher_module
from inferd.scheduling.batcher import DynamicBatcher
from inferd.scheduling.instances import InstancePool
from inferd.types import CallContext, TensorSpec

SPEC = (TensorSpec("x", "FP32", (-1, -1)),)


def batcher(batching: DynamicBatching, delay: float = 0.1) -> tuple[DynamicBatcher, list[list[float]]]:
    """One instance; every call's first column (each request's value) in the order they ran."""
    batches: list[list[float]] = []

    def fn(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batches.append(inputs["x"][::4, 0].tolist())
        return {"x": inputs["x"]}

    runtime = FakeRuntime(SPEC, SPEC, fn, max_batch_size=8, delay_s=delay)
    return DynamicBatcher(InstancePool(runtime, 1, "m"), batching), batches


def four_rows(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((4, 2), value, np.float32)}


TWO_LEVELS = DynamicBatching(priority_levels=2, default_priority_level=2)


async def _queued_behind_a_running_one(b: DynamicBatcher, requests: list[tuple[float, int]],
                                       late: tuple[float, float] | None = None) -> list[object]:
    """A request that runs first, then ``requests`` (value, priority) queued behind it in order,
    and ``late`` (value, seconds later) at the default priority."""
    running = asyncio.ensure_future(b.infer_async(four_rows(0), CallContext()))
    await asyncio.sleep(0.02)
    queued = [asyncio.ensure_future(b.infer_async(four_rows(value), CallContext(priority=priority)))
              for value, priority in requests]
    if late is not None:
        await asyncio.sleep(late[1])
        queued.append(asyncio.ensure_future(b.infer_async(four_rows(late[0]), CallContext())))
    return [await running, *await asyncio.gather(*queued, return_exceptions=True)]


def test_a_higher_priority_request_overtakes_queued_lower_ones_and_lower_levels_fill_the_batch() -> None:
    b, batches = batcher(TWO_LEVELS)
    results = asyncio.run(_queued_behind_a_running_one(b, [(1, 2), (2, 0), (3, 2), (4, 1)]))
    assert all(isinstance(r, dict) for r in results)
    # 4 rows each, 8 a batch: the level-1 request first, the oldest level-2 one with it; 0 is the default level
    assert batches == [[0], [4, 1], [2, 3]]


def test_without_levels_the_queue_is_first_come_first_served() -> None:
    b, batches = batcher(DynamicBatching())
    asyncio.run(_queued_behind_a_running_one(b, [(1, 2), (2, 0), (3, 2), (4, 1)]))
    assert batches == [[0], [1, 2], [3, 4]]


def test_a_priority_the_model_does_not_have_is_its_default_level() -> None:
    """As Triton's InferenceRequest::SetPriority: above priority_levels means the default level."""
    assert [TWO_LEVELS.level_of(p) for p in (0, 1, 2, 3, 2**64 - 1)] == [2, 1, 2, 2, 2]
    b, batches = batcher(DynamicBatching(priority_levels=3, default_priority_level=1))
    asyncio.run(_queued_behind_a_running_one(b, [(1, 3), (2, 9), (3, 2), (4, 1)]))
    assert batches == [[0], [2, 4], [3, 1]]


def test_each_level_has_its_own_queue_bound() -> None:
    levels = DynamicBatching(priority_levels=2, default_priority_level=2, max_queue_size=3,
                             priority_queue_policy={1: QueuePolicy(max_queue_size=1)})
    b, batches = batcher(levels)
    results = asyncio.run(_queued_behind_a_running_one(b, [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 2)]))
    assert isinstance(results[2], QueueFull) and "queue for priority level 1 is full" in str(results[2])
    assert "max_queue_size = 1" in str(results[2])
    assert isinstance(results[6], QueueFull) and "priority level 2" in str(results[6])
    assert [isinstance(r, dict) for r in results] == [True, True, False, True, True, True, False]
    assert batches == [[0], [1, 3], [4, 5]]


def test_a_levels_timeout_rejects_only_that_levels_requests() -> None:
    levels = DynamicBatching(priority_levels=2, default_priority_level=2,
                             priority_queue_policy={2: QueuePolicy(default_timeout_ms=30)})
    b, batches = batcher(levels, delay=0.15)
    results = asyncio.run(_queued_behind_a_running_one(b, [(1, 2), (2, 1)]))
    assert isinstance(results[1], DeadlineExceeded) and isinstance(results[2], dict)
    assert batches == [[0], [2]]


@pytest.mark.parametrize("levels", [0, 2], ids=["one queue", "levels"])
def test_delay_moves_a_timed_out_request_behind_those_still_in_time_and_it_still_runs(levels: int) -> None:
    """Triton's DELAY: past its queue timeout a request waits behind the requests of its level that
    are in time (newer ones too), and is never failed for it."""
    batching = DynamicBatching(priority_levels=levels, default_priority_level=levels, default_timeout_ms=200,
                               timeout_action="delay")
    b, batches = batcher(batching, delay=0.6)
    start = time.perf_counter()
    results = asyncio.run(_queued_behind_a_running_one(b, [(1, 0), (2, 0)], late=(3, 0.45)))
    assert all(isinstance(r, dict) for r in results), results
    # 1 and 2 passed their 200 ms while the first ran 600 ms; 3 came 450 ms later, still in time then
    assert batches == [[0], [3, 1], [2]]
    assert time.perf_counter() - start < 3


def test_a_requests_own_deadline_still_fails_it_where_the_level_has_no_timeout() -> None:
    levels = DynamicBatching(priority_levels=1, default_priority_level=1, timeout_action="delay")
    b, _ = batcher(levels, delay=0.2)

    async def main() -> object:
        running = asyncio.ensure_future(b.infer_async(four_rows(0), CallContext()))
        await asyncio.sleep(0.02)
        late = b.infer_async(four_rows(1), CallContext(deadline=time.perf_counter() + 0.02))
        result = await asyncio.gather(late, return_exceptions=True)
        await running
        return result[0]

    assert isinstance(asyncio.run(main()), DeadlineExceeded)


def test_a_delaying_queue_without_levels_is_bounded_as_one_queue() -> None:
    b, _ = batcher(DynamicBatching(max_queue_size=1, default_timeout_ms=10, timeout_action="delay"))
    results = asyncio.run(_queued_behind_a_running_one(b, [(1, 0), (2, 0)]))
    assert isinstance(results[1], dict) and isinstance(results[2], QueueFull)
    assert "model 'm' queue is full (1 requests waiting, max_queue_size = 1)" in str(results[2])


def test_without_levels_a_levels_own_policy_is_ignored_as_in_triton() -> None:
    """Triton instantiates only the default queue when priority_levels is 0 (scheduler_utils.cc)."""
    batching = DynamicBatching(max_queue_size=1, timeout_action="delay", default_timeout_ms=1000,
                               priority_queue_policy={0: QueuePolicy(max_queue_size=5)})
    b, _ = batcher(batching)
    results = asyncio.run(_queued_behind_a_running_one(b, [(1, 0), (2, 0)]))
    assert isinstance(results[1], dict) and isinstance(results[2], QueueFull)


def test_the_queue_delay_runs_from_the_oldest_request_the_batch_would_take(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton's dynamic batcher (core 73aad7c3: dynamic_batch_scheduler.cc compares max_queue_delay with
    the age of the pending batch's oldest request, PriorityQueue::AdvanceCursor keeping it) measures the
    delay from the oldest request the batch would take, not from the front of the queue: a level-1
    request that joins a level-2 one which has waited out the delay goes with it at once. The
    batcher's clock is a fake one that stands still once the level-2 request's delay has passed, so
    the outcome does not depend on the machine's speed (timed from the front, the batch never goes)."""
    clock = [0.0]
    monkeypatch.setattr(batcher_module, "time", SimpleNamespace(perf_counter=lambda: clock[0],
                                                                monotonic=time.monotonic))
    release = threading.Event()
    ran: list[list[float]] = []

    def fn(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ran.append(inputs["x"][::2, 0].tolist())
        if ran[-1] == [0.0]:  # the holder keeps one of the two instances busy
            release.wait(30)
        return {"x": inputs["x"]}

    runtime = FakeRuntime(SPEC, SPEC, fn, max_batch_size=8)
    b = DynamicBatcher(InstancePool(runtime, 2, "m"),
                       DynamicBatching(priority_levels=2, default_priority_level=2, max_queue_delay_ms=1000))

    def two_rows(value: float) -> dict[str, np.ndarray]:
        return {"x": np.full((2, 2), value, np.float32)}

    async def main() -> None:
        holder = asyncio.ensure_future(b.infer_async(two_rows(0), CallContext()))
        while not ran:
            await asyncio.sleep(0.01)
        low = asyncio.ensure_future(b.infer_async(two_rows(2), CallContext(priority=2)))  # queued at 0 s
        await asyncio.sleep(0.05)
        clock[0] = 0.9
        high = asyncio.ensure_future(b.infer_async(two_rows(1), CallContext(priority=1)))  # at 0.9 s
        await asyncio.sleep(0.05)
        clock[0] = 1.05  # the level-2 request has waited out the 1 s delay; the level-1 one 0.15 s
        try:
            await asyncio.wait_for(asyncio.gather(high, low), 10)
        finally:
            release.set()
        await holder

    asyncio.run(main())
    assert ran == [[0.0], [1.0, 2.0]]  # one batch: the level-1 request first, the older level-2 one with it
